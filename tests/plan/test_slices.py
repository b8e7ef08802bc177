"""TPU slice names: v4/v5p names count TensorCores (two per chip), v5e/v6e count chips."""

import pytest

from selflengthen_jax.plan.slices import describe, parse_slice, topology_devices


@pytest.mark.parametrize("name, topology, chips", [
    ("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16), ("v5p-16", "v5p:2x2x2", 8),
    ("v5p-64", "v5p:2x4x4", 32), ("v5e-16", "v5e:4x4", 16), ("v5e-8", "v5e:2x4", 8),
    ("v6e-256", "v6e:16x16", 256), ("v5p:2x2x2", "v5p:2x2x2", 8), ("v5e:2x2", "v5e:2x2", 4),
])
def test_slice_names_resolve_to_chip_grids(name, topology, chips):
    s = parse_slice(name)
    assert (s.topology, s.chips) == (topology, chips)


def test_memory_per_chip_comes_from_the_peaks_table():
    assert parse_slice("v5p-16").spec.hbm_bytes == 95 * 2 ** 30
    assert parse_slice("v5e-16").spec.hbm_bytes == 16 * 2 ** 30


@pytest.mark.parametrize("name", ["v5x-16", "tpu", "v5p:2x2", "v4-3", "v5e-12"])
def test_unknown_or_malformed_slices_list_the_known_ones(name):
    with pytest.raises(ValueError, match="known slices: .*v4-32.*v5p:2x2x2|dimensions|TensorCores"):
        parse_slice(name)


@pytest.mark.parametrize("name, chips, hosts", [("v4-32", 16, 4), ("v5p-16", 8, 2), ("v5e:2x2", 4, 1)])
def test_the_slice_has_one_device_per_chip_on_hosts_of_four(name, chips, hosts):
    """A v4/v5p chip's two TensorCores are one jax device (megacore), as on the TPU VM:
    the planner's per-chip HBM is then each device's."""
    pytest.importorskip("libtpu")
    s = parse_slice(name)
    devices = topology_devices(s)
    assert len(devices) == chips and len({d.process_index for d in devices}) == hosts
    assert "one jax device per chip" in describe(s, devices) or s.generation == "v5e"

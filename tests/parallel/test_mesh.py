"""Meshes from config: the global training mesh and each host's generation replica."""

import pytest

from selflengthen_jax.config import ConfigError, MeshSection
from selflengthen_jax.parallel.mesh import generation_layout, host_replica_layout, mesh_shape
from selflengthen_jax.parallel.rules import generation_rules


def test_a_host_replica_is_tensor_parallel_over_the_host_by_default():
    # configs/qwen2-7b-instruct.yaml: fsdp 8 over two 4-chip hosts trains; each host decodes with tp 4
    for fsdp in (8, 2):
        section = MeshSection(data=-1, fsdp=fsdp, tensor=1, strategy="fsdp", replica_per_host=True)
        layout = generation_layout(section, num_devices=8, host_devices=4)
        assert mesh_shape(layout, 4) == (1, 1, 4) and layout.strategy == "tp"
        assert generation_rules(section, 8, 4)["heads"] == "tensor"
        assert "embed" not in generation_rules(section, 8, 4)      # no weight gathers per step
    assert generation_rules(section, 4, 4)["embed"] == "fsdp"       # one host: the configured table


def test_a_replica_per_host_shrinks_fsdp_to_the_hosts_devices():
    section = MeshSection(data=-1, fsdp=8, tensor=1, strategy="fsdp", generation="training")
    layout = generation_layout(section, num_devices=8, host_devices=4)
    assert mesh_shape(layout, 4) == (1, 4, 1)


def test_a_replica_keeps_the_tensor_axis_the_host_allows():
    tp = MeshSection(data=-1, fsdp=1, tensor=8, strategy="tp", generation="training")
    assert mesh_shape(host_replica_layout(tp, 4), 4) == (1, 1, 4)
    fsdp_tp = MeshSection(data=1, fsdp=-1, tensor=2, strategy="fsdp_tp", generation="training")
    assert mesh_shape(host_replica_layout(fsdp_tp, 4), 4) == (1, 2, 2)
    dp = MeshSection(data=-1, strategy="dp", generation="training")
    assert mesh_shape(host_replica_layout(dp, 8), 8) == (8, 1, 1)


def test_a_layout_that_fits_one_host_is_kept_for_its_replica():
    section = MeshSection(data=-1, fsdp=2, strategy="fsdp", replica_per_host=True, generation="training")
    assert generation_layout(section, 8, 4) is section
    assert mesh_shape(section, 4) == (2, 2, 1)


def test_one_host_or_a_global_replica_keeps_the_configured_layout():
    section = MeshSection(data=-1, fsdp=8, strategy="fsdp", replica_per_host=False)
    assert generation_layout(section, 8, 4) is section
    single = MeshSection(data=-1, fsdp=4, strategy="fsdp", replica_per_host=True)
    assert generation_layout(single, 4, 4) is single


def test_an_axis_that_does_not_divide_is_named():
    with pytest.raises(ConfigError, match=r"mesh.fsdp=8 = 8 does not divide the 4 devices"):
        mesh_shape(MeshSection(data=-1, fsdp=8), 4)

"""TPU slices by name: what `v5p-16` or `v5e:4x4` means in chips, hosts and memory.

Cloud TPU accelerator names count TensorCores for v4 and v5p (two per chip: a v5p-16 is
8 chips) and chips for v5e and v6e (a v5e-16 is 16 chips). jax topology strings
(`v5p:2x2x2`) give the chip grid directly. `topology_devices` asks libtpu for the
slice's devices, which XLA's TPU compiler accepts with no TPU attached.

A v4 or v5p chip has two TensorCores that jax on the TPU VM drives as one device
("megacore"). libtpu's topology description does so for v5p by default but lists a v4
slice one device per TensorCore (16 devices of half a chip's HBM for `v4:2x2x2`), so the
chip configuration is asked for explicitly: one device per chip, as the run will see.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from selflengthen_jax.parallel.peaks import DEVICES, DeviceSpec

# generation -> (TensorCores per chip counted by the accelerator name, grid dimensions)
GENERATIONS = {"v4": (2, 3), "v5p": (2, 3), "v5e": (1, 2), "v6e": (1, 2)}
MEGACORE = ("v4", "v5p")  # two TensorCores per chip, one jax device
EXAMPLES = ("v4-32", "v5p-16", "v5p-64", "v5e-16", "v6e-256", "v5e:2x2", "v5p:2x2x2")


class LibtpuMissing(RuntimeError):
    """TPU compilation needs libtpu (the `tpu` extra)."""


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str            # as the user wrote it
    generation: str      # v4, v5p, v5e, v6e
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def topology(self) -> str:
        """jax's topology string, e.g. `v5p:2x2x2`."""
        return f"{self.generation}:{'x'.join(map(str, self.grid))}"

    @property
    def spec(self) -> DeviceSpec:
        return DEVICES[self.generation]


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The usual chip grid of a slice: start from 2x2(x1) and double the smallest
    dimension (the last among equals): 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4; 2x2, 2x4, 4x4."""
    if chips & (chips - 1):
        raise ValueError(f"{chips} chips is not a power of two")
    grid = [2, 2, 1] if dims == 3 and chips >= 4 else [1] * dims
    while math.prod(grid) < chips:
        i = max(range(dims), key=lambda k: (-grid[k], k))
        grid[i] *= 2
    return tuple(grid)


def known_slices() -> str:
    gens = ", ".join(f"{g}-N" for g in GENERATIONS)
    return f"{gens} (Cloud TPU names) or GEN:AxB[xC] topologies, e.g. {', '.join(EXAMPLES)}"


def parse_slice(name: str) -> Slice:
    """A slice from a Cloud TPU name (`v4-32`) or a jax topology string (`v5p:2x2x2`)."""
    key = name.strip().lower()
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", key)
    if m:
        gen = "v5e" if m[1] == "v5litepod" else m[1]
        per_chip, dims = GENERATIONS[gen]
        cores = int(m[2])
        if cores % per_chip or cores < per_chip:
            raise ValueError(f"slice {name!r}: {gen} names count {per_chip} TensorCores per chip")
        try:
            return Slice(name, gen, _grid(cores // per_chip, dims))
        except ValueError as e:
            raise ValueError(f"slice {name!r}: {e}; known slices: {known_slices()}") from None
    m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", key)
    if m:
        grid = tuple(int(d) for d in m[2].split("x"))
        if len(grid) != GENERATIONS[m[1]][1] or 0 in grid:
            raise ValueError(f"slice {name!r}: a {m[1]} topology has {GENERATIONS[m[1]][1]} dimensions")
        return Slice(name, m[1], grid)
    raise ValueError(f"unknown TPU slice {name!r}; known slices: {known_slices()}")


def topology_devices(s: Slice) -> list[Any]:
    """The slice's devices from libtpu (host = `process_index`), for AOT compilation."""
    # Compiling claims no TPU, so several processes (tests, rehearsals) may load libtpu at
    # once; without this the second one fails on libtpu's single-user lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
        from jax.experimental import topologies
    except ImportError:
        raise LibtpuMissing("TPU compilation needs libtpu: pip install -e '.[tpu]'") from None
    options = {"chip_config_name": "megacore"} if s.generation in MEGACORE else {}
    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=s.topology, **options).devices)
    if len(devices) != s.chips:
        raise RuntimeError(f"libtpu gave {len(devices)} devices for the {s.chips} chips of {s.topology}")
    return devices


def describe(s: Slice, devices: list[Any]) -> str:
    hosts = len({d.process_index for d in devices})
    cores = ", one jax device per chip (2 TensorCores each)" if s.generation in MEGACORE else ""
    return (f"{s.name} = {s.topology}: {s.chips} {s.generation} chips ({devices[0].device_kind}){cores}, "
            f"{hosts} host(s) of {len(devices) // hosts} devices, "
            f"{s.spec.hbm_bytes / 2 ** 30:.0f} GiB HBM per chip")

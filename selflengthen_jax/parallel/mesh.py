"""A device mesh with axes (data, fsdp, tensor) sized from config."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from selflengthen_jax.config import ConfigError, MeshSection

AXES = ("data", "fsdp", "tensor")


def mesh_shape(section: MeshSection, num_devices: int) -> tuple[int, int, int]:
    """Resolve -1 and check that data x fsdp x tensor covers exactly the devices."""
    sizes = [section.data, section.fsdp, section.tensor]
    if sizes.count(-1) > 1:
        raise ConfigError("only one of mesh.data/mesh.fsdp/mesh.tensor may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh: fsdp x tensor = {known} does not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ConfigError(f"mesh data x fsdp x tensor = {sizes[0]}x{sizes[1]}x{sizes[2]} = "
                          f"{int(np.prod(sizes))} does not match the {num_devices} devices")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(section: MeshSection, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh over `devices` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(section, len(devices))
    return Mesh(np.array(devices).reshape(shape), AXES)


def generation_mesh(section: MeshSection) -> Mesh:
    """One replica per host (host-local devices) or one global mesh, as configured."""
    if section.replica_per_host and jax.process_count() > 1:
        return make_mesh(section, jax.local_devices())
    return make_mesh(section)

"""A device mesh with axes (data, fsdp, tensor) sized from config.

Generation can run one model replica per host (`mesh.replica_per_host`): each host then
builds its mesh from its own devices, re-sized by `generation_layout`. The engine, the
memory planner and the rehearsal all resolve that per-host layout with this one
function, so what `--dry-run` plans is what the engine builds.
"""

from __future__ import annotations

import dataclasses
import math
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
            named = " x ".join(f"mesh.{a}={s}" for a, s in zip(AXES, sizes) if s not in (-1, 1))
            raise ConfigError(f"mesh: {named} = {known} does not divide the {num_devices} devices")
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


def host_replica_layout(section: MeshSection, host_devices: int) -> MeshSection:
    """One host's generation replica.

    `mesh.generation=tp` (default), for a layout that shards weights over fsdp: tensor
    parallel over all the host's devices with the `tp` rules, so a decode step moves
    activations (two all-reduces per layer), never weights. Otherwise (and under
    `mesh.generation=training`) the configured layout shrunk to the host: the tensor axis stays
    as large as the host allows (its gcd with the host's device count, so it still
    divides the heads); the rest goes to `fsdp` when the layout shards weights over
    fsdp, else to `data`.
    """
    gathers = shards_weights(section)
    if section.generation == "tp" and gathers:
        return dataclasses.replace(section, data=1, fsdp=1, tensor=host_devices, strategy="tp")
    tensor = math.gcd(host_devices if section.tensor == -1 else section.tensor, host_devices)
    rest = host_devices // tensor
    return dataclasses.replace(section, data=1 if gathers else rest, fsdp=rest if gathers else 1, tensor=tensor)


def shards_weights(section: MeshSection) -> bool:
    """Whether the layout shards weights over `fsdp` (so using it to decode would gather
    every layer's weights at every step)."""
    return section.fsdp != 1 or section.strategy in ("fsdp", "fsdp_tp")


def per_host(section: MeshSection, num_devices: int, host_devices: int) -> bool:
    """Whether generation runs one replica per host (else one global mesh)."""
    return section.replica_per_host and num_devices > host_devices


def generation_layout(section: MeshSection, num_devices: int, host_devices: int) -> MeshSection:
    """The generation mesh's layout: with a replica per host, `host_replica_layout` (under
    `mesh.generation=tp`, tensor parallel over the host; under `training`, the configured
    layout if it fits one host's devices, else shrunk: fsdp 8 over two 4-chip hosts
    becomes fsdp 4 on each); otherwise the configured (global) layout."""
    if not per_host(section, num_devices, host_devices):
        return section
    if section.generation == "tp" and shards_weights(section):
        return host_replica_layout(section, host_devices)
    try:
        mesh_shape(section, host_devices)
        return section
    except ConfigError:
        return host_replica_layout(section, host_devices)


def host_devices(devices: Sequence[jax.Device], process: int) -> list[jax.Device]:
    """The devices of one host (process) among `devices`."""
    return [d for d in devices if d.process_index == process]


def generation_mesh(section: MeshSection, devices: Sequence[jax.Device] | None = None,
                    process: int | None = None) -> Mesh:
    """This host's generation mesh: one replica per host (host-local devices) or one
    global mesh, as configured. `devices`/`process` default to this run's (the
    rehearsal passes a TPU topology's devices and a host index)."""
    devices = list(jax.devices() if devices is None else devices)
    process = jax.process_index() if process is None else process
    local = host_devices(devices, process)
    layout = generation_layout(section, len(devices), len(local))
    return make_mesh(layout, local if per_host(section, len(devices), len(local)) else devices)


def check_meshes(section: MeshSection, devices: Sequence[jax.Device] | None = None) -> None:
    """Build the training mesh and every host's generation mesh (start-up check: raises
    ConfigError naming the axis before anything is loaded or written)."""
    devices = list(jax.devices() if devices is None else devices)
    make_mesh(section, devices)
    for process in sorted({d.process_index for d in devices}):
        generation_mesh(section, devices, process)

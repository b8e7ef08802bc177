"""Logical axis names -> mesh axes. A sharding strategy is a rules table, not code.

Parameters carry logical names (`vocab`, `embed`, `heads`, ...); activations and the
KV cache use `batch`, `seq`, `kv_heads`. A strategy maps each name to mesh axes (or
None: replicated). A dimension the mapped axes do not divide is replicated instead,
so e.g. 2 KV heads on a tensor axis of 4 still run.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selflengthen_jax.config import ConfigError, MeshSection
from selflengthen_jax.models.attention import Backend, choose
from selflengthen_jax.parallel.mesh import AXES as MESH_AXES, generation_layout

Rules = dict[str, Any]  # logical name -> None | mesh axis | tuple of mesh axes

# Every logical axis name the model, its adapters, the KV cache and the activations
# carry (a test checks this list against them), so `mesh.rules` can be checked.
LOGICAL_AXES = ("batch", "layers", "embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "norm",
                "adapters", "lora_rank")

_TP = {"heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "vocab": "tensor"}
STRATEGIES: dict[str, Rules] = {
    "dp": {},
    "fsdp": {"embed": "fsdp"},
    "tp": dict(_TP),
    "fsdp_tp": {"embed": "fsdp", **_TP},
}
ACTIVATIONS: Rules = {"batch": ("data", "fsdp")}


def check_rules(overrides: Mapping[str, Any], where: str = "mesh.rules") -> None:
    """Each key a known logical axis, each value a mesh axis, a list of them, or null;
    raise ConfigError naming the key and what is allowed."""
    for name, axes in overrides.items():
        if name not in LOGICAL_AXES:
            raise ConfigError(f"{where}.{name} is not a logical axis; known: {', '.join(LOGICAL_AXES)}")
        flat = axes if isinstance(axes, list) else [axes]
        if axes is None:
            continue
        bad = [a for a in flat if a not in MESH_AXES]
        if bad or not flat or len(set(flat)) < len(flat):
            raise ConfigError(f"{where}.{name}={axes!r} is not allowed; choose a mesh axis "
                              f"({', '.join(MESH_AXES)}), a list of distinct ones, or null (replicated)")


def strategy_rules(strategy: str, overrides: Mapping[str, Any] | None = None) -> Rules:
    """The named strategy's table plus activation rules, then user overrides from YAML."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sharding strategy {strategy!r}; built in: {', '.join(STRATEGIES)}")
    check_rules(overrides or {})
    rules = {**ACTIVATIONS, **STRATEGIES[strategy]}
    for name, axes in (overrides or {}).items():
        rules[name] = tuple(axes) if isinstance(axes, list) else axes
    return rules


def generation_rules(section: MeshSection, num_devices: int, host_devices: int) -> Rules:
    """The generation mesh's own rules table: that of its layout (`generation_layout`),
    e.g. `tp` for a host's tensor-parallel replica while training runs `fsdp`."""
    layout = generation_layout(section, num_devices, host_devices)
    return strategy_rules(layout.strategy, layout.rules)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[n] for n in names)


def spec_for(names: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh, rules: Rules) -> P:
    """PartitionSpec for a value with logical `names`; undividable dims stay replicated."""
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        axes = rules.get(name) if name else None
        flat = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        if not flat or dim % _axis_size(mesh, axes) or used & set(flat):
            out.append(None)
            continue
        used |= set(flat)
        out.append(axes)
    return P(*out)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree, given matching trees of logical names and shapes."""
    return jax.tree.map(
        lambda names, x: NamedSharding(mesh, spec_for(names, tuple(x.shape), mesh, rules)),
        axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, tuple))


def named(mesh: Mesh, rules: Rules, names: tuple[str | None, ...], shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(mesh, spec_for(names, shape, mesh, rules))


def attention_backend(impl: str, mesh: Mesh, rules: Rules) -> Backend:
    """The attention backend for `model.attention_impl` on this mesh's platform: the one
    place a backend is chosen. Its Pallas kernels shard the batch as activations are
    (`batch`), and heads over the `heads` axes when `kv_heads` maps to the same ones."""
    platform = mesh.devices.flat[0].platform
    heads = rules.get("heads")
    return choose(impl, platform, mesh, batch_axes=rules.get("batch"),
                  head_axes=heads if heads == rules.get("kv_heads") else None)

"""Moving host data onto a (possibly multi-host) mesh and back, and params between layouts."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.weight_layout import STACKED, WeightLayout
from selflengthen_jax.parallel.rules import Rules, tree_shardings


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place a host array that every process holds in full (works across hosts)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_tree(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(put, tree, shardings)


def onto(tree: Any, shardings: Any) -> Any:
    """Place `tree` on `shardings` (a global mesh). On several processes an array held on
    this host's own mesh (a per-host generation replica, an adapter on a local device)
    cannot be device_put across hosts; each host builds its shards from its own copy."""
    def move(x: Any, sharding: NamedSharding) -> jax.Array:
        if jax.process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable:
            return put(jax.device_get(x), sharding)
        return jax.device_put(x, sharding)
    return jax.tree.map(move, tree, shardings)


def to_host(x: jax.Array) -> np.ndarray:
    """The full value on every process (gathers when shards live on other hosts)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def weight_shardings(layout: WeightLayout, cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings of the params in `layout`, from their logical axis names."""
    return tree_shardings(*layout.tree(cfg), mesh, rules)


def arrange_weights(layout: WeightLayout, params: Any, cfg: ModelConfig, mesh: Mesh,
                    rules: Rules) -> tuple[Any, Any]:
    """The loaded (stacked, sharded) params in `layout`, and their shardings. A copy is
    made on device, shard by shard: nothing passes through the host."""
    shardings = weight_shardings(layout, cfg, mesh, rules)
    if not layout.copies:
        return params, shardings
    convert = jax.jit(partial(layout.convert, cfg=cfg), in_shardings=(weight_shardings(STACKED, cfg, mesh, rules),),
                      out_shardings=shardings)
    return convert(params), shardings

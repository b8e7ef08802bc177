"""Moving host data onto a (possibly multi-host) mesh and back."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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

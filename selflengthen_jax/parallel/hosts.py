"""The processes of a multi-host run, as the pipeline sees them: who am I, wait for all.

Every process runs the same deterministic loop; they meet at named barriers where one
process's writes must be visible to all before anyone reads on. With one process every
function here is free (no collective, nothing to wait for).
"""

from __future__ import annotations

import jax
import numpy as np

from selflengthen_jax import signals


def index() -> int:
    return jax.process_index()


def count() -> int:
    return jax.process_count()


def barrier(name: str) -> None:
    """Every process reaches `name` before any goes on (same names in the same order).
    A stop whose raise was swallowed is raised here first, so no process waits for it."""
    signals.check()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def gather(value: int) -> list[int]:
    """`value` of every process, in process order (so all of them decide alike)."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(np.array([int(value)], np.int64))
    return [int(x) for x in np.asarray(got).reshape(-1)]


def gather_floats(values: np.ndarray) -> np.ndarray:
    """Every process's float64 `values` (the same shape on each), stacked in process
    order: [processes, *shape]. Sent as their bits, so no value is rounded on the way."""
    values = np.ascontiguousarray(values, np.float64)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(values.view(np.int32))
    return np.ascontiguousarray(np.asarray(got, np.int32)).view(np.float64).reshape(
        (jax.process_count(), *values.shape))

"""The Pallas TPU decode backend: each slot reads only its own live context.

One new token per slot attends over the `paged` cache with
`jax.experimental.pallas.ops.tpu.paged_attention`: the kernel is given each slot's
length (`pos` + 1) and its page table, and DMAs only the pages below that length, so a
short slot next to a 20k-token one costs its own context, not the batch maximum.

The cache's [kv, layers, slots, T, d] arrays reshape for free to the kernel's
[kv, pages, page_size, d]; a slot's pages are contiguous (the page table is the
identity, offset by layer), so no page is ever copied to select a layer.

Why not `ragged_paged_attention` (the mixed prefill+decode kernel): in jax 0.10.2 its
reshaped scratch refs are not supported by the TPU interpret mode, so its numerics
cannot be tested on a CPU host, and it needs the keys and values interleaved in one
array. The paged kernel loads K/V blocks as bfloat16 whatever the cache dtype, so its
fp32 results agree with the XLA path to bf16 precision only.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention
from jax.sharding import PartitionSpec as P

from selflengthen_jax.models.attention.cache import KVCache

BLOCK_TOKENS = 512  # cache positions per compute block of the kernel
LANES = 128         # the kernel's blocks need head_dim to be a multiple of this


def _local(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, layer: jnp.ndarray, lengths: jnp.ndarray, *,
           page_size: int, interpret: bool) -> jnp.ndarray:
    """One device's slots: q [b, h, d]; k/v [kv, L, b, T, d]; lengths [b] -> [b, h, d]."""
    kv, n_layers, b, t, d = k.shape
    pps = t // page_size
    pages = lambda x: x.reshape(kv, n_layers * b * pps, page_size, d)  # noqa: E731
    table = (layer * b + jnp.arange(b, dtype=jnp.int32))[:, None] * pps + jnp.arange(pps, dtype=jnp.int32)
    per_block = max(1, min(pps, BLOCK_TOKENS // page_size))
    while pps % per_block:
        per_block -= 1
    scaled = (q.astype(jnp.float32) * (d ** -0.5)).astype(q.dtype)
    ctx = pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext()
    with ctx:
        return paged_attention(scaled, pages(k), pages(v), lengths.astype(jnp.int32), table.astype(jnp.int32),
                               pages_per_compute_block=per_block)


def decode_attention(q: jnp.ndarray, cache: KVCache, layer: jnp.ndarray, q_index: jnp.ndarray, *,
                     page_size: int, mesh: Any, batch_axes: Any, head_axes: Any,
                     interpret: bool) -> jnp.ndarray:
    """q [b, 1, h, d] at positions q_index [b, 1] over one layer of the paged cache."""
    fn = functools.partial(_local, page_size=page_size, interpret=interpret)
    lengths = jnp.minimum(q_index[:, 0] + 1, cache.k.shape[3])  # dropped writes past the end
    args = (q[:, 0], cache.k, cache.v, jnp.asarray(layer, jnp.int32), lengths)
    if mesh is None:
        return fn(*args)[:, None]
    cs = P(head_axes, None, batch_axes, None, None)
    qs = P(batch_axes, head_axes, None)
    out = jax.shard_map(fn, mesh=mesh, in_specs=(qs, cs, cs, P(), P(batch_axes)), out_specs=qs,
                        check_vma=False)(*args)
    return out[:, None]

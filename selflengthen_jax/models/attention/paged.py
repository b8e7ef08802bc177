"""Pallas paged decode attention (TPU and GPU): each slot reads only its own live context.

One new token per slot attends over the `paged` cache with one of jax's paged-attention
kernels, given each slot's length (`pos` + 1) and its page table, so a short slot next
to a 20k-token one costs its own context, not the batch maximum:

* `tpu`: `jax.experimental.pallas.ops.tpu.paged_attention` (Mosaic; DMAs only the pages
  below each length). Its blocks need head_dim to be a multiple of 128 lanes, and it
  loads K/V blocks as bfloat16 whatever the cache dtype, so its fp32 results agree with
  the XLA path to bf16 precision only.
* `gpu`: `jax.experimental.pallas.ops.gpu.paged_attention` (Triton), which also splits
  each slot's pages over `k_splits` programs (flash-decoding) so a batch-1 step still
  fills the GPU. Its blocks need head_dim to be a multiple of 16, and its dots one element
  type, so q is cast to the cache's dtype. Not run on hardware here (no GPU): its numerics
  are tested in Pallas interpret mode and its lowering to Triton IR for CUDA.

The cache's [kv, layers, slots, T, d] arrays reshape for free to the kernels'
[kv, pages, page_size, d]; a slot's pages are contiguous (the page table is the
identity, offset by layer), so no page is ever copied to select a layer.

Why not `ragged_paged_attention` (the mixed prefill+decode kernel): in jax 0.10.2 its
reshaped scratch refs are not supported by the TPU interpret mode, so its numerics
cannot be tested on a CPU host, and it needs the keys and values interleaved in one array.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.gpu import paged_attention as gpu_kernel
from jax.experimental.pallas.ops.tpu import paged_attention as tpu_kernel
from jax.sharding import PartitionSpec as P

from selflengthen_jax.models.attention.cache import KVCache

BLOCK_TOKENS = 512  # cache positions per compute block of either kernel
HEAD_DIM_MULTIPLE = {"tpu": 128, "gpu": 16}   # the kernels' block constraint on head_dim
KERNELS = tuple(HEAD_DIM_MULTIPLE)
GPU_SPLITS = 16     # gpu: most programs one slot's pages are split over
GPU_HEAD_BLOCK = 16  # gpu: query heads per program (a KV head's group is padded to it)


def supports(kernel: str, head_dim: int) -> bool:
    """Whether `kernel` can decode heads of this size (else the XLA loop reads the cache)."""
    return head_dim % HEAD_DIM_MULTIPLE[kernel] == 0


def _divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of n that is at most cap (the kernels need even splits)."""
    d = max(1, min(n, cap))
    while n % d:
        d -= 1
    return d


def _local(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, layer: jnp.ndarray, lengths: jnp.ndarray, *,
           kernel: str, page_size: int, interpret: bool) -> jnp.ndarray:
    """One device's slots: q [b, h, d]; k/v [kv, L, b, T, d]; lengths [b] -> [b, h, d]."""
    kv, n_layers, b, t, d = k.shape
    pps = t // page_size
    pages = lambda x: x.reshape(kv, n_layers * b * pps, page_size, d)  # noqa: E731
    table = (layer * b + jnp.arange(b, dtype=jnp.int32))[:, None] * pps + jnp.arange(pps, dtype=jnp.int32)
    lengths = lengths.astype(jnp.int32)
    # Triton's dots need q in the cache's dtype (an fp32 model over a bf16 cache)
    scaled = (q.astype(jnp.float32) * (d ** -0.5)).astype(k.dtype if kernel == "gpu" else q.dtype)
    if kernel == "gpu":
        splits = _divisor_at_most(pps, GPU_SPLITS)
        per_block = _divisor_at_most(pps // splits, BLOCK_TOKENS // page_size)
        out = gpu_kernel.paged_attention(scaled, pages(k), pages(v), table, lengths,
                                         block_h=GPU_HEAD_BLOCK, pages_per_compute_block=per_block,
                                         k_splits=splits, interpret=interpret)
        return out.astype(q.dtype)
    ctx = pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext()
    with ctx:
        return tpu_kernel.paged_attention(scaled, pages(k), pages(v), lengths, table,
                                          pages_per_compute_block=_divisor_at_most(pps, BLOCK_TOKENS // page_size))


def decode_attention(q: jnp.ndarray, cache: KVCache, layer: jnp.ndarray, q_index: jnp.ndarray, *,
                     kernel: str, page_size: int, mesh: Any, batch_axes: Any, head_axes: Any,
                     interpret: bool) -> jnp.ndarray:
    """q [b, 1, h, d] at positions q_index [b, 1] over one layer of the paged cache, with
    the `tpu` or `gpu` kernel (sharded over `mesh` with shard_map: Pallas calls are not
    partitioned by XLA)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown paged decode kernel {kernel!r}; known: {', '.join(KERNELS)}")
    fn = functools.partial(_local, kernel=kernel, page_size=page_size, interpret=interpret)
    lengths = jnp.minimum(q_index[:, 0] + 1, cache.k.shape[3])  # dropped writes past the end
    args = (q[:, 0], cache.k, cache.v, jnp.asarray(layer, jnp.int32), lengths)
    if mesh is None:
        return fn(*args)[:, None]
    cs = P(head_axes, None, batch_axes, None, None)
    qs = P(batch_axes, head_axes, None)
    out = jax.shard_map(fn, mesh=mesh, in_specs=(qs, cs, cs, P(), P(batch_axes)), out_specs=qs,
                        check_vma=False)(*args)
    return out[:, None]

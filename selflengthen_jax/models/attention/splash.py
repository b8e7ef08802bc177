"""The Pallas TPU splash-attention backend for training and prefill.

Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) is a flash kernel
with a block-sparse causal mask: blocks above the diagonal are skipped, segment ids
(packed examples) are checked inside the kernel, and GQA reads each KV head once for
its query group. Nothing of size [seq, seq] exists, forward or backward, which is what
lets a 16k-token training row fit (the XLA path holds a [heads, block, seq] score
block per layer in the backward pass).

A Pallas call is not partitioned by XLA, so it runs under `shard_map` with the batch
(and heads, when the tensor axis divides both head counts) split over the mesh.
Padding (segment 0) attends causally among itself, so no row is empty; its outputs
are never read. Sequences are padded to the kernel's block.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

BLOCKS = (512, 256, 128)  # largest block dividing the (padded) sequence is used
LANE = 128


def _block(s: int) -> int:
    return next(b for b in BLOCKS if s % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, s: int, interpret: bool) -> Any:
    """The splash kernel for `heads` local query heads and a causal [s, s] mask."""
    blk = _block(s)
    sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk,
                          block_q_dkv=blk, block_kv_dkv=blk, block_kv_dkv_compute=blk,
                          use_fused_bwd_kernel=True)
    mask = sa.MultiHeadMask([sa.CausalMask((s, s))] * heads)
    with jax.ensure_compile_time_eval():  # its block-mask tables are constants, not tracers of one trace
        return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def dq_partial_positions(s: int) -> int:
    """Query positions of the dq partials the fused backward writes for a length-s
    sequence, per (row, head, head_dim): one whole-sequence dq per KV block, summed after
    the kernel. The TPU compiler holds them all at once ([kv blocks, heads, s, head_dim]
    in the compute dtype: 4 GiB per chip for the layer being differentiated, Llama 3.1 8B
    at 16k tokens on fsdp 8), which is what the memory planner counts for its backward."""
    n = s + -s % LANE
    return n // _block(n) * n


def _local(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, seg: jnp.ndarray, interpret: bool) -> jnp.ndarray:
    """One device's rows: q [b,s,h,d], k/v [b,s,kv,d], seg [b,s] -> [b,s,h,d]."""
    b, s, h, d = q.shape
    pad = -s % LANE
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        seg = jnp.pad(seg, ((0, 0), (0, pad)))
    kernel = _kernel(h, s + pad, interpret)
    qh = (q * (d ** -0.5)).astype(q.dtype).transpose(0, 2, 1, 3)   # [b, h, s, d]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    out = jax.vmap(lambda a, b_, c, s_: kernel(a, b_, c, segment_ids=sa.SegmentIds(s_, s_)))(qh, kh, vh, seg)
    return out.transpose(0, 2, 1, 3)[:, :s]


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray, *,
              mesh: Any, batch_axes: Any, head_axes: Any, interpret: bool) -> jnp.ndarray:
    """Causal GQA within segments (the XLA backend's contract) through splash attention."""
    fn = functools.partial(_local, interpret=interpret)
    if mesh is None:
        return fn(q, k, v, segment_ids)
    qs = P(batch_axes, None, head_axes, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(qs, qs, qs, P(batch_axes, None)), out_specs=qs,
                         check_vma=False)(q, k, v, segment_ids)

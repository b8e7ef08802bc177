"""The cuDNN backend (GPU) for training and prefill: cuDNN's fused flash attention.

Packed segments are given to cuDNN as per-segment lengths and offsets (its THD
layout: `q_seqlen`/`q_offsets`), with its causal mask, so no [b, 1, s, s] mask is
built. Segments are contiguous runs of one id (how the trainer packs and how prompts
are right-padded); at most `max_segments` per row. Untested on hardware here: no GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention  # jax's own cuDNN entry point


def segment_spans(segment_ids: jnp.ndarray, max_segments: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(lengths, offsets) [b, max_segments] of each row's runs of non-zero segment ids, in
    order, 0-length and offset -1 beyond the last (what cuDNN's packed layout reads)."""
    b, s = segment_ids.shape
    starts = (segment_ids != 0) & jnp.concatenate(
        [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    index = jnp.cumsum(starts, axis=1) - 1                       # which run each token is in
    run = jnp.where(segment_ids != 0, index, max_segments)     # padding counted nowhere
    lengths = jax.vmap(lambda r: jnp.bincount(r, length=max_segments + 1)[:max_segments])(run)
    pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    first = jax.vmap(lambda r, p: jnp.full((max_segments + 1,), s).at[r].min(p)[:max_segments])(run, pos)
    offsets = jnp.where(lengths > 0, first, -1)
    return lengths.astype(jnp.int32), offsets.astype(jnp.int32)


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray, *,
              max_segments: int) -> jnp.ndarray:
    """Causal GQA within segments through cuDNN (q [b,s,h,d], k/v [b,s,kv,d])."""
    d = q.shape[-1]
    lengths, offsets = segment_spans(segment_ids, max_segments)
    out = cudnn_attention.dot_product_attention(
        q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
        scale=d ** -0.5, mask_type=cudnn_attention.MaskType.CAUSAL, qkv_layout="BTNH")
    return jnp.where((segment_ids != 0)[..., None, None], out, 0).astype(q.dtype)

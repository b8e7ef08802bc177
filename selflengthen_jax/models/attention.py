"""Grouped-query attention with a boolean mask, bounded in memory for long sequences.

Scores are computed in float32 per query chunk, so a 16k-token sequence never holds a
full [seq, seq] float32 score matrix; on GPU the cuDNN fused kernel can be chosen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite: a fully masked row (padding) gives a uniform, not NaN, softmax


def _attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """q [b,s,h,d], k/v [b,t,kv,d], mask [b,s,t] -> [b,s,h,d]."""
    b, s, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, s, kv, h // kv, d)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(b, s, h, d)


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray,
              *, impl: str = "xla", q_chunk: int = 1024) -> jnp.ndarray:
    """Masked GQA. `impl`: "xla" (query-chunked einsum) or "cudnn" (fused, GPU only)."""
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")
    s = q.shape[1]
    if s <= q_chunk or s % q_chunk:
        return _attend(q, k, v, mask)
    n = s // q_chunk
    qc = q.reshape(q.shape[0], n, q_chunk, *q.shape[2:]).swapaxes(0, 1)
    mc = mask.reshape(mask.shape[0], n, q_chunk, mask.shape[-1]).swapaxes(0, 1)
    out = jax.lax.map(lambda xs: _attend(xs[0], k, v, xs[1]), (qc, mc))
    return out.swapaxes(0, 1).reshape(q.shape)


def sequence_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Causal mask within a sequence: same segment, earlier or equal index, not padding (0)."""
    s = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((s, s), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, None, :]
    return causal[None] & same & real


def cache_mask(write_index: jnp.ndarray, num_new: int, cache_len: int) -> jnp.ndarray:
    """Mask for `num_new` tokens written at write_index[b]: each sees the cache up to itself."""
    q_index = write_index[:, None] + jnp.arange(num_new)[None, :]  # [b, s]
    return jnp.arange(cache_len)[None, None, :] <= q_index[:, :, None]

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
    # rematerialised per chunk: the backward pass keeps one chunk's scores, not all of them
    out = jax.lax.map(jax.checkpoint(lambda xs: _attend(xs[0], k, v, xs[1])), (qc, mc))
    return out.swapaxes(0, 1).reshape(q.shape)


def sequence_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Causal mask within a sequence: same segment, earlier or equal index, not padding (0)."""
    s = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((s, s), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, None, :]
    return causal[None] & same & real


def cached_attention(q: jnp.ndarray, k_cache: jnp.ndarray, v_cache: jnp.ndarray, layer: jnp.ndarray,
                     q_index: jnp.ndarray, block: int) -> jnp.ndarray:
    """Attention of new tokens over one layer of the full cache [layers, b, T, kv, d].

    Reads the cache block by block (online softmax) and only up to the furthest query
    position in the batch, so a step costs what the live context costs, not the
    allocated length, and the trip count is dynamic: nothing recompiles as it grows.
    q [b, s, h, d]; q_index [b, s] is each query's position (it sees keys <= it).
    """
    b, s, h, d = q.shape
    kv = k_cache.shape[3]
    qg = q.reshape(b, s, kv, h // kv, d).astype(jnp.float32) * (d ** -0.5)
    n_blocks = (jnp.max(q_index) + block) // block

    def body(j, carry):
        m, l, acc = carry
        start = (layer, 0, j * block, 0, 0)
        kb = jax.lax.dynamic_slice(k_cache, start, (1, b, block, kv, d))[0].astype(jnp.float32)
        vb = jax.lax.dynamic_slice(v_cache, start, (1, b, block, kv, d))[0].astype(jnp.float32)
        scores = jnp.einsum("bskgd,btkd->bkgst", qg, kb)
        visible = (j * block + jnp.arange(block))[None, None, :] <= q_index[:, :, None]
        scores = jnp.where(visible[:, None, None], scores, NEG_INF)
        m_new = jnp.maximum(m, scores.max(-1))
        p = jnp.exp(scores - m_new[..., None])
        corr = jnp.exp(m - m_new)
        acc = acc * corr[..., None] + jnp.einsum("bkgst,btkd->bkgsd", p, vb)
        return m_new, l * corr + p.sum(-1), acc

    g = h // kv
    init = (jnp.full((b, kv, g, s), NEG_INF, jnp.float32), jnp.zeros((b, kv, g, s), jnp.float32),
            jnp.zeros((b, kv, g, s, d), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, n_blocks, body, init)
    out = acc / l[..., None]                                  # [b, kv, g, s, d]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d).astype(q.dtype)

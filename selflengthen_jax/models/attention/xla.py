"""The XLA attention backend (every platform; the CPU default): grouped-query attention,
causal within packed segments, bounded in time and memory.

Training and prefill attend causally, so query block i only needs keys up to its own
end: with n blocks only (n+1)/2n of the [seq, seq] scores are computed (9/16 at eight),
and each block's scores are small enough to stay in cache on a CPU. Sequences longer
than `SAVE_SCORES_UP_TO` rematerialise each block in the backward pass, so a 16k-token
sequence never holds its [seq, seq] scores.
Cached attention reads any `CacheLayout` piece by piece (online softmax), up to the
live context.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from selflengthen_jax.models.attention.cache import CacheLayout, KVCache

NEG_INF = -1e30  # finite: a fully masked row (padding) gives a uniform, not NaN, softmax
MIN_BLOCK = 128          # smallest query block
MAX_BLOCKS = 16          # query blocks per sequence at most (they are unrolled)
SAVE_SCORES_UP_TO = 1024  # longer sequences recompute each block's scores in the backward pass
TAIL_BLOCK = 64          # cached attention reads the partial last block in pieces this long


def softmax(scores: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis; the max is a constant for autodiff (the result does not
    depend on it), which keeps the backward pass to the textbook two products."""
    m = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    e = jnp.exp(scores - m)
    return e / e.sum(axis=-1, keepdims=True)


def _attend(qh: jnp.ndarray, kh: jnp.ndarray, vh: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Head-major GQA: qh [b,kv,g,s,d], kh/vh [b,kv,t,d], mask [b,s,t] -> [b,kv,g,s,d].

    The query groups and positions share one free axis, so each product is one plain
    matmul per (batch, kv head) with no transposes between them.
    """
    b, kv, g, s, d = qh.shape
    scores = jnp.einsum("bkqd,bktd->bkqt", qh.reshape(b, kv, g * s, d), kh,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    scores = jnp.where(mask[:, None, None], scores.reshape(b, kv, g, s, -1), NEG_INF)
    probs = softmax(scores).astype(vh.dtype).reshape(b, kv, g * s, -1)
    return jnp.einsum("bkqt,bktd->bkqd", probs, vh).reshape(b, kv, g, s, d)


def query_blocks(s: int) -> list[tuple[int, int]]:
    """[start, end) of each query block: at least MIN_BLOCK long, at most MAX_BLOCKS of them."""
    size = max(MIN_BLOCK, -(-s // MAX_BLOCKS))
    return [(a, min(a + size, s)) for a in range(0, s, size)]


def block_mask(segment_ids: jnp.ndarray, start: int, end: int) -> jnp.ndarray:
    """[b, end-start, end]: queries start..end-1 see earlier-or-equal keys of their segment."""
    q_seg, k_seg = segment_ids[:, start:end], segment_ids[:, :end]
    causal = (start + jnp.arange(end - start))[:, None] >= jnp.arange(end)[None, :]
    return causal[None] & (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg != 0)[:, None, :]


def sequence_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """The whole [b, s, s] mask: causal, same segment, not padding (0)."""
    return block_mask(segment_ids, 0, segment_ids.shape[1])


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Causal GQA within segments. q [b,s,h,d], k/v [b,s,kv,d], segment_ids [b,s] (0 = padding)."""
    b, s, h, d = q.shape
    kv = k.shape[2]
    qh = q.reshape(b, s, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    attend = _attend if s <= SAVE_SCORES_UP_TO else jax.checkpoint(_attend)
    outs = [attend(qh[:, :, :, a:e], kh[:, :, :e], vh[:, :, :e], block_mask(segment_ids, a, e))
            for a, e in query_blocks(s)]
    return jnp.concatenate(outs, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


def tail_size(block: int) -> int:
    """Length of the pieces the partial last block is read in."""
    return math.gcd(block, TAIL_BLOCK)


def positions_read(end: int, block: int) -> int:
    """Cache positions `cached_attention` reads when the furthest query sees positions
    [0, end): whole blocks, then the partial one in `TAIL_BLOCK` pieces."""
    tail = tail_size(block)
    return end // block * block + -(-(end % block) // tail) * tail


def cached_attention(q: jnp.ndarray, cache: KVCache, layout: CacheLayout, layer: jnp.ndarray,
                     q_index: jnp.ndarray, block: int, slots: jnp.ndarray | None = None) -> jnp.ndarray:
    """Attention of new tokens over one layer of the cache, in either layout; row i reads
    slot `slots[i]` (default: slot i).

    Reads the cache in pieces (online softmax) and only up to the furthest query position
    in the batch: whole `block`s, then the partial block in `TAIL_BLOCK` pieces, so a
    step costs what the live context costs (to within 64 positions), not the allocated
    length, and the trip counts are dynamic: nothing recompiles as it grows. Each piece
    is a copy on XLA:CPU (a dynamic slice), so reading whole 256 blocks for a short
    context took about an eighth of a batch-8 decode step.
    q [b, s, h, d]; q_index [b, s] is each query's position (it sees keys <= it).
    """
    b, s, h, d = q.shape
    if slots is not None:  # a piece's few rows: their slots' layer, gathered once
        cache, layer = layout.rows(cache, layer, slots), 0
    kv = cache.v.shape[0] if layout.kind == "paged" else cache.v.shape[2]
    g = h // kv
    # [b, kv, g*s, d]: a KV head's query group and positions share one matmul row axis
    qh = (q.reshape(b, s, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * s, d)
          .astype(jnp.float32) * (d ** -0.5))
    q_pos = jnp.broadcast_to(q_index[:, None, None, :], (b, kv, g, s)).reshape(b, kv, g * s)

    def pieces(size: int, offset: jnp.ndarray):
        def body(j, carry):
            m, l, acc = carry
            start = offset + j * size
            kb, vb = layout.block(cache, layer, start, size)   # [b, kv, d, size], [b, kv, size, d]
            scores = jnp.einsum("bkqd,bkdt->bkqt", qh, kb.astype(jnp.float32))
            visible = (start + jnp.arange(size)) <= q_pos[..., None]
            scores = jnp.where(visible, scores, NEG_INF)
            m_new = jnp.maximum(m, scores.max(-1))
            p = jnp.exp(scores - m_new[..., None])
            corr = jnp.exp(m - m_new)
            acc = acc * corr[..., None] + jnp.einsum("bkqt,bktd->bkqd", p, vb.astype(jnp.float32))
            return m_new, l * corr + p.sum(-1), acc
        return body

    end = jnp.max(q_index) + 1
    tail = tail_size(block)
    full = end // block
    carry = (jnp.full((b, kv, g * s), NEG_INF, jnp.float32), jnp.zeros((b, kv, g * s), jnp.float32),
             jnp.zeros((b, kv, g * s, d), jnp.float32))
    carry = jax.lax.fori_loop(0, full, pieces(block, jnp.int32(0)), carry)
    carry = jax.lax.fori_loop(0, (end - full * block + tail - 1) // tail, pieces(tail, full * block), carry)
    _, l, acc = carry
    out = (acc / l[..., None]).reshape(b, kv, g, s, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d).astype(q.dtype)


def score_entries(s: int) -> tuple[int, int]:
    """Attention scores per (row, head) for a length-s sequence: (the most alive at once
    while differentiating, those kept for the backward pass). For the memory planner."""
    sizes = [(e - a) * e for a, e in query_blocks(s)]
    return (sum(sizes), sum(sizes)) if s <= SAVE_SCORES_UP_TO else (max(sizes), 0)

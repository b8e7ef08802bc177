"""Attention in causal query blocks equals plain masked softmax attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selflengthen_jax.models.attention import xla as attn
from selflengthen_jax.models.attention.cache import TRANSPOSED, KVCache


def reference(q, k, v, segment_ids):
    """The textbook computation: full [s, s] fp32 scores, one mask, no blocks."""
    b, s, h, d = q.shape
    g = h // k.shape[2]
    kr, vr = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    scores = jnp.einsum("bshd,bthd->bhst", q, kr) / np.sqrt(d)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = jnp.tril(jnp.ones((s, s), bool)) & same & (segment_ids != 0)[:, None, :]
    scores = jnp.where(mask[:, None], scores, attn.NEG_INF)
    return jnp.einsum("bhst,bthd->bshd", jax.nn.softmax(scores, axis=-1), vr)


def inputs(s, seed=0):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (2, s, 8, 16))
    k, v = jax.random.normal(kk, (2, s, 2, 16)), jax.random.normal(kv, (2, s, 2, 16))
    # row 0: three packed examples then padding; row 1: one example, left padding
    seg0 = np.zeros(s, np.int32)
    a, b_, c = s // 5, s // 2, s - s // 7
    seg0[:a], seg0[a:b_], seg0[b_:c] = 1, 2, 3
    seg1 = np.ones(s, np.int32)
    seg1[: s // 9] = 0
    return q, k, v, jnp.asarray(np.stack([seg0, seg1]))


def test_query_blocks_cover_the_sequence_with_at_most_sixteen():
    assert attn.query_blocks(80) == [(0, 80)]
    assert attn.query_blocks(300) == [(0, 128), (128, 256), (256, 300)]
    blocks = attn.query_blocks(16384)
    assert len(blocks) == 16 and blocks[0] == (0, 1024) and blocks[-1][1] == 16384


@pytest.mark.parametrize("s", [300, 1100])  # several blocks; above 1024, blocks are rematerialised
def test_blocked_attention_and_its_gradient_match_the_reference(s):
    q, k, v, seg = inputs(s)
    real = (seg != 0)[:, :, None, None]  # padded queries' outputs are unused
    np.testing.assert_allclose(attn.attention(q, k, v, seg) * real, reference(q, k, v, seg) * real,
                               atol=2e-5)
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, seg)) * real)  # noqa: E731
    ours = jax.grad(loss(attn.attention), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_score_entries_count_the_causal_blocks():
    assert attn.score_entries(256) == (128 * 128 + 128 * 256,) * 2
    alive, kept = attn.score_entries(4096)
    assert (alive, kept) == (256 * 4096, 0)   # one block at a time, nothing saved


def test_cached_attention_reads_only_visible_positions():
    """One new token per row over a head-major cache equals full attention up to its position."""
    q, k, v, _ = inputs(512, seed=1)
    pos = jnp.array([300, 77])
    ck = k.transpose(0, 2, 3, 1)[None]   # [layers=1, b, kv, d, T]
    cv = v.transpose(0, 2, 1, 3)[None]
    qn = q[jnp.arange(2), pos][:, None]  # [b, 1, h, d]
    out = attn.cached_attention(qn, KVCache(ck, cv), TRANSPOSED, jnp.int32(0), pos[:, None], block=256)
    for row in range(2):
        p = int(pos[row]) + 1
        seg = jnp.ones((1, p), jnp.int32)
        full = reference(q[row:row + 1, :p], k[row:row + 1, :p], v[row:row + 1, :p], seg)
        np.testing.assert_allclose(out[row, 0], full[0, -1], atol=2e-5)


def test_cached_attention_reads_live_context_in_pieces_and_stays_exact():
    """Whole blocks, then the partial one in TAIL_BLOCK pieces: a step at any position,
    on either side of a piece or block edge, still equals full attention up to it."""
    assert [attn.positions_read(end, 256) for end in (1, 64, 65, 256, 257, 513)] == [64, 64, 128, 256, 320, 576]
    assert attn.positions_read(100, 32) == 128          # small blocks: pieces of the block itself
    q, k, v, _ = inputs(640, seed=2)
    ck, cv = k.transpose(0, 2, 3, 1)[None], v.transpose(0, 2, 1, 3)[None]
    for pos in ([63, 64], [255, 256], [511, 20]):
        pos = jnp.array(pos)
        qn = q[jnp.arange(2), pos][:, None]
        out = attn.cached_attention(qn, KVCache(ck, cv), TRANSPOSED, jnp.int32(0), pos[:, None], block=128)
        for row in range(2):
            p = int(pos[row]) + 1
            full = reference(q[row:row + 1, :p], k[row:row + 1, :p], v[row:row + 1, :p], jnp.ones((1, p), jnp.int32))
            np.testing.assert_allclose(out[row, 0], full[0, -1], atol=2e-5)

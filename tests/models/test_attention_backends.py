"""Every attention backend computes what the XLA path computes (Pallas kernels in interpret
mode on this CPU host), and both cache layouts hold the same keys and values."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selflengthen_jax.models.attention import Backend, choose, resolve
from selflengthen_jax.models.attention import cudnn, paged, splash, xla
from selflengthen_jax.models.attention.cache import PAGED, TRANSPOSED

# bf16 inputs: both paths round the probabilities to bf16 before the value product
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 4e-2}


def qkv(b, s, h, kv, d, dtype, seed=0):
    kq, kk, kv_ = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(kq, (b, s, h, d)).astype(dtype), jax.random.normal(kk, (b, s, kv, d)).astype(dtype),
            jax.random.normal(kv_, (b, s, kv, d)).astype(dtype))


def packed_and_padded(s):
    """Row 0: three packed examples then padding; row 1: one example after left padding."""
    seg0 = np.zeros(s, np.int32)
    seg0[: s // 5], seg0[s // 5: s // 2], seg0[s // 2: s - s // 7] = 1, 2, 3
    seg1 = np.ones(s, np.int32)
    seg1[: s // 9] = 0
    return jnp.asarray(np.stack([seg0, seg1]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_splash_equals_xla_on_packed_padded_gqa_rows(dtype):
    q, k, v = qkv(2, 300, 8, 2, 64, dtype)   # 300: padded to the kernel's 128-multiple inside
    seg = packed_and_padded(300)
    real = (seg != 0)[:, :, None, None]      # padded queries' outputs are never read
    ours = splash.attention(q, k, v, seg, mesh=None, batch_axes=None, head_axes=None, interpret=True)
    want = xla.attention(q, k, v, seg)
    np.testing.assert_allclose(np.asarray((ours * real).astype(jnp.float32)),
                               np.asarray((want * real).astype(jnp.float32)), atol=TOL[dtype])


def test_splash_gradients_equal_xla():
    q, k, v = qkv(2, 256, 4, 2, 64, jnp.float32, seed=1)
    seg = packed_and_padded(256)
    real = (seg != 0)[:, :, None, None]
    kernel = lambda *a: splash.attention(*a, mesh=None, batch_axes=None, head_axes=None, interpret=True)  # noqa: E731
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, seg)) * real)  # noqa: E731
    ours = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(xla.attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(a, b, atol=1e-4)


def cache_with(layout, k, v):
    """A cache of one layer holding k/v [b, T, kv, d] at every position."""
    stacked = layout.stack_new(k[None], v[None])
    return stacked


# the TPU kernel loads K/V blocks as bf16 whatever the cache dtype (see paged.py)
PAGED_TOL = {("tpu", jnp.float32): 4e-2, ("tpu", jnp.bfloat16): 4e-2,
             ("gpu", jnp.float32): 2e-5, ("gpu", jnp.bfloat16): 4e-2}


@pytest.mark.parametrize("kernel", paged.KERNELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_paged_decode_reads_each_slots_own_length_like_xla(kernel, dtype):
    """One token per slot at ragged positions (the first position, one in the first page,
    one mid-page, one at the end), 8 query heads over 2 KV heads, in the second layer of
    the cache: either kernel equals the XLA block loop."""
    b, t, h, kv, d = 4, 512, 8, 2, 128
    q, _, _ = qkv(b, 1, h, kv, d, dtype, seed=2)
    _, k, v = qkv(b, 2 * t, h, kv, d, dtype, seed=3)
    pos = jnp.array([[0], [4], [200], [511]], jnp.int32)
    cache = PAGED.stack_new(jnp.stack([k[:, :t], k[:, t:]]), jnp.stack([v[:, :t], v[:, t:]]))   # 2 layers
    ours = paged.decode_attention(q, cache, jnp.int32(1), pos, kernel=kernel, page_size=PAGED.page_size,
                                  mesh=None, batch_axes=None, head_axes=None, interpret=True)
    want = xla.cached_attention(q, cache, PAGED, jnp.int32(1), pos, block=256)
    np.testing.assert_allclose(np.asarray(ours.astype(jnp.float32)), np.asarray(want.astype(jnp.float32)),
                               atol=PAGED_TOL[kernel, dtype])


def test_paged_decode_kernels_need_their_head_dim_multiple():
    assert paged.supports("tpu", 128) and not paged.supports("tpu", 64)
    assert paged.supports("gpu", 64) and not paged.supports("gpu", 24)
    with pytest.raises(ValueError, match="unknown paged decode kernel 'cuda'"):
        cache = PAGED.zeros(SimpleNamespace(num_layers=1, num_kv_heads=1, head_dim=16), 1, 128, jnp.float32)
        paged.decode_attention(jnp.zeros((1, 1, 2, 16)), cache, jnp.int32(0), jnp.zeros((1, 1), jnp.int32),
                               kernel="cuda", page_size=128, mesh=None, batch_axes=None, head_axes=None,
                               interpret=True)


def test_both_layouts_hold_the_same_cache():
    """Writes, inserts and slot reads agree between the CPU and accelerator layouts."""
    b, t, kv, d, h = 2, 256, 2, 16, 4
    _, k, v = qkv(b, t, h, kv, d, jnp.float32, seed=4)
    q, k_new, v_new = qkv(b, 3, h, kv, d, jnp.float32, seed=5)
    at = jnp.array([[10, 11, 12], [100, 101, 102]])
    outs = []
    for layout in (TRANSPOSED, PAGED):
        cache = layout.zeros(SimpleNamespace(num_layers=1, num_kv_heads=kv, head_dim=d), 3, t, jnp.float32)
        cache = layout.insert(cache, jnp.array([1, 0]), cache_with(layout, k, v))   # slot 2 stays empty
        cache = layout.write(cache, 0, jnp.concatenate([at, at[:1]]), jnp.concatenate([k_new, 0 * k_new[:1]]),
                             jnp.concatenate([v_new, 0 * v_new[:1]]))
        rows = layout.take(cache, jnp.array([1, 0]))
        outs.append(xla.cached_attention(q[::-1], rows, layout, jnp.int32(0), at[::-1], block=128))
        assert float(jnp.abs(layout.take(cache, jnp.array([2])).k).max()) == 0.0
        in_place = xla.cached_attention(q[::-1], cache, layout, jnp.int32(0), at[::-1], block=128,
                                        slots=jnp.array([1, 0]))
        np.testing.assert_array_equal(in_place, outs[-1])   # reading slots in place = reading taken rows
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


def test_cudnn_gets_each_rows_segments_as_lengths_and_offsets():
    seg = jnp.array([[1, 1, 2, 2, 2, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]])
    lengths, offsets = cudnn.segment_spans(seg, max_segments=3)
    assert lengths.tolist() == [[2, 3, 0], [6, 0, 0]]
    assert offsets.tolist() == [[0, 2, -1], [2, -1, -1]]


def test_backend_is_chosen_once_from_platform_and_config():
    assert [resolve("auto", p) for p in ("cpu", "tpu", "gpu")] == ["xla", "pallas", "cudnn"]
    assert choose("auto", "cpu") == Backend("xla", TRANSPOSED)
    tpu = choose("auto", "tpu")
    assert (tpu.impl, tpu.layout, tpu.interpret) == ("pallas", PAGED, False)
    assert choose("pallas", "cpu").interpret and choose("xla", "tpu").layout == PAGED
    with pytest.raises(ValueError, match="attention_impl='flash' is not known"):
        resolve("flash", "cpu")
    with pytest.raises(ValueError, match="needs a GPU"):
        choose("cudnn", "cpu")


@pytest.mark.parametrize("impl", ["pallas", "cudnn"])
def test_accelerator_backends_decode_with_their_paged_kernel_and_fall_back_for_small_heads(impl, monkeypatch):
    """pallas decodes with the TPU kernel, cudnn with the GPU one; heads the kernel cannot
    take, several tokens per row and in-place slot reads go to the XLA loop."""
    called = []
    real = paged.decode_attention
    monkeypatch.setattr(paged, "decode_attention", lambda *a, **kw: called.append(kw["kernel"]) or real(*a, **kw))
    backend = Backend(impl, PAGED, interpret=True)
    for d in (128, 8):
        q, _, _ = qkv(2, 1, 4, 2, d, jnp.float32, seed=6)
        _, k, v = qkv(2, 256, 4, 2, d, jnp.float32, seed=7)
        cache, pos = cache_with(PAGED, k, v), jnp.array([[30], [255]], jnp.int32)
        want = xla.cached_attention(q, cache, PAGED, jnp.int32(0), pos, block=256)
        np.testing.assert_allclose(backend.cached(q, cache, jnp.int32(0), pos), want, atol=4e-2)
    backend.cached(jnp.concatenate([q, q], 1), cache, jnp.int32(0), jnp.concatenate([pos - 1, pos], 1))
    assert called == [{"pallas": "tpu", "cudnn": "gpu"}[impl]]   # only the head_dim-128 single token

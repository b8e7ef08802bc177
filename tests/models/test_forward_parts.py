"""A mixed batch (`forward_parts`): one decode token per slot plus a prompt piece in one
pass computes what the two forwards compute apart, and leaves the same cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selflengthen_jax.models.attention import CPU, choose
from selflengthen_jax.models.lora import init_lora, stack_adapters
from selflengthen_jax.models.presets import model_config_from_name
from selflengthen_jax.models.transformer import Part, forward, forward_parts, init_params

SLOTS, LENGTH, PIECE_SLOT = 3, 256, 1


def _adapters(cfg, seed):
    """Two LoRA adapters with non-zero B (a fresh adapter's B is zero: a no-op)."""
    ads = []
    for i in range(2):
        ad = init_lora(cfg, rank=4, seed=seed + i)
        keys = iter(jax.random.split(jax.random.key(seed + 10 + i), len(ad)))
        ads.append(({n: {"a": a["a"], "b": 0.2 * jax.random.normal(next(keys), a["b"].shape)}
                     for n, a in ad.items()}, 2.0))
    return stack_adapters(ads)


@pytest.mark.parametrize("layout", ["transposed", "paged"])
def test_a_decode_step_and_a_prompt_piece_in_one_pass_equal_the_two_apart(layout):
    cfg = model_config_from_name("tiny")
    params, lora = init_params(cfg, seed=0), _adapters(cfg, seed=1)
    backend = CPU if layout == "transposed" else choose("xla", "tpu")   # the accelerators' paged layout
    assert backend.layout.kind == layout
    rng = np.random.default_rng(0)
    # every slot holds a context of its own length; the piece's slot holds 4 prompt tokens
    pos = jnp.asarray([37, 4, 90], jnp.int32)
    context = jnp.asarray(rng.integers(0, cfg.vocab_size, (SLOTS, 90)), jnp.int32)
    cache = forward(params, cfg, context, cache=backend.layout.zeros(cfg, SLOTS, LENGTH, jnp.float32),
                    write_index=jnp.zeros((SLOTS,), jnp.int32), attention=backend).cache
    step = jnp.asarray(rng.integers(0, cfg.vocab_size, (SLOTS, 1)), jnp.int32)
    piece = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, 6)), jnp.int32)
    start = jnp.asarray([4], jnp.int32)
    adapters, piece_adapter = jnp.asarray([0, 1, 2], jnp.int32), jnp.asarray([2], jnp.int32)

    # apart: the decode step over every slot, then the piece over its slot
    dec = forward(params, cfg, step, positions=pos[:, None], cache=cache, write_index=pos, lora=lora,
                  adapter_ids=adapters, return_hidden=True, attention=backend)
    apart = forward(params, cfg, piece, positions=start[:, None] + jnp.arange(6)[None], cache=dec.cache,
                    write_index=start, cache_slots=jnp.asarray([PIECE_SLOT]), lora=lora,
                    adapter_ids=piece_adapter, return_hidden=True, attention=backend)

    (h_dec, h_piece), mixed_cache = forward_parts(
        params, cfg, [Part(step, pos[:, None], None, adapters),
                      Part(piece, start[:, None] + jnp.arange(6)[None], jnp.asarray([PIECE_SLOT]), piece_adapter)],
        cache, lora=lora, attention=backend)

    assert h_dec.shape == (SLOTS, 1, cfg.hidden_size) and h_piece.shape == (1, 6, cfg.hidden_size)
    decoding = [0, 2]   # the piece's slot is idle in the decode step: its decode row is not used
    np.testing.assert_allclose(h_dec[np.array(decoding)], dec.hidden[np.array(decoding)], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_piece, apart.hidden, rtol=1e-5, atol=1e-5)
    for got, want in zip(mixed_cache, apart.cache):   # the piece's write wins in its slot
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rows_of_different_adapters_keep_their_own_adapter_in_a_mixed_batch():
    cfg = model_config_from_name("tiny")
    params, lora = init_params(cfg, seed=0), _adapters(cfg, seed=3)
    cache = CPU.layout.zeros(cfg, 2, LENGTH, jnp.float32)
    tok = jnp.asarray([[5], [5]], jnp.int32)
    at0 = jnp.zeros((2, 1), jnp.int32)
    parts = lambda ids: [Part(tok, at0, None, jnp.asarray(ids, jnp.int32))]  # noqa: E731
    (base,), _ = forward_parts(params, cfg, parts([0, 0]), cache, lora=lora)
    (mixed,), _ = forward_parts(params, cfg, parts([0, 2]), cache, lora=lora)
    np.testing.assert_allclose(mixed[0], base[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(mixed[1], base[1], atol=1e-3)

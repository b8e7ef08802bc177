"""LoRA adapters: layout, no-op initialisation, merging into the base and stacking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import (init_lora, lora_logical_axes, merge_lora, projection_dims,
                                          stack_adapters)
from selflengthen_jax.models.transformer import PROJECTIONS, forward, init_params
from selflengthen_jax.models.weight_layout import per_layer

CFG = ModelConfig(model_type="qwen2", vocab_size=96, hidden_size=32, intermediate_size=48,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6,
                  rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=False,
                  attention_bias=True)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 12)), jnp.int32)


def trained(adapters, seed):
    """Adapters with random non-zero B, as if trained."""
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(adapters)))
    return {name: {"a": ad["a"], "b": 0.1 * jax.random.normal(next(keys), ad["b"].shape)}
            for name, ad in adapters.items()}


@jax.jit
def _logits(params, tokens, lora, adapter_ids, lora_scale):
    return forward(params, CFG, tokens, lora=lora, adapter_ids=adapter_ids,
                   lora_scale=lora_scale).logits


def logits(params, tokens=TOKENS, lora=None, adapter_ids=None, lora_scale=1.0):
    return np.asarray(_logits(params, tokens, lora, adapter_ids, lora_scale))


@pytest.fixture(scope="module")
def params():
    """Random params of CFG's shapes (numpy: much faster than initialising the module)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                        jax.eval_shape(lambda: init_params(CFG)))


def test_adapters_are_stacked_layers_first_then_adapters_then_in_out_rank():
    ads = init_lora(CFG, rank=4, seed=0)
    assert set(ads) == set(PROJECTIONS)
    for name, (d_in, d_out) in projection_dims(CFG).items():
        assert ads[name]["a"].shape == (2, 1, d_in, 4)
        assert ads[name]["b"].shape == (2, 1, 4, d_out)
        assert ads[name]["a"].dtype == jnp.float32
    axes = lora_logical_axes()
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(ads)
    assert all(a[0] == "layers" for p in axes.values() for a in p.values())


def test_a_fresh_adapter_is_an_exact_no_op(params):
    ads = init_lora(CFG, rank=4, seed=0)
    assert float(jnp.abs(ads["wq"]["a"]).max()) > 0
    np.testing.assert_array_equal(logits(params, lora=ads, lora_scale=2.0), logits(params))


def test_targets_restrict_which_projections_are_adapted():
    ads = init_lora(CFG, rank=2, seed=0, targets=("wq", "w_down"))
    assert set(ads) == {"wq", "w_down"}
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        init_lora(CFG, rank=2, seed=0, targets=("q_proj",))


def test_merged_weights_give_the_logits_of_base_plus_adapter(params):
    ads = trained(init_lora(CFG, rank=4, seed=1), seed=2)
    unmerged = logits(params, lora=ads, lora_scale=2.0)
    assert np.abs(unmerged - logits(params)).max() > 1e-3  # the adapter matters
    np.testing.assert_allclose(logits(merge_lora(params, ads, 2.0)), unmerged, atol=1e-5)


def test_stacked_adapters_keep_the_base_at_index_0_and_fold_each_scale(params):
    gen = trained(init_lora(CFG, rank=4, seed=1), seed=2)
    ext = trained(init_lora(CFG, rank=2, seed=3, targets=("wv", "w_up")), seed=4)
    stacked = stack_adapters([(gen, 2.0), (ext, 0.5)])
    assert stacked["wq"]["a"].shape == (2, 3, 32, 4)  # padded to the largest rank
    tokens = jnp.tile(TOKENS[:1], (3, 1))
    mixed = logits(params, tokens, lora=stacked, adapter_ids=jnp.arange(3))
    expected = [logits(params)[0], logits(params, lora=gen, lora_scale=2.0)[0],
                logits(params, lora=ext, lora_scale=0.5)[0]]
    for row, want in enumerate(expected):
        np.testing.assert_allclose(mixed[row], want, atol=1e-5)


def test_per_layer_layout_applies_the_same_stacked_adapters(params):
    gen = trained(init_lora(CFG, rank=4, seed=1), seed=2)
    stacked = stack_adapters([(gen, 2.0)])
    ids = jnp.asarray([0, 1])
    want = logits(params, lora=stacked, adapter_ids=ids)
    got = logits(per_layer(params, CFG), lora=stacked, adapter_ids=ids)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # the adapter does change row 1

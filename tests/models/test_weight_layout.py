"""The engine's weight layout: chosen once per platform, the same numbers either way."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selflengthen_jax.models.presets import model_config_from_name
from selflengthen_jax.models.transformer import forward, init_params
from selflengthen_jax.models.weight_layout import PER_LAYER, STACKED, choose

CFG = dataclasses.replace(model_config_from_name("tiny"), tie_word_embeddings=True)


@pytest.mark.parametrize("platform,expected", [("cpu", PER_LAYER), ("tpu", STACKED), ("gpu", STACKED)])
def test_auto_copies_the_weights_per_layer_on_cpu_only(platform, expected):
    assert choose("auto", platform) == expected


@pytest.mark.parametrize("setting", ["stacked", "per_layer"])
def test_an_explicit_setting_holds_on_every_platform(setting):
    assert {choose(setting, p).name for p in ("cpu", "tpu", "gpu")} == {setting}


def test_an_unknown_setting_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"engine.weight_layout='unrolled'.*auto, stacked, per_layer"):
        choose("unrolled", "cpu")


@pytest.mark.parametrize("layout", [STACKED, PER_LAYER])
def test_the_tree_is_what_convert_makes(layout):
    params = layout.convert(init_params(CFG), CFG)
    axes, shapes = layout.tree(CFG)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(params)
    assert isinstance(params["layers"], list) == layout.copies


def test_forward_gives_the_same_logits_in_both_layouts():
    params = init_params(CFG)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 12)))
    stacked = forward(STACKED.convert(params, CFG), CFG, tokens).logits
    unrolled = forward(PER_LAYER.convert(params, CFG), CFG, tokens).logits
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(stacked), rtol=1e-5, atol=1e-5)

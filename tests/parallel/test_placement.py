"""Params between layouts, on device: the shapes and shardings each layout promises."""

import dataclasses

import jax
import pytest

from selflengthen_jax.config import MeshSection
from selflengthen_jax.models.presets import model_config_from_name
from selflengthen_jax.models.transformer import init_params
from selflengthen_jax.models.weight_layout import PER_LAYER, STACKED
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.placement import arrange_weights, weight_shardings
from selflengthen_jax.parallel.rules import strategy_rules

CFG = dataclasses.replace(model_config_from_name("tiny"), tie_word_embeddings=True)


@pytest.mark.parametrize("layout", [STACKED, PER_LAYER])
def test_arranged_weights_sit_on_the_layouts_shardings(layout):
    mesh = make_mesh(MeshSection(data=1, fsdp=4, tensor=2, strategy="fsdp_tp"))
    rules = strategy_rules("fsdp_tp")
    loaded = jax.device_put(init_params(CFG), weight_shardings(STACKED, CFG, mesh, rules))  # as the loader places them
    params, shardings = arrange_weights(layout, loaded, CFG, mesh, rules)
    assert jax.tree.map(lambda a: a.sharding, params) == shardings == weight_shardings(layout, CFG, mesh, rules)
    assert (params is loaded) == (not layout.copies)   # the stacked layout shares the loaded params

"""Logical-axis rules: the names `mesh.rules` may use are exactly the ones the model,
its adapters, the KV cache and the activations carry, and bad rules name their key."""

import jax
import pytest

from selflengthen_jax.config import ConfigError
from selflengthen_jax.models.lora import lora_logical_axes
from selflengthen_jax.models.presets import PRESETS, model_config_from_name
from selflengthen_jax.models.attention.cache import PAGED, TRANSPOSED
from selflengthen_jax.models.transformer import logical_axes
from selflengthen_jax.parallel.rules import ACTIVATIONS, LOGICAL_AXES, STRATEGIES, check_rules, strategy_rules


def names_in(tree) -> set[str]:
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple))
    return {n for names in leaves for n in names if n is not None}


def test_the_known_logical_axes_are_the_ones_in_use():
    used = names_in(logical_axes(model_config_from_name(next(iter(PRESETS))))) | names_in(lora_logical_axes())
    used |= {n for layout in (TRANSPOSED, PAGED) for axes in layout.axes() for n in axes if n} | set(ACTIVATIONS)
    used |= {"batch"}  # step and engine batch shardings
    assert used == set(LOGICAL_AXES)
    assert all(set(rules) <= set(LOGICAL_AXES) for rules in STRATEGIES.values())


@pytest.mark.parametrize("rules", [{"vocab": "tensor"}, {"embed": ["data", "fsdp"]}, {"heads": None}, {}])
def test_good_rules_pass(rules):
    check_rules(rules)
    assert set(rules) <= set(strategy_rules("fsdp_tp", rules))


@pytest.mark.parametrize("rules,message", [
    ({"vocabb": "tensor"}, "mesh.rules.vocabb is not a logical axis; known: batch,"),
    ({"vocab": "bogus"}, "mesh.rules.vocab='bogus' is not allowed; choose a mesh axis (data, fsdp, tensor)"),
    ({"vocab": []}, "mesh.rules.vocab=[] is not allowed"),
    ({"vocab": 3}, "mesh.rules.vocab=3 is not allowed"),
    ({"mlp": ["tensor", "tensor"]}, "a list of distinct ones"),
])
def test_bad_rules_name_the_key_and_what_is_allowed(rules, message):
    with pytest.raises(ConfigError) as err:
        strategy_rules("dp", rules)
    assert message in str(err.value)

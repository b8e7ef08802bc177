"""LoRA dropout as PEFT applies it: on each adapter's input, training only.

The parity test runs peft's LoRA model (transformers base, lora_dropout > 0, train
mode) with each of its dropout modules replaced by the very mask our forward draws for
that layer and projection: the logits must agree, so the masks sit where peft's do and
the kept values are scaled as nn.Dropout scales them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from hf_fixtures import hf_model, make_checkpoint
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.models.lora import init_lora
from selflengthen_jax.models.transformer import PROJECTIONS, forward

RANK, ALPHA, RATE = 4, 8.0, 0.3
HF_NAMES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
            "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
            "w_down": "mlp.down_proj"}
KEY = jax.random.key(7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("drop") / "m", "qwen2")
    cfg = read_config(path)
    rng = np.random.default_rng(0)
    adapters = {k: {"a": v["a"], "b": jnp.asarray(0.2 * rng.standard_normal(v["b"].shape), jnp.float32)}
                for k, v in init_lora(cfg, RANK, 0).items()}
    return path, cfg, load_params(path, cfg), adapters


def ours(params, cfg, tokens, adapters, key, rate=RATE):
    return np.asarray(jax.jit(lambda p, ad, k: forward(
        p, cfg, tokens, lora=ad, lora_scale=ALPHA / RANK, lora_dropout=rate, dropout_key=k).logits)(
            params, adapters, key))


class FixedMask(torch.nn.Module):
    """nn.Dropout with a given keep mask (what our forward drew for this spot)."""

    def __init__(self, keep: np.ndarray):
        super().__init__()
        self.keep = torch.tensor(keep)

    def forward(self, x):
        return x * self.keep.to(x.dtype) / (1.0 - RATE)


def test_dropout_matches_peft_with_the_same_masks(tiny):
    path, cfg, params, adapters = tiny
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
    model = peft.get_peft_model(hf_model(path), peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=RATE, target_modules=[n.split(".")[-1] for n in HF_NAMES.values()]))
    dims = {"wq": cfg.hidden_size, "wk": cfg.hidden_size, "wv": cfg.hidden_size,
            "wo": cfg.num_heads * cfg.head_dim, "w_gate": cfg.hidden_size, "w_up": cfg.hidden_size,
            "w_down": cfg.intermediate_size}
    with torch.no_grad():
        for li, layer in enumerate(model.base_model.model.model.layers):
            for name, hf in HF_NAMES.items():
                module = layer.get_submodule(hf)
                module.lora_A["default"].weight.copy_(torch.tensor(np.asarray(adapters[name]["a"][li, 0]).T))
                module.lora_B["default"].weight.copy_(torch.tensor(np.asarray(adapters[name]["b"][li, 0]).T))
                key = jax.random.fold_in(jax.random.fold_in(KEY, li), PROJECTIONS.index(name))
                keep = np.asarray(jax.random.bernoulli(key, 1.0 - RATE, (*tokens.shape, dims[name])))
                module.lora_dropout["default"] = FixedMask(keep)
        model.train()
        theirs = model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = ours(params, cfg, jnp.asarray(tokens), adapters, KEY)
    np.testing.assert_allclose(got, theirs, atol=1e-4)
    no_drop = ours(params, cfg, jnp.asarray(tokens), adapters, None)
    assert np.abs(got - no_drop).max() > 1e-3  # the masks did change something


def test_no_key_or_rate_zero_is_the_plain_forward(tiny):
    """Generation and evaluation pass no key: dropout never applies outside training."""
    _, cfg, params, adapters = tiny
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 8)), jnp.int32)
    plain = np.asarray(forward(params, cfg, tokens, lora=adapters, lora_scale=ALPHA / RANK).logits)
    np.testing.assert_array_equal(ours(params, cfg, tokens, adapters, None), plain)
    np.testing.assert_allclose(ours(params, cfg, tokens, adapters, KEY, rate=0.0), plain, atol=1e-6)

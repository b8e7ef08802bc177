"""Our Flax ports give transformers' logits (fp32, max-abs error <= 1e-4)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import hf_model, make_checkpoint
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.models.transformer import forward
from selflengthen_jax.models.weight_layout import per_layer

TOL = 1e-4

VARIANTS = {
    "qwen2-gqa-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-untied-mha": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4)),
    "llama-gqa4-untied": ("llama", dict(tie_word_embeddings=False, num_key_value_heads=1)),
    "llama31-rope-factor8": ("llama", dict(rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    "llama32-rope-factor32-tied": ("llama", dict(tie_word_embeddings=True, rope_scaling=dict(
        rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
}


def padded_batch(lengths, total, vocab, left, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), total), np.int64)
    mask = np.zeros((len(lengths), total), np.int64)
    for i, n in enumerate(lengths):
        cols = slice(total - n, total) if left else slice(0, n)
        tokens[i, cols] = rng.integers(0, vocab, n)
        mask[i, cols] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return tokens, mask, positions


def ours(path, tokens, mask, positions, layout="stacked"):
    cfg = read_config(path)
    params = load_params(path, cfg)
    if layout == "per_layer":
        params = per_layer(params, cfg)
    out = forward(params, cfg, jnp.asarray(tokens), positions=jnp.asarray(positions),
                  segment_ids=jnp.asarray(mask, jnp.int32))
    return np.asarray(out.logits)


def theirs(path, tokens, mask, positions):
    with torch.no_grad():
        return hf_model(path)(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                              position_ids=torch.tensor(positions)).logits.numpy()


def max_err_on_real_tokens(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_logits_match_transformers_on_padded_batch(tmp_path, name, left):
    kind, overrides = VARIANTS[name]
    path = make_checkpoint(tmp_path / name, kind, **overrides)
    # 80 tokens > original_max_position_embeddings=32, so llama3 scaling matters
    tokens, mask, positions = padded_batch([80, 37, 5], 80, 128, left)
    err = max_err_on_real_tokens(ours(path, tokens, mask, positions),
                                 theirs(path, tokens, mask, positions), mask)
    print(f"{name} {'left' if left else 'right'} max-abs logits error {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("name", ["qwen2-gqa-tied", "llama-gqa4-untied"])
def test_per_layer_layout_matches_transformers(tmp_path, name):
    """The unrolled per-layer layout (what the engine decodes with on CPU), tied and untied."""
    kind, overrides = VARIANTS[name]
    path = make_checkpoint(tmp_path / name, kind, **overrides)
    tokens, mask, positions = padded_batch([80, 37, 5], 80, 128, left=True)
    err = max_err_on_real_tokens(ours(path, tokens, mask, positions, layout="per_layer"),
                                 theirs(path, tokens, mask, positions), mask)
    assert err <= TOL


def test_left_and_right_padding_agree_on_real_tokens(tmp_path):
    path = make_checkpoint(tmp_path / "q", "qwen2")
    lt, lm, lp = padded_batch([20, 9], 20, 128, left=True)
    rt, rm, rp = padded_batch([20, 9], 20, 128, left=False)
    left, right = ours(path, lt, lm, lp), ours(path, rt, rm, rp)
    np.testing.assert_allclose(left[1, -9:], right[1, :9], atol=1e-5)


def test_rope_scaling_factor_changes_logits(tmp_path):
    """Guard: the two llama3 factors really give different models past the original length."""
    tokens, mask, positions = padded_batch([80], 80, 128, left=False)
    a = ours(make_checkpoint(tmp_path / "a", "llama", **VARIANTS["llama31-rope-factor8"][1]),
             tokens, mask, positions)
    b = ours(make_checkpoint(tmp_path / "b", "llama", rope_scaling=dict(
        rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32)), tokens, mask, positions)
    assert np.abs(a - b).max() > 1e-3

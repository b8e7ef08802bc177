"""Architectures of public checkpoints, by name, for planning and benchmarking without weights.

Each preset is the relevant subset of the model's published `config.json`, read through
`ModelConfig.from_hf` exactly as a downloaded checkpoint would be, so a plan for
"qwen2-72b" uses the same shapes as loading Qwen/Qwen2-72B. `tiny` is not a public
model: a 0.4M-parameter Qwen2-shaped config (8 query heads over 4 KV heads, so a tensor
axis of 8 shards the queries and replicates the KV heads) that runs every sharding
strategy on CPU in seconds.
"""

from __future__ import annotations

from typing import Any

from selflengthen_jax.models.config import ModelConfig

_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                       intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       max_position_embeddings=131072, tie_word_embeddings=True),
    "qwen2-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                     intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     max_position_embeddings=131072, tie_word_embeddings=False),
    "qwen2-72b": dict(model_type="qwen2", vocab_size=152064, hidden_size=8192,
                      intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                      num_key_value_heads=8, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      max_position_embeddings=131072, tie_word_embeddings=False),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=False,
                         attention_bias=False, rope_scaling=_LLAMA31_ROPE),
    "llama-3.1-70b": dict(model_type="llama", vocab_size=128256, hidden_size=8192,
                          intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                          max_position_embeddings=131072, tie_word_embeddings=False,
                          attention_bias=False, rope_scaling=_LLAMA31_ROPE),
    "tiny": dict(model_type="qwen2", vocab_size=512, hidden_size=128, intermediate_size=256,
                 num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                 rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=4096,
                 tie_word_embeddings=False),
}


def _key(name: str) -> str:
    """Accept "Qwen2-7B", "Qwen/Qwen2-7B", "meta-llama/Llama-3.1-8B" and "llama3.1-8b"."""
    key = name.rsplit("/", 1)[-1].lower().replace("_", "-")
    return key.replace("meta-", "").replace("llama3", "llama-3")


def is_preset(name: str) -> bool:
    return _key(name) in PRESETS


def model_config_from_name(name: str, param_dtype: str = "float32",
                           compute_dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a named public architecture; raises KeyError listing the names."""
    key = _key(name)
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig.from_hf(PRESETS[key], param_dtype=param_dtype, compute_dtype=compute_dtype)

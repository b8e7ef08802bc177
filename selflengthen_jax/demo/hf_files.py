"""The non-weight files of the demo checkpoint.

The embedded demo checkpoint is laid out like a downloaded Qwen2 model (config.json,
generation_config.json, tokenizer files) so that `launch.iterate` exercises the
real import path. The JSON written here therefore follows what released Qwen2.5
checkpoints ship (legacy `rope_theta` / `torch_dtype` keys included), not the
newest transformers serialization.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from selflengthen_jax.demo.tokenizer import (
    ENDOFTEXT_ID,
    IM_END_ID,
    write_hf_tokenizer,
)
from selflengthen_jax.sampling.request import SamplingParams


def qwen2_demo_config(
    vocab_size: int,
    hidden_size: int = 128,
    intermediate_size: int = 352,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    bos_token_id: int = ENDOFTEXT_ID,
    eos_token_id: int = IM_END_ID,
) -> dict:
    """A Qwen2ForCausalLM config.json dict for a tiny model.

    bos/eos follow Qwen2-Instruct: <|endoftext|> and <|im_end|>. Sliding window is
    off and spans the whole context, as in released Qwen2.5 configs.
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size {hidden_size}, num_heads {num_heads} and num_kv_heads "
            f"{num_kv_heads} must divide evenly"
        )
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": max_position_embeddings,
        "max_window_layers": num_layers,
        "attention_dropout": 0.0,
        "tie_word_embeddings": tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_config(out_dir: str | Path, config: dict) -> None:
    """Write `config` (from qwen2_demo_config) as out_dir/config.json."""
    _write_json(Path(out_dir) / "config.json", config)


def write_generation_config(
    out_dir: str | Path, eos_token_ids: list[int], pad_token_id: int
) -> None:
    """Write generation_config.json as Qwen2-Instruct ships it.

    Qwen uses <|endoftext|> as both bos and pad, so bos is `pad_token_id`. The
    sampling defaults are the engine's own (SamplingParams), so a reader of this
    file and the engine agree.
    """
    defaults = SamplingParams()
    _write_json(
        Path(out_dir) / "generation_config.json",
        {
            "bos_token_id": pad_token_id,
            "pad_token_id": pad_token_id,
            "eos_token_id": list(eos_token_ids),
            "do_sample": True,
            "temperature": defaults.temperature,
            "top_p": defaults.top_p,
            "top_k": defaults.top_k,
            "repetition_penalty": defaults.repetition_penalty,
        },
    )


def write_non_weight_files(out_dir: str | Path, tokenizer: Tokenizer, **config_overrides) -> dict:
    """Write tokenizer, config.json and generation_config.json; return the config.

    `config_overrides` are qwen2_demo_config's keyword arguments; the vocab size
    comes from the tokenizer. Weights (model.safetensors) are left to the caller.
    """
    config = qwen2_demo_config(tokenizer.get_vocab_size(), **config_overrides)
    write_hf_tokenizer(tokenizer, out_dir, model_max_length=config["max_position_embeddings"])
    write_config(out_dir, config)
    write_generation_config(out_dir, [IM_END_ID, ENDOFTEXT_ID], ENDOFTEXT_ID)
    return config

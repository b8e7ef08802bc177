"""One call from a model path to sharded params, tokenizer and EOS ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import transformers
from jax.sharding import Mesh

from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.checkpoint.tokenizer import eos_token_ids, load_tokenizer
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.models.weight_layout import STACKED
from selflengthen_jax.parallel.placement import weight_shardings
from selflengthen_jax.parallel.rules import Rules


@dataclasses.dataclass
class LoadedModel:
    path: Path
    cfg: ModelConfig
    params: Any
    tokenizer: transformers.PreTrainedTokenizerBase
    eos_ids: list[int]


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for the params as loaded (stacked), from their logical axis names."""
    return weight_shardings(STACKED, cfg, mesh, rules)


def load_model(path: str | Path, mesh: Mesh | None = None, rules: Rules | None = None,
               param_dtype: str = "float32", compute_dtype: str = "float32") -> LoadedModel:
    """Validate the directory (config, tokenizer, weights) before reading any tensor."""
    cfg = read_config(path, param_dtype=param_dtype, compute_dtype=compute_dtype)
    tok = load_tokenizer(path)
    shardings = None if mesh is None else param_shardings(cfg, mesh, rules or {})
    params = load_params(path, cfg, shardings)
    return LoadedModel(as_path(path), cfg, params, tok, eos_token_ids(path, tok))

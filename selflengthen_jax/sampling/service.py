"""The one place launch scripts and the pipeline get an engine and sampling params from.

Everything an engine needs (mesh, sharding rules, dtypes, attention kernel, slot and
cache sizes) comes from the run config, so every entry point builds it the same way
and a config key means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses

from selflengthen_jax.checkpoint.hf_import import read_config
from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import Config, ConfigError, SamplingSection, validate_for_model
from selflengthen_jax.parallel.mesh import generation_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import SamplingParams


def build_engine(cfg: Config, model_path: str | None = None,
                 max_new_tokens: int | None = None) -> Engine:
    """Load `model_path` (default `cfg.model.path`) onto the generation mesh.

    `max_new_tokens` caps the engine's cache room for output: callers that know no
    request asks for more (a judge, a rewrite, a short test run) should not pay for a
    KV cache sized for the longest answers. Config problems that need the checkpoint's
    shape (heads vs the tensor axis) are raised before any weight is read.
    """
    path = model_path or cfg.model.path
    if not path:
        raise ConfigError("no model given: pass --model PATH or set model.path")
    validate_for_model(cfg, read_config(path).num_heads)
    section = cfg.engine
    if max_new_tokens is not None:
        section = dataclasses.replace(section, max_new_tokens=min(section.max_new_tokens, max_new_tokens))
    mesh = generation_mesh(cfg.mesh)
    rules = strategy_rules(cfg.mesh.strategy, cfg.mesh.rules)
    model = load_model(path, mesh, rules, cfg.model.param_dtype, cfg.model.compute_dtype)
    return Engine(model, section, mesh, rules, attention_impl=cfg.model.attention_impl)


def check_model(path: str) -> None:
    """Cheap checks of a checkpoint (config, tokenizer) for scripts that load it only
    after other work, so a typo in its path fails at start-up, not hours later."""
    read_config(path)
    load_tokenizer(path)


def sampling_params(section: SamplingSection, **overrides: object) -> SamplingParams:
    """The config's sampling section as request params; `overrides` (e.g. seed, greedy,
    max_new_tokens, stop) win. The YAML stop list becomes the tuple requests carry."""
    fields = {**dataclasses.asdict(section), **overrides}
    fields["stop"] = tuple(fields["stop"])
    return SamplingParams(**fields)

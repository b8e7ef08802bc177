"""Start-up of the loop: every check before compute, then the engine and the loop."""

from __future__ import annotations

from pathlib import Path

import jax

from selflengthen_jax.checkpoint.hf_import import read_config, weight_files
from selflengthen_jax.config import Config, ConfigError, validate_for_model
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.presets import model_config_from_name
from selflengthen_jax.parallel.mesh import mesh_shape
from selflengthen_jax.parallel.planner import format_plan, plan
from selflengthen_jax.pipeline.loop import Loop
from selflengthen_jax.pipeline.prompts import load_templates
from selflengthen_jax.pipeline.run_dir import claim
from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.sampling.service import build_engine, check_model


def model_config(cfg: Config) -> ModelConfig:
    """The architecture, from the checkpoint if it is here, else from model.preset."""
    dtypes = dict(param_dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype)
    if cfg.model.path and Path(cfg.model.path, "config.json").is_file():
        return read_config(cfg.model.path, **dtypes)
    if cfg.model.preset:
        try:
            return model_config_from_name(cfg.model.preset, **dtypes)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
    if not cfg.model.path:
        raise ConfigError("model.path is empty and model.preset is not set: name a checkpoint")
    raise ConfigError(f"model.path {cfg.model.path} has no config.json and model.preset is not set")


def dry_run(cfg: Config) -> str:
    """Validate everything and plan memory for the configured device, loading no weights."""
    mcfg = model_config(cfg)
    validate_for_model(cfg, mcfg.num_heads)
    load_templates(cfg.language, cfg.pipeline.templates_dir or None)
    load_seeds(cfg.language, cfg.pipeline.seeds_path or None)
    n = cfg.plan.num_devices or jax.device_count()
    return format_plan(plan(cfg, mcfg, cfg.plan.device, n))


def check_inputs(cfg: Config) -> None:
    """Everything a user can get wrong, checked before any weight is read."""
    mesh_shape(cfg.mesh, jax.device_count())
    load_templates(cfg.language, cfg.pipeline.templates_dir or None)
    seeds = load_seeds(cfg.language, cfg.pipeline.seeds_path or None)
    if len(seeds) < 2:
        raise ValueError("the seeds file must hold at least 2 instructions (few-shot examples)")
    if cfg.train.mode != "lora":
        raise ConfigError("the loop switches roles as LoRA adapters on one base: set train.mode=lora")
    if not cfg.model.path:
        raise ConfigError("model.path is empty: a run needs a checkpoint (model.preset serves --dry-run only)")
    check_model(cfg.model.path)
    weight_files(cfg.model.path)
    validate_for_model(cfg, read_config(cfg.model.path).num_heads)


def prepare(cfg: Config, force: bool = False) -> Path:
    """All start-up checks, then claim output_dir for this run (refusing another run's)."""
    check_inputs(cfg)
    return claim(cfg, force)


def run(cfg: Config, out: Path, log=print) -> list[dict]:
    """The whole loop on the checkpoint in model.path."""
    engine = build_engine(cfg)
    return Loop(cfg, engine, out, log).run()

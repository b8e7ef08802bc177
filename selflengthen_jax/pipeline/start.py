"""Start-up of the loop: every check before compute, then the engine, then the claim.

`output_dir` is claimed (its run_config.json written) only once the model has loaded,
so a start-up that fails for any reason leaves the directory as it found it.
"""

from __future__ import annotations

from selflengthen_jax.checkpoint.hf_import import read_config, weight_files
from selflengthen_jax.config import Config, ConfigError, check_context, validate_for_model
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.presets import model_config_from_name
from selflengthen_jax.outputs import check_dir
from selflengthen_jax.parallel.mesh import check_meshes
from selflengthen_jax.paths import AnyPath, check_bucket, is_remote
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline import run_dir
from selflengthen_jax.pipeline.loop import Loop
from selflengthen_jax.pipeline.prompts import load_templates
from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.sampling.service import build_engine, check_model


def model_config(cfg: Config) -> ModelConfig:
    """The architecture, from the checkpoint if it is here, else from model.preset."""
    dtypes = dict(param_dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype)
    if cfg.model.path and (as_path(cfg.model.path) / "config.json").is_file():
        return read_config(cfg.model.path, **dtypes)
    if cfg.model.preset:
        try:
            return model_config_from_name(cfg.model.preset, **dtypes)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
    if not cfg.model.path:
        raise ConfigError("model.path is empty and model.preset is not set: name a checkpoint")
    raise ConfigError(f"model.path {cfg.model.path} has no config.json and model.preset is not set")


def check_loop_settings(cfg: Config) -> None:
    """What the loop itself needs, checked by --dry-run and the real start alike."""
    if cfg.train.mode != "lora":
        raise ConfigError("the loop switches roles as LoRA adapters on one base: set train.mode=lora")
    load_templates(cfg.language, cfg.pipeline.templates_dir or None)
    seeds = load_seeds(cfg.language, cfg.pipeline.seeds_path or None)
    if len(seeds) < 2:
        raise ValueError("the seeds file must hold at least 2 instructions (few-shot examples)")


def check_inputs(cfg: Config) -> None:
    """Everything a user can get wrong, checked before any weight is read (the training
    mesh and every host's generation mesh are built here, before output_dir is claimed)."""
    check_meshes(cfg.mesh)
    check_loop_settings(cfg)
    if not cfg.model.path:
        raise ConfigError("model.path is empty: a run needs a checkpoint (model.preset serves --dry-run only)")
    check_bucket(cfg.model.path, "model.path")
    check_model(cfg.model.path)
    weight_files(cfg.model.path)
    model_cfg = read_config(cfg.model.path)
    validate_for_model(cfg, model_cfg.num_heads)
    check_context(cfg, model_cfg.max_position_embeddings)


def check_output(cfg: Config, force: bool = False) -> AnyPath:
    """output_dir: a writable directory apart from the inputs, not inside another run,
    and not another config's run (unless `force`); writes nothing. A gs:// output_dir
    must be in a bucket that exists and that we can reach."""
    if is_remote(cfg.output_dir):
        check_bucket(cfg.output_dir, "output_dir")
        return run_dir.check(cfg.output_dir, cfg.to_dict(), force)
    inputs = [p for p in (cfg.model.path, cfg.pipeline.seeds_path, cfg.pipeline.templates_dir) if p]
    out = check_dir(cfg.output_dir, inputs, what="output_dir", own_run=cfg.output_dir)
    return run_dir.check(out, cfg.to_dict(), force)


def prepare(cfg: Config, force: bool = False) -> AnyPath:
    """All start-up checks, output_dir included; writes nothing."""
    check_inputs(cfg)
    return check_output(cfg, force)


def start(cfg: Config, out: AnyPath, force: bool = False, log=print) -> Loop:
    """Check every host sees `out`, load the model in model.path, then claim `out` for
    this run: the loop, ready to run."""
    mine = cfg.to_dict()
    run_dir.check_shared(out)
    engine = build_engine(cfg)
    run_dir.claim(out, mine, force)
    return Loop(cfg, engine, out, log)

"""Fine-tune one role on (prompt, response) records.

    python -m launch.train --role gen --input DATA.jsonl --output DIR
        [--config FILE] [--model PATH] [--profile N] [--force] [key=value ...]

Required: --role (gen or ext), --input (JSONL records with `prompt` and `response`)
and --output (the run directory this command owns). The base model is --model, else
`model.path` from the config (a Hugging Face directory or one of ours, see
launch.export). Rerunning the same command resumes from the newest checkpoint in
--output; --output records the command that owns it (train_config.json), and another
command's directory is refused unless --force. Prints the artifact directory
(OUTPUT/adapter for LoRA, OUTPUT/model for full fine-tuning). Training curves go to
OUTPUT/tensorboard. The older spellings role=, data= and out= still work, with a hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from launch import cli
from selflengthen_jax.checkpoint import orbax_params
from selflengthen_jax.checkpoint.hf_import import read_config
from selflengthen_jax.checkpoint.loader import load_model, param_shardings
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import Config, ConfigError, validate_for_model
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params
from selflengthen_jax.outputs import check_dir
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.pipeline import run_dir
from selflengthen_jax.pipeline.loop import ROLE_DIRS
from selflengthen_jax.training.data import DataError, read_records
from selflengthen_jax.training.trainer import TrainingError, train

ROLES = tuple(ROLE_DIRS.values())  # the loop's names for the generator and the extender
OWNER_FILE = "train_config.json"
OLD_KEYS = {"role": "--role", "data": "--input", "out": "--output"}  # deprecated key=value spellings


def owner(cfg: Config, role: str, data: str) -> dict:
    """What --output records as its owner: the role, the data file and the whole config."""
    return {"role": role, "data": str(Path(data).resolve()), "config": cfg.to_dict()}


def load_base(cfg: Config) -> tuple[ModelConfig, Params, PreTrainedTokenizerBase, Mesh]:
    """(model config, params on the training mesh, tokenizer, mesh) for cfg.model.path."""
    path = cfg.model.path
    if not path:
        raise ConfigError("model.path is empty: training needs a base model directory")
    dtypes = dict(param_dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype)
    model_cfg = read_config(path, **dtypes)
    validate_for_model(cfg, model_cfg.num_heads)
    mesh = make_mesh(cfg.mesh)
    rules = strategy_rules(cfg.mesh.strategy, cfg.mesh.rules)
    if orbax_params.is_params_dir(path):
        params = orbax_params.load_params(path, model_cfg, param_shardings(model_cfg, mesh, rules))
        return model_cfg, params, load_tokenizer(path), mesh
    model = load_model(path, mesh, rules, **dtypes)
    return model.cfg, model.params, model.tokenizer, mesh


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.train", __doc__)
    p.add_argument("--role", required=True, help="the role to train: gen or ext")
    p.add_argument("--input", required=True, help="JSONL training records (prompt, response)")
    p.add_argument("--output", required=True, help="run directory: checkpoints, metrics, the artifact")
    p.add_argument("--model", help="base checkpoint directory (default: model.path from the config)")
    cli.add_profile(p)
    p.add_argument("--force", action="store_true", help="take over an --output directory of another command")
    args = cli.parse(p, argv, old_keys=OLD_KEYS)
    with cli.user_errors():
        if args.role not in ROLES:
            raise ConfigError(f"--role {args.role} is not a role; choose one of: {', '.join(ROLES)}")
        cfg = cli.config(args, cli.flag_overrides({"model.path": args.model}))
        out = check_dir(args.output, [args.input, *filter(None, [cfg.model.path])], what="--output")
        run_dir.check(out, owner(cfg, args.role, args.input), args.force, name=OWNER_FILE)
        read_records(args.input)  # a bad data file fails now, before any weight is read
        model_cfg, params, tok, mesh = load_base(cfg)

    def claim() -> None:
        run_dir.claim(out, owner(cfg, args.role, args.input), args.force, name=OWNER_FILE)

    try:
        with cli.resumable(out), cli.profiling(args, out / "tensorboard"):
            artifact = train(cfg, args.role, Path(args.input), out, params, model_cfg, tok, mesh,
                             claim=claim)
    except (TrainingError, DataError) as e:
        cli.fail(str(e))
    print(artifact)


if __name__ == "__main__":
    cli.program(main)

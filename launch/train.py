"""Fine-tune one role on (prompt, response) records.

    python -m launch.train --config configs/X.yaml role=gen data=PATH out=DIR [--force] [key=value ...]

`role` (gen or ext), `data` and `out` belong to this script; every other key=value
overrides the config. The base model is `model.path` (a Hugging Face directory or one of
ours, see launch.export). Rerunning the same command resumes from the newest checkpoint
in `out`; `out` records the command that owns it (train_config.json), and another
command's `out` is refused unless --force. Prints the artifact directory (out/adapter
for LoRA, out/model for full fine-tuning).
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

SCRIPT_KEYS = ("role", "data", "out")
ROLES = tuple(ROLE_DIRS.values())  # the loop's names for the generator and the extender
OWNER_FILE = "train_config.json"


def split_script_args(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(role/data/out values, the remaining config overrides); all three are required."""
    mine: dict[str, str] = {}
    rest = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in SCRIPT_KEYS:
            mine[key] = value
        else:
            rest.append(arg)
    missing = [k for k in SCRIPT_KEYS if not mine.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(f'{k}=...' for k in missing)} "
                          "(usage: role=gen data=PATH out=DIR [key=value ...])")
    if mine["role"] not in ROLES:
        raise ConfigError(f"role={mine['role']} is not a role; choose one of: {', '.join(ROLES)}")
    return mine, rest


def owner(cfg: Config, mine: dict[str, str]) -> dict:
    """What `out` records as its owner: the role, the data file and the whole config."""
    return {"role": mine["role"], "data": str(Path(mine["data"]).resolve()), "config": cfg.to_dict()}


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
    p = cli.parser("launch.train", "Fine-tune a role (generator/extender) on prompt/response records.")
    p.add_argument("--force", action="store_true", help="take over an out= directory of another command")
    args = cli.parse(p, argv)
    with cli.user_errors():
        mine, args.overrides = split_script_args(args.overrides)
        cfg = cli.config(args)
        out = check_dir(mine["out"], [mine["data"], *filter(None, [cfg.model.path])], what="out=")
        run_dir.check(out, owner(cfg, mine), args.force, name=OWNER_FILE)
        read_records(mine["data"])  # a bad data file fails now, before any weight is read
        model_cfg, params, tok, mesh = load_base(cfg)

    def claim() -> None:
        run_dir.claim(out, owner(cfg, mine), args.force, name=OWNER_FILE)

    try:
        with cli.resumable(out):
            artifact = train(cfg, mine["role"], Path(mine["data"]), out, params, model_cfg, tok, mesh,
                             claim=claim)
    except (TrainingError, DataError) as e:
        cli.fail(str(e))
    print(artifact)


if __name__ == "__main__":
    main()

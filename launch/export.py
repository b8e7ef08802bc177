"""Convert model directories, optionally merging a trained LoRA adapter into the weights.

    python -m launch.export --model DIR --output DIR [--adapter ADAPTER_DIR]
        [--format hf|orbax|peft] [--dtype float32|bfloat16] [--config FILE] [key=value ...]

Required: --output, and --model unless the config names `model.path` (the only config
key this script reads). --model may be a hub id (org/name) found in the local HF cache.

The source is a Hugging Face checkpoint or one of our Orbax params directories (told
apart by its `params/` folder). `--format hf` (default) writes sharded safetensors that
transformers and vLLM load; `--format orbax` writes our params directory, which
restores faster onto a mesh; `--format peft` writes only the --adapter, as a PEFT
adapter (adapter_config.json + adapter_model.safetensors) for peft or vLLM to load onto
the unchanged --model base. Tokenizer files are copied along. Weights are sharded over
all devices while converting, so a model larger than one device still converts. An
existing --output is replaced only if it holds nothing but what this export writes.
A `gs://` --output is written in a local temporary directory first, then uploaded file
by file, the index and config last, so a reader that finds them finds every shard.
The older spellings --from and --to still work, with a hint.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from launch import cli
from selflengthen_jax.checkpoint import orbax_params
from selflengthen_jax.checkpoint.hf_export import WRITES as HF_WRITES, export_hf
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.checkpoint.hub import is_hub_id, resolve_model
from selflengthen_jax.checkpoint.loader import param_shardings
from selflengthen_jax.checkpoint.peft_adapter import PEFT_WRITES, export_peft
from selflengthen_jax.config import MeshSection
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import check_compatible, merge_lora
from selflengthen_jax.models.transformer import Params
from selflengthen_jax.outputs import check_dir, check_replaceable
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.paths import AnyPath, is_remote, upload_tree
from selflengthen_jax.training.checkpointing import load_adapter

DTYPES = ("float32", "bfloat16")
WRITES = {"hf": HF_WRITES, "orbax": orbax_params.WRITES, "peft": PEFT_WRITES}


def source_dtype(model_dir: Path) -> str:
    """The dtype config.json declares (HF: torch_dtype or dtype), if we support it."""
    path = model_dir / "config.json"
    if not path.is_file():
        return "float32"  # read_config reports the missing file
    hf = json.loads(path.read_text(encoding="utf-8"))
    declared = hf.get("torch_dtype") or hf.get("dtype")
    return declared if declared in DTYPES else "float32"


def load_any(model_dir: Path, dtype: str, mesh: Mesh) -> tuple[ModelConfig, Params]:
    """Config and params of a HF or Orbax directory, sharded (fsdp) over the mesh."""
    cfg = read_config(model_dir, param_dtype=dtype)
    shardings = param_shardings(cfg, mesh, strategy_rules("fsdp"))
    if orbax_params.is_params_dir(model_dir):
        return cfg, orbax_params.load_params(model_dir, cfg, shardings)
    return cfg, load_params(model_dir, cfg, shardings)


def with_adapter(params: Params, cfg: ModelConfig, adapter_dir: Path, mesh: Mesh) -> Params:
    adapters, meta = load_adapter(adapter_dir)
    check_compatible(cfg, adapters)
    adapters = jax.device_put(adapters, NamedSharding(mesh, P()))
    return merge_lora(params, adapters, float(meta["alpha"]) / float(meta["rank"]))


def peft_from(base: str, model_dir: Path, adapter_dir: Path, dst: Path) -> Path:
    """The adapter in PEFT's format, checked against the base's shapes; no base weight is read."""
    adapters, meta = load_adapter(adapter_dir)
    check_compatible(read_config(model_dir), adapters)
    return export_peft(dst, adapters, int(meta["rank"]), meta["alpha"], base, meta.get("dropout", 0.0))


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.export", __doc__)
    p.add_argument("--model", help="HF checkpoint, our params directory, or a hub id from the HF cache "
                                   "(default: model.path)")
    p.add_argument("--output", required=True,
                   help="output directory (an earlier export there is replaced; anything else is refused)")
    p.add_argument("--adapter", help="adapter directory from launch.train (merged into the weights, "
                                     "or with --format peft written alone)")
    p.add_argument("--format", choices=tuple(WRITES), default="hf",
                   help="hf: merged safetensors (default); orbax: our params directory; "
                        "peft: the adapter alone (needs --adapter)")
    p.add_argument("--dtype", choices=DTYPES, help="weight dtype to write (default: the source's)")
    args = cli.parse(p, argv, old_flags={"--from": "--model", "--to": "--output"})
    with cli.user_errors():
        cfg = cli.config(args, cli.flag_overrides({"model.path": args.model}))  # --print-config shows it
        model = args.model or cfg.model.path  # a hub id named by --model stays one (the PEFT base)
        if not model:
            raise ValueError("--model is required (or model.path in --config): the checkpoint to export")
        src = Path(resolve_model(model))  # a hub id: its cached snapshot
        dst = check_dir(args.output, [src, *filter(None, [args.adapter])], what="--output")
        check_replaceable(dst, WRITES[args.format])
        if args.format == "peft":
            if not args.adapter:
                raise ValueError("--format peft exports an adapter: pass --adapter DIR")
            base = model if is_hub_id(model) else str(src.absolute())  # a hub id stays one
            with staged(dst) as local:
                written = peft_from(base, src, Path(args.adapter), local)
            print(dst if is_remote(dst) else written)
            return
        mesh = make_mesh(MeshSection(data=1, fsdp=-1))
        cfg, params = load_any(src, args.dtype or source_dtype(src), mesh)
        if args.adapter:
            params = with_adapter(params, cfg, Path(args.adapter), mesh)
    with cli.resumable(args.output, saved=False), staged(dst) as local:
        if args.format == "hf":
            export_hf(params, cfg, local, tokenizer_dir=src)
        else:
            orbax_params.save_params(local, params, cfg, tokenizer_dir=src)
    print(dst)


@contextlib.contextmanager
def staged(dst: AnyPath) -> Iterator[Path]:
    """Where the writers write: `dst` itself on local disk; for a bucket a local
    temporary directory, uploaded over `dst` when the block ends (only what an earlier
    export left there is removed first, as `check_replaceable` allowed)."""
    if not is_remote(dst):
        yield Path(dst)
        return
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        local = Path(tmp) / "out"
        yield local
        if jax.process_index() == 0:
            if dst.exists():
                dst.rmtree()
            upload_tree(local, dst, last=("model.safetensors.index.json", "config.json"))


if __name__ == "__main__":
    cli.program(main)

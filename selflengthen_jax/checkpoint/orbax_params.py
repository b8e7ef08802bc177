"""This project's own model directory: Orbax params + HF config.json + tokenizer files.

Restoring Orbax arrays straight onto a mesh is faster than re-reading safetensors and
keeps our stacked layout; the HF config.json (same schema as a HF checkpoint) and the
tokenizer files make the directory self-describing. Written under a temporary name
and renamed when complete, like `export_hf`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import SingleDeviceSharding

from selflengthen_jax.checkpoint.hf_export import TOKENIZER_FILES, hf_config
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params, abstract_model
from selflengthen_jax.outputs import fresh_partial, replace_dir

PARAMS_DIR = "params"
# Everything `save_params` puts in its directory (Orbax may leave `params.*` temporaries).
WRITES = (f"{PARAMS_DIR}*", "config.json", *TOKENIZER_FILES)


def is_params_dir(path: str | Path) -> bool:
    """True for a directory written by `save_params` (as opposed to a HF checkpoint)."""
    return (Path(path) / PARAMS_DIR).is_dir() and (Path(path) / "config.json").is_file()


def save_params(out_dir: str | Path, params: Params, cfg: ModelConfig,
                tokenizer_dir: str | Path | None = None) -> Path:
    """Write params (cast to cfg.param_dtype), config.json and the tokenizer files. An
    existing `out_dir` is replaced only if it holds nothing but what this writes."""
    out = Path(out_dir).absolute()
    tmp = out.with_name(out.name + ".partial")
    if jax.process_index() == 0:
        fresh_partial(out, WRITES)
    multihost_utils.sync_global_devices(f"save_params:{tmp}")
    dtype = jnp.dtype(cfg.param_dtype)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp / PARAMS_DIR, jax.tree.map(lambda x: x.astype(dtype), params))
        ckpt.wait_until_finished()
    if jax.process_index() == 0:
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tokenizer_dir), indent=2))
        for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        replace_dir(tmp, out, WRITES)
    multihost_utils.sync_global_devices(f"save_params:{out}")
    return out


def load_params(model_dir: str | Path, cfg: ModelConfig, shardings: Params | None = None) -> Params:
    """Params in cfg.param_dtype on `shardings` (default: this process's first device)."""
    shapes = nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()
    if shardings is None:
        device = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    target: Any = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                               shapes, shardings)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(Path(model_dir).absolute() / PARAMS_DIR, target)

"""Our LoRA adapters as PEFT adapters: `adapter_config.json` + `adapter_model.safetensors`.

That pair is what `peft.PeftModel.from_pretrained` and vLLM's `--lora-modules` load onto
the unchanged Hugging Face base, so a role can be served without a merged copy of the
model. The layouts line up as follows. We compute `x @ A @ B * alpha / r` with A
[in, r] and B [r, out] per layer (see models/lora.py); PEFT holds torch Linear weights,
`lora_A.weight` [r, in] and `lora_B.weight` [out, r], and scales by `lora_alpha / r`
(no rsLoRA). So PEFT's A and B are our A and B transposed, per layer, under the
projection's HF module name, e.g.
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`. The flattened
input/output dims of a projection are ordered as in HF's weight (see hf_layout.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from selflengthen_jax.checkpoint.hf_layout import LAYER, PROJECTION_MODULES
from selflengthen_jax.checkpoint.safetensors_io import save_file
from selflengthen_jax.outputs import fresh_partial, replace_dir

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WRITES = (PEFT_CONFIG, PEFT_WEIGHTS)  # all `export_peft` puts in its directory
PREFIX = "base_model.model."               # PeftModel -> LoraModel -> the HF model's own names


def peft_config(rank: int, alpha: float, targets: list[str], base_model: str,
                dropout: float = 0.0) -> dict[str, Any]:
    """The adapter_config.json of a plain LoRA on a causal LM (fields of peft's LoraConfig)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model, "revision": None, "inference_mode": True,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "bias": "none",
        "target_modules": sorted(PROJECTION_MODULES[t].split(".")[-1] for t in targets),
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def peft_tensors(adapters: Any, index: int = 0) -> dict[str, np.ndarray]:
    """Adapter `index` of our {projection: {a: [L, N, in, r], b: [L, N, r, out]}} as PEFT's
    state dict. Collective: every process must call it (the adapters may be sharded)."""
    host = multihost_utils.process_allgather(adapters, tiled=True)
    out: dict[str, np.ndarray] = {}
    for name, module in PROJECTION_MODULES.items():
        if name not in host:
            continue
        a, b = np.asarray(host[name]["a"])[:, index], np.asarray(host[name]["b"])[:, index]
        for i in range(a.shape[0]):
            key = PREFIX + LAYER.format(i=i) + module
            out[key + ".lora_A.weight"] = np.ascontiguousarray(a[i].T, dtype=np.float32)
            out[key + ".lora_B.weight"] = np.ascontiguousarray(b[i].T, dtype=np.float32)
    return out


def write_peft(directory: Any, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    """Put the two PEFT files into `directory` (a local one the caller renames into place,
    or a bucket folder, where each file is one object)."""
    save_file(tensors, directory / PEFT_WEIGHTS)
    (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))


def export_peft(out_dir: str | Path, adapters: Any, rank: int, alpha: float, base_model: str,
                dropout: float = 0.0) -> Path:
    """A PEFT adapter directory of its own; it appears complete or not at all, and an
    existing `out_dir` is replaced only if it holds nothing but `PEFT_WRITES`."""
    out = Path(out_dir).absolute()
    tensors = peft_tensors(adapters)
    if jax.process_index() == 0:
        tmp = fresh_partial(out, PEFT_WRITES)
        tmp.mkdir(parents=True)
        write_peft(tmp, tensors, peft_config(rank, alpha, list(adapters), base_model, dropout))
        replace_dir(tmp, out, PEFT_WRITES)
    return out

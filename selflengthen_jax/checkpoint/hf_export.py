"""Write params back as a Hugging Face checkpoint directory (sharded safetensors + index).

The result loads with `transformers.AutoModelForCausalLM.from_pretrained` and can be
served by vLLM; tokenizer and generation files are copied from the source directory, and
config.json carries the bos/eos ids. The export streams: host memory stays below one
output shard plus one tensor whatever the model's size (tests/checkpoint/
test_hf_export_memory.py measures it).
"""

from __future__ import annotations

import json
import math
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from selflengthen_jax.checkpoint.hf_layout import Mapping, leaf_mappings
from selflengthen_jax.checkpoint.safetensors_io import save_file
from selflengthen_jax.checkpoint.tokenizer import special_token_ids
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params
from selflengthen_jax.outputs import fresh_partial, replace_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json",
                   "chat_template.jinja", "added_tokens.json")
# Everything `export_hf` puts in its directory: only such a directory is ever replaced.
WRITES = ("config.json", "model-*-of-*.safetensors", "part-*.safetensors",
          "model.safetensors.index.json", *TOKENIZER_FILES)


@partial(jax.jit, static_argnums=(2, 3))
def _hf_piece(leaf: jax.Array, layer: jax.Array, m: Mapping, dtype: jnp.dtype) -> jax.Array:
    """One HF tensor of `leaf` (layer `layer` if stacked), in HF layout and `dtype`, on device."""
    t = jax.lax.dynamic_index_in_dim(leaf, layer, 0, keepdims=False) if m.stacked else leaf
    t = t.astype(dtype)
    if m.n_in < 0:
        return t.reshape(-1) if t.ndim > 1 and m.stacked else t
    return t.reshape(math.prod(t.shape[:m.n_in]), -1).T


def hf_tensors(params: Params, cfg: ModelConfig) -> Iterator[tuple[str, int, Callable[[], np.ndarray]]]:
    """(HF name, bytes, fetch) per HF tensor; `fetch()` gathers just that tensor to the host.

    Only one layer's slice of a stacked leaf is ever gathered, cut and transposed on the
    devices, so the host holds one HF tensor at a time. `fetch` is collective: every
    process calls it, in this order.
    """
    dtype = jnp.dtype(cfg.param_dtype)
    for key, m in leaf_mappings(cfg).items():
        leaf = params
        for k in key:
            leaf = leaf[k]
        layers = range(leaf.shape[0]) if m.stacked else [0]
        nbytes = math.prod(leaf.shape[1:] if m.stacked else leaf.shape) * dtype.itemsize
        for i in layers:
            def fetch(leaf: jax.Array = leaf, i: int = i, m: Mapping = m) -> np.ndarray:
                piece = _hf_piece(leaf, jnp.int32(i), m, dtype)
                return np.ascontiguousarray(multihost_utils.process_allgather(piece, tiled=True))
            yield m.hf_name.format(i=i), nbytes, fetch


def hf_config(cfg: ModelConfig, tokenizer_dir: str | Path | None) -> dict[str, Any]:
    """config.json: the architecture plus bos/eos ids (from `tokenizer_dir`'s generation config,
    config.json and tokenizer), which transformers and vLLM otherwise default to 1/2."""
    return {**cfg.to_hf(), **special_token_ids(tokenizer_dir)}


def export_hf(params: Params, cfg: ModelConfig, out_dir: str | Path,
              tokenizer_dir: str | Path | None = None, max_shard_bytes: int = 2 << 30) -> Path:
    """Write config.json, model-0000k-of-0000n.safetensors + index, and tokenizer files.

    Shards are written as they fill, each tensor gathered just before it joins its shard,
    so a host holds at most one shard plus one tensor, never the model or a stacked leaf. Only
    process 0 writes; the directory is filled under a temporary name and renamed at the
    end, so a crash never leaves a directory that looks complete. An existing `out_dir`
    is replaced only if it holds nothing but what this function writes (`WRITES`).
    """
    out = Path(out_dir)
    is_writer = jax.process_index() == 0
    tmp = out.absolute().with_name(out.name + ".partial")
    if is_writer:
        fresh_partial(out, WRITES).mkdir(parents=True)
    files: list[list[str]] = []   # tensor names per shard, written as soon as a shard fills
    shard: dict[str, np.ndarray] = {}
    total = shard_start = 0

    def flush() -> None:
        if shard and is_writer:
            save_file(shard, tmp / f"part-{len(files):05d}.safetensors")
        files.append(list(shard))
        shard.clear()

    for name, nbytes, fetch in hf_tensors(params, cfg):
        if shard and total - shard_start + nbytes > max_shard_bytes:
            flush()  # before fetching: the host holds one shard plus one tensor at most
            shard_start = total
        shard[name] = fetch()
        total += nbytes
    flush()
    if not is_writer:
        return out
    weight_map = {}
    for k, names in enumerate(files):
        fname = f"model-{k + 1:05d}-of-{len(files):05d}.safetensors"
        (tmp / f"part-{k:05d}.safetensors").rename(tmp / fname)
        weight_map.update({n: fname for n in names})
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tokenizer_dir), indent=2))
    if tokenizer_dir is not None:
        for f in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / f
            if src.is_file():
                shutil.copy2(src, tmp / f)
    replace_dir(tmp, out, WRITES)
    return out

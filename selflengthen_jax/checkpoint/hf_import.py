"""Load a Hugging Face checkpoint directory (local or gs://) straight into (sharded) JAX arrays.

Every array is built with `jax.make_array_from_callback`: each device's shard is read
as the safetensors slice it needs, so with a mesh no host ever materialises a whole
tensor it does not own. Pickled `.bin` checkpoints are refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selflengthen_jax.checkpoint.bucket_source import open_safetensors
from selflengthen_jax.checkpoint.hf_layout import Mapping, leaf_mappings
from selflengthen_jax.checkpoint.safetensors_io import TensorSource
from selflengthen_jax.paths import AnyPath
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params, abstract_model


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or holds something we will not load."""


def read_config(model_dir: str | AnyPath, **dtypes: str) -> ModelConfig:
    path = as_path(model_dir) / "config.json"
    if not as_path(model_dir).is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json (not a Hugging Face checkpoint directory)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    return ModelConfig.from_hf(hf, **dtypes)


def weight_files(model_dir: str | AnyPath) -> dict[str, AnyPath]:
    """HF tensor name -> the safetensors file holding it; refuses pickle-only checkpoints."""
    d = as_path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise CheckpointError(f"{index} is not a valid safetensors index (needs 'weight_map')") from None
        missing = sorted({f for f in weight_map.values() if not (d / f).is_file()})
        if missing:
            raise CheckpointError(f"{index} names shard files that are missing: {', '.join(missing)}")
        return {name: d / f for name, f in weight_map.items()}
    single = d / "model.safetensors"
    if single.is_file():
        return {name: single for name in open_safetensors(single).keys()}
    if list(d.glob("*.bin")) or list(d.glob("*.pt")) or list(d.glob("*.pth")):
        raise CheckpointError(
            f"{d} holds only PyTorch pickle weights (*.bin/*.pt); this project never unpickles. "
            "Convert them to safetensors first (e.g. save_pretrained(..., safe_serialization=True)).")
    raise CheckpointError(f"{d} has no weights: expected model.safetensors or model.safetensors.index.json")


def _group_slice(index: tuple[slice, ...], dims: tuple[int, ...]) -> tuple[slice, tuple[slice, ...]]:
    """Slices over `dims` (flattened into one HF axis) -> a contiguous HF range + the rest.

    The range covers whole inner blocks; the remaining slices are applied after reading.
    """
    inner = math.prod(dims[1:])
    first = index[0].indices(dims[0])
    return slice(first[0] * inner, first[1] * inner), index[1:]


def _read_leaf_slice(files: dict[Path, TensorSource], weight_map: dict[str, Path],
                     m: Mapping, shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Read the part `index` of our leaf (of full `shape`) from the HF tensors."""
    layer_range = range(*index[0].indices(shape[0])) if m.stacked else [None]
    per_layer_shape = shape[1:] if m.stacked else shape
    per_layer_index = index[1:] if m.stacked else index
    out = []
    for i in layer_range:
        name = m.hf_name.format(i=i)
        if name not in weight_map:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        src = files[weight_map[name]]
        if m.n_in < 0 and len(src.shape(name)) == len(per_layer_shape):  # stored as is
            part = src.read(name, per_layer_index)
        elif m.n_in < 0:  # flattened (biases: [H*Dh] -> [H, Dh]): whole inner blocks, then the rest
            flat, rest = _group_slice(per_layer_index, per_layer_shape)
            block = src.read(name, (flat,)).reshape(-1, *per_layer_shape[1:])
            part = block[(slice(None),) + rest]
        else:
            in_dims, out_dims = per_layer_shape[:m.n_in], per_layer_shape[m.n_in:]
            in_idx, out_idx = per_layer_index[:m.n_in], per_layer_index[m.n_in:]
            rows, out_rest = _group_slice(out_idx, out_dims)
            cols, in_rest = _group_slice(in_idx, in_dims)
            block = src.read(name, (rows, cols)).T      # [in_flat, out_flat]
            n_in0 = len(range(*in_idx[0].indices(in_dims[0])))
            n_out0 = len(range(*out_idx[0].indices(out_dims[0])))
            block = block.reshape(n_in0, *in_dims[1:], n_out0, *out_dims[1:])
            rest = (slice(None),) + in_rest + (slice(None),) + out_rest
            part = block[rest]
        out.append(part)
    return np.stack(out) if m.stacked else out[0]


def load_params(model_dir: str | Path, cfg: ModelConfig,
                shardings: Params | None = None) -> Params:
    """Read all params; `shardings` (a params-shaped tree of NamedShardings) places them."""
    weight_map = weight_files(model_dir)
    files = {p: open_safetensors(p) for p in set(weight_map.values())}
    mappings = leaf_mappings(cfg)
    abstract = nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()
    dtype = jnp.dtype(cfg.param_dtype)

    def load(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct, sharding: Any) -> jax.Array:
        key = tuple(p.key for p in path)
        m = mappings[key]
        shape = tuple(leaf.shape)
        _check_shape(files, weight_map, m, shape)
        read: Callable[[tuple[slice, ...]], np.ndarray] = lambda idx: _read_leaf_slice(  # noqa: E731
            files, weight_map, m, shape, _full(idx, shape)).astype(dtype)
        if sharding is None:
            return jnp.asarray(read(tuple(slice(None) for _ in shape)))
        return jax.make_array_from_callback(shape, sharding, read)

    if shardings is None:
        return jax.tree_util.tree_map_with_path(lambda p, l: load(p, l, None), abstract)
    return jax.tree_util.tree_map_with_path(load, abstract, shardings)


def _full(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def _check_shape(files: dict[Path, TensorSource], weight_map: dict[str, Path],
                 m: Mapping, shape: tuple[int, ...]) -> None:
    name = m.hf_name.format(i=0)
    if name not in weight_map:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}")
    got = files[weight_map[name]].shape(name)
    per_layer = shape[1:] if m.stacked else shape
    want = (math.prod(per_layer),) if m.n_in < 0 and len(got) == 1 else per_layer
    if m.n_in >= 0:
        want = (math.prod(per_layer[m.n_in:]), math.prod(per_layer[:m.n_in]))
    if tuple(got) != tuple(want):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(got)}, config.json implies {tuple(want)}")

"""Low-rank adapters (LoRA) in the layout `forward` consumes, plus merging and stacking.

An adapter set maps a projection name to `{"a": [L, N, in, r], "b": [L, N, r, out]}`:
layers first (scanned with the base layers), then N stacked adapters, then the
projection's flattened input/output dims. Training uses N = 1; the generation engine
stacks several trained adapters (index 0 = none) so rows of one batch can use
different adapters over a single copy of the base weights.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import PROJECTIONS, Params

Adapters = dict[str, dict[str, jax.Array]]

# Logical names of each projection's (flattened input, flattened output) dim: the name of
# the leading dim of the group, so a flattened [H*Dh] shards like the param's [H, Dh].
_IO_AXES = {
    "wq": ("embed", "heads"), "wk": ("embed", "kv_heads"), "wv": ("embed", "kv_heads"),
    "wo": ("heads", "embed"), "w_gate": ("embed", "mlp"), "w_up": ("embed", "mlp"),
    "w_down": ("mlp", "embed"),
}


def projection_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(flattened input, flattened output) size of every adaptable projection."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"wq": (D, q), "wk": (D, kv), "wv": (D, kv), "wo": (q, D),
            "w_gate": (D, F), "w_up": (D, F), "w_down": (F, D)}


def _check_targets(targets: Sequence[str]) -> None:
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {', '.join(PROJECTIONS)}")


def init_lora(cfg: ModelConfig, rank: int, seed: int,
              targets: Sequence[str] = PROJECTIONS) -> Adapters:
    """Fresh float32 adapters: A uniform in ±1/sqrt(in) (PEFT's kaiming-uniform), B zero.

    B = 0 makes a fresh adapter an exact no-op, so training starts from the base model.
    """
    _check_targets(targets)
    return _init_lora(cfg, rank, tuple(targets), seed)


@partial(jax.jit, static_argnums=(0, 1, 2))  # one compile for all projections' draws
def _init_lora(cfg: ModelConfig, rank: int, targets: tuple[str, ...], seed: jax.Array) -> Adapters:
    dims = projection_dims(cfg)
    key = jax.random.key(seed)
    out: Adapters = {}
    for i, name in enumerate(t for t in PROJECTIONS if t in targets):
        d_in, d_out = dims[name]
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(jax.random.fold_in(key, i), (cfg.num_layers, 1, d_in, rank),
                               jnp.float32, -bound, bound)
        out[name] = {"a": a, "b": jnp.zeros((cfg.num_layers, 1, rank, d_out), jnp.float32)}
    return out


def lora_logical_axes(targets: Sequence[str] = PROJECTIONS) -> dict[str, dict[str, tuple]]:
    """Logical axis names of each adapter leaf (layers, adapters, in/rank, rank/out)."""
    _check_targets(targets)
    return {name: {"a": ("layers", "adapters", _IO_AXES[name][0], "lora_rank"),
                   "b": ("layers", "adapters", "lora_rank", _IO_AXES[name][1])}
            for name in PROJECTIONS if name in targets}


def lora_rank(adapters: Adapters) -> int:
    return next(iter(adapters.values()))["a"].shape[-1]


def check_compatible(cfg: ModelConfig, adapters: Adapters) -> None:
    """Raise ValueError naming the first adapter leaf whose shape does not fit `cfg`."""
    dims = projection_dims(cfg)
    for name, ad in adapters.items():
        if name not in dims:
            raise ValueError(f"adapter has unknown projection {name!r}")
        d_in, d_out = dims[name]
        a, b = ad["a"].shape, ad["b"].shape
        if (a[0], a[2], b[0], b[3]) != (cfg.num_layers, d_in, cfg.num_layers, d_out):
            raise ValueError(f"adapter {name} has shapes a{tuple(a)} b{tuple(b)}, but the model needs "
                             f"[{cfg.num_layers}, n, {d_in}, r] and [{cfg.num_layers}, n, r, {d_out}]")


def merge_lora(params: Params, adapters: Adapters, scale: float, index: int = 0) -> Params:
    """Params with adapter `index` folded in (W += scale * A @ B), e.g. for HF export.

    The sum is formed in float32 and cast back to each weight's own dtype.
    """
    layers = dict(params["layers"])
    for name, ad in adapters.items():
        w = layers[name]
        delta = jnp.einsum("lir,lro->lio", ad["a"][:, index].astype(jnp.float32),
                           ad["b"][:, index].astype(jnp.float32))
        layers[name] = (w.astype(jnp.float32) + scale * delta.reshape(w.shape)).astype(w.dtype)
    return {**params, "layers": layers}


def _pad_rank(x: jax.Array, rank: int, axis: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, rank - x.shape[axis])
    return jnp.pad(x, pad)


def stack_adapters(entries: Sequence[tuple[Adapters, float]]) -> Adapters:
    """Stack (adapters, scale) pairs for mixed-adapter batches; run with lora_scale=1.0.

    Index 0 of the result is an all-zero adapter (the base model); entry i occupies
    index i + 1. Each entry's scale is folded into its B, ranks are zero-padded to the
    largest, and a projection an entry does not adapt gets zeros for that entry.
    """
    if not entries:
        raise ValueError("stack_adapters needs at least one adapter")
    rank = max(lora_rank(ad) for ad, _ in entries)
    names = [p for p in PROJECTIONS if any(p in ad for ad, _ in entries)]
    out: Adapters = {}
    for name in names:
        like = next(ad[name] for ad, _ in entries if name in ad)
        L, _, d_in, _ = like["a"].shape
        d_out = like["b"].shape[-1]
        a_parts = [jnp.zeros((L, 1, d_in, rank), jnp.float32)]
        b_parts = [jnp.zeros((L, 1, rank, d_out), jnp.float32)]
        for ad, scale in entries:
            n = next(iter(ad.values()))["a"].shape[1]
            if name in ad:
                a_parts.append(_pad_rank(ad[name]["a"].astype(jnp.float32), rank, 3))
                b_parts.append(_pad_rank(scale * ad[name]["b"].astype(jnp.float32), rank, 2))
            else:
                a_parts.append(jnp.zeros((L, n, d_in, rank), jnp.float32))
                b_parts.append(jnp.zeros((L, n, rank, d_out), jnp.float32))
        out[name] = {"a": jnp.concatenate(a_parts, 1), "b": jnp.concatenate(b_parts, 1)}
    return out


def adapter_shapes(cfg: ModelConfig, rank: int, targets: Sequence[str] = PROJECTIONS) -> Any:
    """Shape/dtype-only adapters (for restoring a checkpoint onto shardings)."""
    return jax.eval_shape(lambda: init_lora(cfg, rank, 0, targets))

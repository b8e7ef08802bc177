"""AdamW with linear warmup and cosine decay, clipped by global norm (as HF Trainer does).

Trainable weights are kept in float32 (master weights) whatever the compute dtype:
`forward` casts them to `compute_dtype` per use, so bf16 compute never rounds away
small Adam updates. Gradient accumulation happens inside the step (step.py), so the
optimizer sees one summed gradient per step and its state holds no extra buffers.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from selflengthen_jax.config import TrainSection

# Excluded from weight decay, as HF Trainer excludes LayerNorm weights and biases.
NO_DECAY = frozenset({"attn_norm", "mlp_norm", "final_norm", "bq", "bk", "bv"})


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_schedule(peak: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """0 -> peak linearly over the warmup steps, then cosine down to 0 at `total_steps`."""
    warm = warmup_steps(total_steps, warmup_ratio)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warm, max(total_steps, warm + 1), 0.0)


def decay_mask(tree: Any) -> Any:
    """True for leaves that get weight decay (matrices, embeddings, adapters)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY, tree)


def make_optimizer(train: TrainSection, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The update rule and its learning-rate schedule (also reported in metrics)."""
    schedule = lr_schedule(train.learning_rate, total_steps, train.warmup_ratio)
    adamw = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=train.weight_decay, mask=decay_mask)
    if train.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(train.max_grad_norm), adamw), schedule
    return adamw, schedule


def to_master(params: Any) -> Any:
    """Float32 copies of floating-point leaves (master weights for full fine-tuning)."""
    return jax.tree.map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

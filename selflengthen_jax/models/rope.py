"""Rotary position embeddings, including Llama 3's frequency-dependent scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from selflengthen_jax.models.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Per-pair rotation frequencies; Llama 3 scaling slows only the low frequencies.

    Wavelengths longer than original_max/low_freq_factor are divided by `factor`,
    those shorter than original_max/high_freq_factor are kept, and the band between
    is interpolated smoothly.
    """
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv.astype(np.float32)
    wavelen = 2 * math.pi / inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    interpolated = (1 - smooth) * inv / s.factor + smooth * inv
    scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(mid, interpolated, scaled).astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: jnp.ndarray) -> jnp.ndarray:
    """Rotate x [batch, seq, heads, head_dim] by positions [batch, seq] (half-split layout)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, s, d/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)

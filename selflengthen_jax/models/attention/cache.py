"""The KV cache and the layouts it can be stored in; each attention backend reads one.

`KVCache` is the carried pytree (keys, values, every layer); a `CacheLayout` is the
static description of how those arrays are laid out, and the only code that indexes
them. The engine, the planner and the rehearsal ask the layout for shapes and logical
axes, so none of them knows which layout a platform uses.

* `transposed` (CPU): k [layers, slots, kv, head_dim, T], v [layers, slots, kv, T, head_dim].
  Keys transposed so that both products of XLA:CPU decode attention read their cache
  block as a plain [in, out] matrix (a decode step at 8k positions took about a quarter
  less time than with [T, head_dim] keys).
* `paged` (accelerators): k and v [kv, layers, slots, T, head_dim], head_dim last, so a
  one-token write is one row, and the layers × slots × T axes reshape for free into the
  [kv, pages, page_size, head_dim] pages of the Pallas paged-attention kernel (each slot
  owns its contiguous pages: the page table is the identity). Per-slot lengths are the
  decode state's `pos`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from selflengthen_jax.models.config import ModelConfig

CACHE_BLOCK = 256  # cache positions per block: the XLA path's read block, the cache length's unit


class KVCache(NamedTuple):
    """Keys and values of every layer and slot, in some `CacheLayout`."""

    k: jnp.ndarray
    v: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """How a `KVCache` is stored: `transposed` (CPU) or `paged` (TPU/GPU)."""

    kind: str = "transposed"
    page_size: int = 128          # paged: positions per page (divides CACHE_BLOCK)

    def __post_init__(self):
        if self.kind not in ("transposed", "paged"):
            raise ValueError(f"unknown cache layout {self.kind!r}; known: transposed, paged")

    # -- shapes and axes (for shardings and the planner) ------------------------------------
    def axes(self) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
        """Logical axis names of (k, v), in the order of `shapes`."""
        if self.kind == "paged":
            names = ("kv_heads", "layers", "batch", None, "head_dim")
            return names, names
        return (("layers", "batch", "kv_heads", "head_dim", None),
                ("layers", "batch", "kv_heads", None, "head_dim"))

    def shapes(self, cfg: ModelConfig, slots: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        L, K, D = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
        if self.kind == "paged":
            return (K, L, slots, length, D), (K, L, slots, length, D)
        return (L, slots, K, D, length), (L, slots, K, length, D)

    def zeros(self, cfg: ModelConfig, slots: int, length: int, dtype: Any) -> KVCache:
        k_shape, v_shape = self.shapes(cfg, slots, length)
        return KVCache(jnp.zeros(k_shape, dtype), jnp.zeros(v_shape, dtype))

    def length(self, cache: KVCache) -> int:
        """Allocated positions per slot."""
        return cache.v.shape[3]

    def slots(self, cache: KVCache) -> int:
        return cache.v.shape[2] if self.kind == "paged" else cache.v.shape[1]

    # -- writes ----------------------------------------------------------------------------
    def stack_new(self, k: jnp.ndarray, v: jnp.ndarray) -> KVCache:
        """A prefill's keys/values, k/v [layers, b, s, kv, d], as a cache of length s."""
        if self.kind == "paged":
            return KVCache(k.transpose(3, 0, 1, 2, 4), v.transpose(3, 0, 1, 2, 4))
        return KVCache(k.transpose(0, 1, 3, 4, 2), v.transpose(0, 1, 3, 2, 4))

    def write(self, cache: KVCache, layer: Any, q_index: jnp.ndarray, k: jnp.ndarray,
              v: jnp.ndarray, slots: jnp.ndarray | None = None) -> KVCache:
        """Write one layer's new k/v [b, s, kv, d] at positions q_index [b, s] of slots
        `slots` [b] (default: row i is slot i), in place; positions past the end and
        out-of-range slots are dropped."""
        b = k.shape[0]
        rows = (jnp.arange(b) if slots is None else slots)[:, None]  # with q_index: [b, s] leading
        ck, cv = cache
        if self.kind == "paged":
            # One write per KV head, each of [b, s, head_dim] rows: with the heads in one
            # update window, the TPU compiler lays the cache out heads-minor for the scatter
            # and then copies all of it into the paged kernel's layout at every step.
            for h in range(k.shape[2]):
                ck = ck.at[h, layer, rows, q_index].set(k[:, :, h].astype(ck.dtype), mode="drop")
                cv = cv.at[h, layer, rows, q_index].set(v[:, :, h].astype(cv.dtype), mode="drop")
            return KVCache(ck, cv)
        ck = ck.at[layer, rows, :, :, q_index].set(k.astype(ck.dtype), mode="drop")
        cv = cv.at[layer, rows, :, q_index].set(v.astype(cv.dtype), mode="drop")
        return KVCache(ck, cv)

    def insert(self, cache: KVCache, slot: jnp.ndarray, new: KVCache) -> KVCache:
        """Put the prefilled rows of `new` (length p <= the cache's) into slots `slot`
        (out-of-range slots are dropped)."""
        p = new.v.shape[3]
        ck, cv = cache
        if self.kind == "paged":
            return KVCache(ck.at[:, :, slot, :p].set(new.k.astype(ck.dtype), mode="drop"),
                           cv.at[:, :, slot, :p].set(new.v.astype(cv.dtype), mode="drop"))
        return KVCache(ck.at[:, slot, :, :, :p].set(new.k.astype(ck.dtype), mode="drop"),
                       cv.at[:, slot, :, :p].set(new.v.astype(cv.dtype), mode="drop"))

    def take(self, cache: KVCache, rows: jnp.ndarray) -> KVCache:
        """The cache of the given slots, in order."""
        if self.kind == "paged":
            return KVCache(cache.k[:, :, rows], cache.v[:, :, rows])
        return KVCache(cache.k[:, rows], cache.v[:, rows])

    def pad(self, cache: KVCache, extra: int) -> KVCache:
        """The cache with `extra` empty positions appended to every slot."""
        none = [(0, 0)] * 5
        if self.kind == "paged":
            at = none[:3] + [(0, extra), (0, 0)]
            return KVCache(jnp.pad(cache.k, at), jnp.pad(cache.v, at))
        return KVCache(jnp.pad(cache.k, none[:4] + [(0, extra)]), jnp.pad(cache.v, none[:3] + [(0, extra), (0, 0)]))

    # -- reads (the XLA path) ---------------------------------------------------------------
    def rows(self, cache: KVCache, layer: Any, slots: jnp.ndarray) -> KVCache:
        """One layer of slots `slots` [n] (clipped into range) as a one-layer cache of n
        slots, gathered once. A prompt piece's few rows attend over this: slicing blocks of
        every slot and picking the rows read them all, and with the slots sharded the TPU
        compiler kept a relaid-out copy of the whole cache for it (0.52 GiB of temp at a
        0.52 GiB cache, tiny preset, 256 slots x 8k; 3 MiB with this)."""
        ck, cv = cache
        rows = jnp.clip(slots, 0, self.slots(cache) - 1)
        if self.kind == "paged":
            return KVCache(ck[:, layer, rows][:, None], cv[:, layer, rows][:, None])
        return KVCache(ck[layer, rows][None], cv[layer, rows][None])

    def block(self, cache: KVCache, layer: Any, start: Any, size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Positions [start, start + size) of one layer of every slot (start + size <= the
        length): k [b, kv, d, size], v [b, kv, size, d]."""
        ck, cv = cache
        if self.kind == "paged":
            K, _, b, _, d = ck.shape
            kb = jax.lax.dynamic_slice(ck, (0, layer, 0, start, 0), (K, 1, b, size, d))[:, 0]  # [kv, b, size, d]
            vb = jax.lax.dynamic_slice(cv, (0, layer, 0, start, 0), (K, 1, b, size, d))[:, 0]
            return kb.transpose(1, 0, 3, 2), vb.transpose(1, 0, 2, 3)
        _, b, K, d, _ = ck.shape
        kb = jax.lax.dynamic_slice(ck, (layer, 0, 0, 0, start), (1, b, K, d, size))[0]
        vb = jax.lax.dynamic_slice(cv, (layer, 0, 0, start, 0), (1, b, K, size, d))[0]
        return kb, vb


TRANSPOSED = CacheLayout("transposed")
PAGED = CacheLayout("paged")

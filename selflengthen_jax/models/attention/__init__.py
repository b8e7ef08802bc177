"""Attention backends and the KV cache layout they read, chosen once per mesh.

A `Backend` is what `forward` is given: which kernel runs train/prefill attention
(`attention`), which runs attention over the cache (`cached`), and the `CacheLayout`
the cache is stored in. `choose` is the one place that maps a platform and the
`model.attention_impl` config key to a backend:

| impl     | train / prefill              | decode (1 token per slot)       | cache layout |
|----------|------------------------------|---------------------------------|--------------|
| xla      | causal query blocks (`xla`)  | block loop to the batch's max   | transposed on CPU, paged elsewhere |
| pallas   | splash attention (`splash`)  | TPU paged attention, per-slot length (`paged`) | paged |
| cudnn    | cuDNN fused (`cudnn`)        | GPU (Triton) paged attention, per-slot length (`paged`) | paged |
| auto     | pallas on TPU, cudnn on GPU, xla on CPU |                      |              |

On CPU, `pallas` runs the same kernels in Pallas interpret mode (slow; for tests).
The paged decode kernels need head_dim to be a multiple of 128 (TPU) or 16 (GPU); every
shipped model's is 128, and smaller heads decode on the XLA block loop over the same cache.
Prefill pieces and scoring (several new tokens over a cache) use the XLA block loop
in every backend. Pallas calls are not partitioned by XLA, so the backend carries the
mesh and the mesh axes of the batch and heads, and wraps its kernels in `shard_map`;
`forward` also pins its activations with them (`constrain`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from selflengthen_jax.models.attention import cudnn, paged, splash, xla
from selflengthen_jax.models.attention.cache import CACHE_BLOCK, PAGED, TRANSPOSED, CacheLayout, KVCache

IMPLS = ("auto", "xla", "pallas", "cudnn")
MAX_SEGMENTS = 64   # cuDNN: packed examples per row at most
DECODE_KERNEL = {"pallas": "tpu", "cudnn": "gpu"}   # each backend's paged decode kernel


@dataclasses.dataclass(frozen=True)
class Backend:
    """The attention kernels and cache layout of one mesh (hashable: a static jit argument)."""

    impl: str = "xla"                 # "xla", "pallas" or "cudnn" (resolved; never "auto")
    layout: CacheLayout = TRANSPOSED
    interpret: bool = False           # Pallas interpret mode (CPU)
    mesh: Any = None                  # activations are pinned to it; Pallas kernels shard_map over it
    batch_axes: Any = None            # mesh axes of the batch dim (None: replicated)
    head_axes: Any = None             # mesh axes of heads and kv heads (None: replicated)

    def _axes(self, batch: int, heads: int, kv_heads: int) -> tuple[Any, Any]:
        """The batch and head axes that divide these sizes (others replicate)."""
        fits = lambda axes, n: axes if axes is not None and n % _size(self.mesh, axes) == 0 else None  # noqa: E731
        heads_ok = fits(self.head_axes, heads) is not None and fits(self.head_axes, kv_heads) is not None
        return fits(self.batch_axes, batch), self.head_axes if heads_ok else None

    def constrain(self, x: jnp.ndarray, names: tuple[str | None, ...]) -> jnp.ndarray:
        """`x` pinned to the mesh by logical names ("batch", "heads"; others, such as seq
        and embed, replicated), so XLA keeps activations where the plan puts them rather
        than replicating a prefill's [rows, seq, ...] tensors. Identity without a mesh."""
        if self.mesh is None:
            return x
        axes = {"batch": self.batch_axes, "heads": self.head_axes}
        spec = [axes.get(n) if n and axes.get(n) is not None and dim % _size(self.mesh, axes[n]) == 0 else None
                for n, dim in zip(names, x.shape)]
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(*spec)))

    def attention(self, q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segment_ids: jnp.ndarray) -> jnp.ndarray:
        """Causal GQA within segments. q [b,s,h,d], k/v [b,s,kv,d], segment_ids [b,s] (0 = padding)."""
        if self.impl == "pallas":
            batch, heads = self._axes(q.shape[0], q.shape[2], k.shape[2])
            return splash.attention(q, k, v, segment_ids, mesh=self.mesh, batch_axes=batch, head_axes=heads,
                                    interpret=self.interpret)
        if self.impl == "cudnn":
            return cudnn.attention(q, k, v, segment_ids, max_segments=MAX_SEGMENTS)
        return xla.attention(q, k, v, segment_ids)

    def cached(self, q: jnp.ndarray, cache: KVCache, layer: Any, q_index: jnp.ndarray,
               slots: jnp.ndarray | None = None) -> jnp.ndarray:
        """New tokens q [b, s, h, d] at positions q_index [b, s] over one layer of the cache
        (already holding their own keys/values); row i reads slot `slots[i]` (default: i,
        every slot decoding)."""
        kernel = DECODE_KERNEL.get(self.impl)
        if kernel and slots is None and q.shape[1] == 1 and paged.supports(kernel, q.shape[-1]):
            batch, heads = self._axes(q.shape[0], q.shape[2], cache.k.shape[0])
            return paged.decode_attention(q, cache, layer, q_index, kernel=kernel, page_size=self.layout.page_size,
                                          mesh=self.mesh, batch_axes=batch, head_axes=heads,
                                          interpret=self.interpret)
        return xla.cached_attention(q, cache, self.layout, layer, q_index, read_block(self.layout.length(cache)), slots)

    # -- for the memory planner ---------------------------------------------------------------
    def score_entries(self, s: int) -> tuple[int, int]:
        """float32 attention scores per (row, head) of a length-s sequence: (the most alive
        at once while differentiating, those kept for the backward pass). The fused
        kernels hold theirs in on-chip memory only."""
        return xla.score_entries(s) if self.impl == "xla" else (0, 0)

    def backward_partial_positions(self, s: int) -> int:
        """Query positions of partial dq the backward writes per (row, head, head_dim),
        in the compute dtype (the fused splash backward: one dq per KV block); none elsewhere."""
        return splash.dq_partial_positions(s) if self.impl == "pallas" else 0

    def forward_score_entries(self, s: int) -> int:
        """float32 scores per (row, head) alive at once in a forward pass (prefill)."""
        return max((e - a) * e for a, e in xla.query_blocks(s)) if self.impl == "xla" else 0

    def piece_score_entries(self, s: int, cache_len: int) -> int:
        """float32 scores per (row, head) alive at once while a prompt piece of s tokens
        attends over its slot's cache: one block's worth (pieces always read the cache
        through the XLA path, whatever the backend)."""
        return s * read_block(cache_len)

    def decode_cache_copies(self, platform: str) -> int:
        """Extra copies of the KV cache the TPU compiler keeps inside the decode loop
        (measured with `--rehearse`): one on the XLA path, none with the paged kernel,
        which reads the carried cache in place (decode temp 26 MiB at 7B)."""
        return 1 if platform == "tpu" and self.impl == "xla" else 0


def read_block(cache_len: int) -> int:
    """Positions the XLA path reads the cache in per step of its loop: whole blocks that
    divide the allocated length."""
    return math.gcd(cache_len, CACHE_BLOCK)


def _size(mesh: Any, axes: Any) -> int:
    if mesh is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[n] for n in names)


def resolve(impl: str, platform: str) -> str:
    """The backend `auto` means on `platform` ("cpu", "gpu"/"cuda", "tpu")."""
    if impl not in IMPLS:
        raise ValueError(f"model.attention_impl={impl!r} is not known; choose one of {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    return {"tpu": "pallas", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")


def choose(impl: str, platform: str, mesh: Any = None, batch_axes: Any = None,
           head_axes: Any = None) -> Backend:
    """The backend for `model.attention_impl` on `platform`, its Pallas kernels sharded
    over `mesh` (batch over `batch_axes`, heads and kv heads over `head_axes`)."""
    name = resolve(impl, platform)
    if name == "cudnn" and platform not in ("gpu", "cuda"):
        raise ValueError(f"model.attention_impl=cudnn needs a GPU; this run's devices are {platform}")
    layout = TRANSPOSED if platform == "cpu" and name == "xla" else PAGED
    return Backend(name, layout, interpret=(name == "pallas" and platform != "tpu"),
                   mesh=mesh, batch_axes=batch_axes, head_axes=head_axes)


CPU = Backend()   # the XLA backend with the CPU layout, unsharded (tests, tools)
__all__ = ["Backend", "CacheLayout", "KVCache", "CACHE_BLOCK", "CPU", "IMPLS", "choose", "resolve"]

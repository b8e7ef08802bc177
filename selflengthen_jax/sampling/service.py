"""The one place launch scripts and the pipeline get an engine and sampling params from.

Everything an engine needs (mesh, sharding rules, dtypes, attention kernel, slot and
cache sizes) comes from the run config, so every entry point builds it the same way
and a config key means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from selflengthen_jax import compile_cache
from selflengthen_jax.checkpoint.hf_import import read_config
from selflengthen_jax.checkpoint.hub import resolve_model
from selflengthen_jax.checkpoint.loader import load_model, param_shardings
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import Config, ConfigError, EngineSection, SamplingSection, validate_for_model
from selflengthen_jax.models.attention.cache import KVCache
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import abstract_model
from selflengthen_jax.parallel.mesh import generation_mesh
from selflengthen_jax.parallel.rules import Rules, attention_backend, generation_rules
from selflengthen_jax.sampling.engine import Engine, cache_length, slot_state_shardings
from selflengthen_jax.sampling.request import SamplingParams


def build_engine(cfg: Config, model_path: str | None = None,
                 max_new_tokens: int | None = None) -> Engine:
    """Load `model_path` (default `cfg.model.path`; either may be a hub id) onto the generation mesh.

    `max_new_tokens` caps the engine's cache room for output: callers that know no
    request asks for more (a judge, a rewrite, a short test run) should not pay for a
    KV cache sized for the longest answers. Config problems that need the checkpoint's
    shape (heads vs the tensor axis) are raised before any weight is read.
    """
    path = resolve_model(model_path or cfg.model.path)  # a hub id: its local snapshot
    if not path:
        raise ConfigError("no model given: pass --model PATH (or a hub id) or set model.path")
    model_cfg = read_config(path, param_dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype)
    validate_for_model(cfg, model_cfg.num_heads)
    section = cfg.engine
    if max_new_tokens is not None:
        section = dataclasses.replace(section, max_new_tokens=min(section.max_new_tokens, max_new_tokens))
    mesh = generation_mesh(cfg.mesh)
    rules = generation_rules(cfg.mesh, jax.device_count(), jax.local_device_count())
    check_memory(model_cfg, section, mesh, rules, cfg.model.attention_impl)
    warn_replicated_kv_heads(model_cfg, section, mesh, rules, cfg.model.attention_impl)
    compile_cache.enable(cfg.compilation_cache)
    model = load_model(path, mesh, rules, cfg.model.param_dtype, cfg.model.compute_dtype)
    return Engine(model, section, mesh, rules, attention_impl=cfg.model.attention_impl)


def device_memory(device: jax.Device) -> int | None:
    """Bytes one device can hold: its allocator's limit, or on CPU its share of the
    host's memory; None when neither is known."""
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform != "cpu":
        return None
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    return host // max(1, jax.local_device_count())


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def _shard_bytes(shapes: Any, shardings: Any) -> int:
    """Bytes one device holds of a tree of shapes placed by `shardings`."""
    return sum(math.prod(sh.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))


def check_memory(model_cfg: ModelConfig, section: EngineSection, mesh: Mesh, rules: Rules,
                 attention_impl: str = "auto") -> None:
    """Refuse, before any weight is read, an engine whose weights and KV cache alone
    exceed a device's memory (their shard shapes on this mesh): e.g. engine.slots=10^8
    would otherwise fail with RESOURCE_EXHAUSTED after the whole model has loaded."""
    device = mesh.devices.flat[0]
    have = device_memory(device)
    if have is None:
        return
    params = nnx.state(abstract_model(model_cfg), nnx.Param).to_pure_dict()
    length = cache_length(section)
    attention = attention_backend(attention_impl, mesh, rules)
    cache = KVCache(*(jax.ShapeDtypeStruct(s, model_cfg.compute_dtype)
                      for s in attention.layout.shapes(model_cfg, section.slots, length)))
    state_sh = slot_state_shardings(model_cfg, section.slots, length, mesh, rules, attention)
    need = (_shard_bytes(params, param_shardings(model_cfg, mesh, rules)) + _shard_bytes(cache, state_sh.cache))
    if need > have:
        raise ConfigError(
            f"the engine needs {_gib(need)} per device for weights and "
            f"KV cache (engine.slots={section.slots}, cache {section.max_prefill_len}+"
            f"{section.max_new_tokens} tokens) but a device holds {_gib(have)}: lower engine.slots, "
            "engine.max_new_tokens or engine.max_prefill_len, or use more devices")


def kv_replication(model_cfg: ModelConfig, section: EngineSection, mesh: Mesh, rules: Rules,
                   attention_impl: str = "auto") -> str | None:
    """A warning when the axes `kv_heads` maps to do not divide the KV heads, naming what
    the replication costs per device (wk/wv and the KV cache held whole on every tensor
    shard); None when they divide (or nothing maps them)."""
    axes = rules.get("kv_heads")
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    t = math.prod(mesh.shape[n] for n in names)
    k = model_cfg.num_kv_heads
    if t == 1 or k % t == 0:
        return None
    length = cache_length(section)
    attention = attention_backend(attention_impl, mesh, rules)
    shapes = KVCache(*(jax.ShapeDtypeStruct(s, model_cfg.compute_dtype)
                       for s in attention.layout.shapes(model_cfg, section.slots, length)))
    held = _shard_bytes(shapes, slot_state_shardings(model_cfg, section.slots, length, mesh, rules, attention).cache)
    return (f"the tensor axis ({t} devices) does not divide the model's {k} KV heads: wk/wv and the KV "
            f"cache are replicated over it, {_gib(held)} of cache per device instead of {_gib(held // t)} "
            f"(pick mesh.tensor dividing {k}, or mesh.generation=training)")


def warn_replicated_kv_heads(*args: Any) -> None:
    """Log `kv_replication`'s warning at start-up, if any."""
    message = kv_replication(*args)
    if message:
        warnings.warn(message, stacklevel=2)


def check_model(path: str) -> None:
    """Cheap checks of a checkpoint (config, tokenizer) for scripts that load it only
    after other work, so a typo in its path fails at start-up, not hours later. A hub
    id is checked in its local snapshot (as `build_engine` will load it)."""
    path = resolve_model(path)
    read_config(path)
    load_tokenizer(path)


def sampling_params(section: SamplingSection, **overrides: object) -> SamplingParams:
    """The config's sampling section as request params; `overrides` (e.g. seed, greedy,
    max_new_tokens, stop) win. The YAML stop list becomes the tuple requests carry."""
    fields = {**dataclasses.asdict(section), **overrides}
    fields["stop"] = tuple(fields["stop"])
    return SamplingParams(**fields)

"""A random-weight model on a mesh, for benchmarking without a checkpoint.

Speed and memory do not depend on the weights' values, and a benchmark must run for a
72B architecture on a slice that holds no copy of its weights. The weights are drawn
on the devices, already sharded, from a hash of each element's global index: unlike
`init_params` (threefry, which takes XLA:CPU about ten seconds to compile per sharding)
this compiles in about a second, and every sharding of the same model gets bit-identical
weights, so strategies can be checked against each other token for token.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import transformers
from flax import nnx
from jax.sharding import Mesh
from tokenizers import Tokenizer, models

from selflengthen_jax.checkpoint.loader import LoadedModel, param_shardings
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params, abstract_model, logical_axes
from selflengthen_jax.parallel.rules import Rules

INIT_STD = 0.02  # as init_params: N(0, 0.02) matrices, unit norms


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser: neighbouring inputs give unrelated outputs."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_uniform(shape: tuple[int, ...], salt: int) -> jax.Array:
    """float32 in [-1, 1), a pure function of (salt, global index): sharding-invariant."""
    h = jnp.full(shape, salt, jnp.uint32)
    for axis in range(len(shape)):
        h = _mix(h ^ jax.lax.broadcasted_iota(jnp.uint32, shape, axis))
    return (h >> 8).astype(jnp.float32) * (2.0 / 2 ** 24) - 1.0


def random_params(cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0) -> Params:
    """Weights with init_params' scale (uniform, std 0.02; norms 1), sharded by `rules`."""
    shapes = nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()
    axes = logical_axes(cfg)
    leaves, treedef = jax.tree.flatten(shapes)
    names = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    bound = INIT_STD * math.sqrt(3.0)

    def build() -> Params:
        out = []
        for i, (x, n) in enumerate(zip(leaves, names)):
            if n[-1] == "norm":
                out.append(jnp.ones(x.shape, x.dtype))
            else:
                salt = (seed * 1_000_003 + i) & 0xFFFFFFFF
                out.append((bound * hash_uniform(tuple(x.shape), salt)).astype(x.dtype))
        return jax.tree.unflatten(treedef, out)

    return jax.jit(build, out_shardings=param_shardings(cfg, mesh, rules))()


def id_tokenizer(vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer whose tokens are "t0", "t1", ...: no EOS, no chat template.

    Benchmarks feed token ids directly; the engine only needs a vocabulary to look for
    end-of-turn tokens in (there are none, so generation runs to its length limit).
    """
    vocab = {f"t{i}": i for i in range(vocab_size)}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))


def random_model(cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0,
                 name: str = "random") -> LoadedModel:
    """A LoadedModel (what the engine takes) with random weights and the id tokenizer."""
    return LoadedModel(Path(f"<{name}>"), cfg, random_params(cfg, mesh, rules, seed),
                       id_tokenizer(cfg.vocab_size), eos_ids=[])


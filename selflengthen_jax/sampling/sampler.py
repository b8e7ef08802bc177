"""Next-token selection with per-row settings, Hugging Face semantics.

Processing order follows transformers' `generate`: repetition penalty (over prompt and
generated tokens), then temperature, top-k, top-p, then a draw. Every row carries its
own settings and key, so a request's tokens do not depend on its batch neighbours.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


class RowParams(NamedTuple):
    """Per-row sampling settings, each of shape [batch]."""

    temperature: jnp.ndarray   # float32; 0 means greedy
    top_k: jnp.ndarray         # int32; 0 disables
    top_p: jnp.ndarray         # float32; 1 disables
    repetition_penalty: jnp.ndarray  # float32; 1 disables
    greedy: jnp.ndarray        # bool


def apply_repetition_penalty(logits: jnp.ndarray, seen: jnp.ndarray, penalty: jnp.ndarray) -> jnp.ndarray:
    """Seen tokens: positive logits divided by the penalty, negative ones multiplied."""
    p = penalty[:, None]
    penalised = jnp.where(logits > 0, logits / p, logits * p)
    return jnp.where(seen, penalised, logits)


def filter_top_k_top_p(logits: jnp.ndarray, top_k: jnp.ndarray, top_p: jnp.ndarray,
                       k_cap: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The `k_cap` best logits per row with top-k then top-p applied (-inf where dropped).

    Returns (filtered values [b, k_cap], their vocab ids). Top-p keeps a token while the
    probability mass ranked strictly above it is < top_p, so at least one token survives.
    """
    vals, ids = jax.lax.top_k(logits, k_cap)
    rank = jnp.arange(k_cap)[None, :]
    k = jnp.where(top_k > 0, top_k, k_cap)[:, None]
    vals = jnp.where(rank < k, vals, NEG_INF)
    probs = jax.nn.softmax(vals, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    vals = jnp.where(mass_above < top_p[:, None], vals, NEG_INF)
    return vals, ids


def sample(logits: jnp.ndarray, seen: jnp.ndarray, params: RowParams, keys: jnp.ndarray,
           k_cap: int) -> jnp.ndarray:
    """One token per row. logits [b, vocab] float32, seen [b, vocab] bool, keys [b, 2] uint32."""
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    temp = jnp.where(params.temperature > 0, params.temperature, 1.0)[:, None]
    vals, ids = filter_top_k_top_p(logits / temp, params.top_k, params.top_p, k_cap)
    choice = jax.vmap(jax.random.categorical)(keys, vals)
    sampled = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
    # The best of the k_cap candidates is the vocabulary's argmax (a positive temperature
    # keeps the order, both filters keep the top token, top_k breaks ties to the lower
    # id as argmax does), so greedy rows need no second pass over the vocabulary. Not
    # `ids[:, 0]`: slicing top_k's output makes XLA's CPU backend sort the whole row.
    best = jnp.take_along_axis(ids, jnp.argmax(vals, axis=-1)[:, None], axis=-1)[:, 0]
    use_greedy = params.greedy | (params.temperature <= 0)
    return jnp.where(use_greedy, best, sampled).astype(jnp.int32)

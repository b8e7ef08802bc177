"""The sampler follows transformers' semantics, row by row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from selflengthen_jax.sampling.sampler import (RowParams, apply_repetition_penalty,
                                               chunked_top_k, filter_top_k_top_p, sample)
from selflengthen_jax.sampling.stops import cut_at_stop, first_stop


def rows(n, temperature=0.7, top_k=20, top_p=0.8, rep=1.0, greedy=False):
    f = lambda v, dt: jnp.full((n,), v, dt)  # noqa: E731
    return RowParams(f(temperature, jnp.float32), f(top_k, jnp.int32), f(top_p, jnp.float32),
                     f(rep, jnp.float32), f(greedy, bool))


def keys(n, seed=0):
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(n)])


def test_top_k_1_equals_greedy():
    logits = jax.random.normal(jax.random.PRNGKey(1), (16, 50))
    seen = jnp.zeros((16, 50), bool)
    drawn = sample(logits, seen, rows(16, temperature=1.3, top_k=1, top_p=1.0), keys(16), k_cap=20)
    np.testing.assert_array_equal(drawn, jnp.argmax(logits, -1))


@pytest.mark.parametrize("n,k", [(32000, 20), (1000, 7), (300, 1), (129, 1), (2000, 3)])
def test_chunked_top_k_equals_lax_top_k_with_ties_and_infinities(n, k):
    rng = np.random.default_rng(n + k)
    x = rng.integers(-4, 4, (6, n)).astype(np.float32)       # many equal values
    x[rng.random((6, n)) < 0.2] = -np.inf
    x[0] = -np.inf                                             # a row of nothing but ties
    for row in (1, 2):   # a few large values: the rest of the top k are ties spread over chunks
        x[row] = rng.integers(0, 3, n)
        x[row, rng.choice(n, k // 2 + 1, replace=False)] = 10 + np.arange(k // 2 + 1)
    want_vals, want_ids = jax.lax.top_k(jnp.asarray(x), k)
    vals, ids = chunked_top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(np.asarray(vals), np.asarray(want_vals))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))


def test_greedy_rows_take_the_penalised_argmax_lowest_id_on_ties():
    logits = jax.random.normal(jax.random.PRNGKey(3), (8, 300))
    logits = logits.at[:, 40].set(9.0).at[:, 41].set(9.0)        # a tie at the top
    logits = logits.at[0, 17].set(12.0)                          # row 0: a seen token on top
    seen = jnp.zeros((8, 300), bool).at[0, 17].set(True)
    params = rows(8, temperature=0.7, top_k=5, top_p=0.3, rep=2.0, greedy=True)
    params = params._replace(greedy=params.greedy.at[7].set(False), temperature=params.temperature.at[7].set(0.0))
    drawn = sample(logits, seen, params, keys(8), k_cap=5)
    expected = jnp.argmax(apply_repetition_penalty(logits, seen, params.repetition_penalty), -1)
    np.testing.assert_array_equal(drawn, expected)
    assert set(np.asarray(drawn).tolist()) == {40}  # 12 / 2 = 6 < 9; argmax takes the lower id


def test_top_p_keeps_the_smallest_head_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs))[None]
    vals, ids = filter_top_k_top_p(logits, jnp.array([0]), jnp.array([0.8]), k_cap=4)
    kept = sorted(int(i) for i, v in zip(ids[0], vals[0]) if np.isfinite(v))
    assert kept == [0, 1]  # 0.5 + 0.3 reaches 0.8; the third token is dropped
    vals, ids = filter_top_k_top_p(logits, jnp.array([0]), jnp.array([0.81]), k_cap=4)
    assert sum(np.isfinite(vals[0])) == 3


def test_top_p_draws_follow_the_renormalised_head():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.tile(jnp.log(jnp.asarray(probs)), (4000, 1))
    drawn = np.asarray(sample(logits, jnp.zeros(logits.shape, bool),
                              rows(4000, temperature=1.0, top_k=0, top_p=0.8), keys(4000), k_cap=4))
    freq = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.03)


def test_repetition_penalty_matches_transformers_processor():
    logits = np.random.default_rng(0).normal(size=(1, 40)).astype(np.float32)
    history = np.array([[3, 7, 7, 12, 39, 0]])
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(history), torch.tensor(logits)).numpy()
    seen = np.zeros((1, 40), bool)
    seen[0, history[0]] = True
    ours = apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), jnp.array([1.3]))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_same_key_same_draw_regardless_of_batch_neighbours():
    logits = jax.random.normal(jax.random.PRNGKey(2), (3, 100))
    seen = jnp.zeros((3, 100), bool)
    alone = sample(logits[1:2], seen[1:2], rows(1), keys(3)[1:2], k_cap=20)
    batch = sample(logits, seen, rows(3), keys(3), k_cap=20)
    assert int(alone[0]) == int(batch[1])


def test_stop_string_is_found_and_cut():
    assert first_stop("a story\n\n---\nmore", ["---", "\n\n---"]) == 7
    assert cut_at_stop("a story\n\n---\nmore", ["---", "\n\n---"]) == ("a story", True)
    assert cut_at_stop("no stop here", ["---"]) == ("no stop here", False)

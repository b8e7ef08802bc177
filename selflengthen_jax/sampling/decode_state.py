"""Device-side state of the decode slots and the two jitted kernels that advance it.

`prefill` writes new prompts into chosen slots and draws their first token; `decode`
runs up to `chunk` steps for every slot inside one `lax.while_loop`, so Python is off
the per-token path. The engine jits both with explicit shardings. No shape depends on a row's length: slots, cache length and the
chunk are fixed, so nothing recompiles as lengths vary.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import KVCache, forward, lm_head
from selflengthen_jax.sampling.sampler import RowParams, sample


class SlotState(NamedTuple):
    cache: KVCache
    last_token: jnp.ndarray    # [b] int32: the token to feed next
    pos: jnp.ndarray           # [b] int32: tokens in the cache = next write index
    n_gen: jnp.ndarray         # [b] int32: tokens generated so far
    max_new: jnp.ndarray       # [b] int32
    done: jnp.ndarray          # [b] bool
    seen: jnp.ndarray          # [b, vocab] bool: for the repetition penalty
    keys: jnp.ndarray          # [b, 2] uint32: per-request base key
    adapter: jnp.ndarray       # [b] int32: which stacked LoRA adapter (0 = base)
    sampling: RowParams


def empty_state(cfg: ModelConfig, slots: int, cache_len: int, dtype: Any) -> SlotState:
    z = lambda dt: jnp.zeros((slots,), dt)  # noqa: E731
    return SlotState(
        cache=KVCache.zeros(cfg, slots, cache_len, dtype),
        last_token=z(jnp.int32), pos=z(jnp.int32), n_gen=z(jnp.int32), max_new=z(jnp.int32),
        done=jnp.ones((slots,), bool), seen=jnp.zeros((slots, cfg.vocab_size), bool),
        keys=jnp.zeros((slots, 2), jnp.uint32), adapter=z(jnp.int32),
        sampling=RowParams(z(jnp.float32), z(jnp.int32), jnp.ones((slots,), jnp.float32),
                           jnp.ones((slots,), jnp.float32), jnp.ones((slots,), bool)))


class NewRows(NamedTuple):
    """Prompts to admit: padded to a bucket length; `slot` = -1 marks a filler row."""

    tokens: jnp.ndarray        # [n, P] int32
    length: jnp.ndarray        # [n] int32
    slot: jnp.ndarray          # [n] int32
    max_new: jnp.ndarray       # [n] int32
    keys: jnp.ndarray          # [n, 2] uint32
    adapter: jnp.ndarray       # [n] int32
    sampling: RowParams        # each [n]


def _is_eos(tokens: jnp.ndarray, eos_ids: jnp.ndarray) -> jnp.ndarray:
    return jnp.any(tokens[:, None] == eos_ids[None, :], axis=-1)


def _lora_kwargs(lora: Any, adapter: jnp.ndarray) -> dict:
    return {} if lora is None else {"lora": lora, "adapter_ids": adapter}


def prefill(params: Any, lora: Any, state: SlotState, rows: NewRows, eos_ids: jnp.ndarray, *,
            cfg: ModelConfig, k_cap: int, attention_impl: str = "xla") -> tuple[SlotState, jnp.ndarray]:
    """Run the prompts, write their keys/values into their slots, draw each first token."""
    n, p = rows.tokens.shape
    seg = (jnp.arange(p)[None, :] < rows.length[:, None]).astype(jnp.int32)
    out = forward(params, cfg, rows.tokens, segment_ids=seg, return_kv=True, return_hidden=True,
                  attention_impl=attention_impl, **_lora_kwargs(lora, rows.adapter))
    last = out.hidden[jnp.arange(n), rows.length - 1]
    logits = jnp.einsum("bd,dv->bv", last, lm_head(params, cfg).astype(last.dtype),
                        preferred_element_type=jnp.float32)
    seen = jnp.zeros((n, cfg.vocab_size), bool).at[jnp.arange(n)[:, None], rows.tokens].set(seg > 0)
    step_keys = jax.vmap(jax.random.fold_in)(rows.keys, jnp.zeros((n,), jnp.uint32))
    first = sample(logits, seen, rows.sampling, step_keys, k_cap)
    seen = seen.at[jnp.arange(n), first].set(True)

    slot = jnp.where(rows.slot >= 0, rows.slot, state.pos.shape[0])  # filler rows are dropped
    k, v = state.cache
    cache = KVCache(k.at[:, slot, :, :, :p].set(out.kv.k.astype(k.dtype), mode="drop"),   # [.., d, T]
                    v.at[:, slot, :, :p].set(out.kv.v.astype(v.dtype), mode="drop"))      # [.., T, d]
    put = lambda old, new: old.at[slot].set(new, mode="drop")  # noqa: E731
    done = _is_eos(first, eos_ids) | (rows.max_new <= 1)
    state = SlotState(
        cache=cache, last_token=put(state.last_token, first), pos=put(state.pos, rows.length),
        n_gen=put(state.n_gen, jnp.ones((n,), jnp.int32)), max_new=put(state.max_new, rows.max_new),
        done=put(state.done, done), seen=put(state.seen, seen), keys=put(state.keys, rows.keys),
        adapter=put(state.adapter, rows.adapter),
        sampling=jax.tree.map(put, state.sampling, rows.sampling))
    return state, first


def decode(params: Any, lora: Any, state: SlotState, eos_ids: jnp.ndarray, steps: jnp.ndarray,
           exit_on_finish: jnp.ndarray, *, cfg: ModelConfig, chunk: int, k_cap: int,
           attention_impl: str = "xla") -> tuple[SlotState, jnp.ndarray]:
    """Up to `steps` (<= chunk, a traced scalar) decode steps for all slots.

    Stops early once every slot is done, or, with `exit_on_finish`, as soon as any slot
    finishes, so the host can refill it with a pending prompt right away. Returns the
    new state and the tokens made [b, chunk] (-1 where a row made none).
    """
    b = state.pos.shape[0]
    rows = jnp.arange(b)

    def step(carry):
        i, s, out = carry
        o = forward(params, cfg, s.last_token[:, None], positions=s.pos[:, None], cache=s.cache,
                    write_index=s.pos, attention_impl=attention_impl, **_lora_kwargs(lora, s.adapter))
        keys = jax.vmap(jax.random.fold_in)(s.keys, s.n_gen.astype(jnp.uint32))
        tok = sample(o.logits[:, 0], s.seen, s.sampling, keys, k_cap)
        active = ~s.done
        n_gen = s.n_gen + active
        done = s.done | (active & (_is_eos(tok, eos_ids) | (n_gen >= s.max_new)))
        s = s._replace(
            cache=o.cache,
            last_token=jnp.where(active, tok, s.last_token),
            pos=s.pos + active, n_gen=n_gen, done=done,
            seen=s.seen.at[rows, tok].set(s.seen[rows, tok] | active))
        out = out.at[:, i].set(jnp.where(active, tok, -1))
        return i + 1, s, out

    started_done = state.done

    def cond(carry):
        i, s, _ = carry
        finished = jnp.any(s.done & ~started_done)
        return (i < steps) & ~jnp.all(s.done) & ~(exit_on_finish & finished)

    out = jnp.full((b, chunk), -1, jnp.int32)
    _, state, out = jax.lax.while_loop(cond, step, (jnp.int32(0), state, out))
    return state, out

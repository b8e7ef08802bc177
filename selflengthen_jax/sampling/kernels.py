"""The engine's device kernels: the decode slots' state and the pure functions that advance it.

* `empty_state`: every slot free (the engine jits it with explicit out_shardings, so the
  state is born sharded on the devices and never passes through the host);
* `prefill` (JetStream's prefill + insert): runs new prompts, writes their keys/values
  into chosen slots and draws each first token;
* `mixed_step`: one piece of prompts into their slots plus one decode step for every
  decoding slot, in one forward pass (chunked prefill that shares the weights' read);
* `decode`: up to `chunk` steps for every slot inside one `lax.while_loop`, so Python is
  off the per-token path;
* `score`: log-likelihoods of continuations, one prompt forward shared by all of a
  prompt's continuations, only the [prompts, continuations] sums leaving the device.

Ends are found here, on device: each row carries a finish code (EOS, which includes the
chat end-of-turn token for chat rows, or its length budget), so the host never rescans
tokens for them; only stop strings, which need text, are the host's.
No shape depends on a row's length: slots, cache length and the chunk are fixed, so
nothing recompiles as lengths vary.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.attention import Backend
from selflengthen_jax.models.attention.cache import KVCache
from selflengthen_jax.models.transformer import Part, forward, forward_parts, to_logits
from selflengthen_jax.sampling.sampler import RowParams, sample

# Finish codes of a row. RELEASED: a free slot, or one the host ended (a stop string).
RUNNING, EOS, LENGTH, RELEASED = 0, 1, 2, 3


class Ends(NamedTuple):
    """Token ids that end a row (-1 pads both)."""

    eos: jnp.ndarray           # [e] int32: the checkpoint's own EOS ids, for every row
    turn: jnp.ndarray          # [t] int32: the chat template's end-of-turn ids, for chat rows


class SlotState(NamedTuple):
    cache: KVCache
    last_token: jnp.ndarray    # [b] int32: the token to feed next
    pos: jnp.ndarray           # [b] int32: tokens in the cache = next write index
    n_gen: jnp.ndarray         # [b] int32: tokens generated so far
    max_new: jnp.ndarray       # [b] int32
    finish: jnp.ndarray        # [b] int32: RUNNING, EOS, LENGTH or RELEASED
    seen: jnp.ndarray          # [b, vocab] bool: for the repetition penalty
    keys: jnp.ndarray          # [b, 2] uint32: per-request base key
    adapter: jnp.ndarray       # [b] int32: which stacked LoRA adapter (0 = base)
    chat: jnp.ndarray          # [b] bool: the end-of-turn token ends this row
    sampling: RowParams

    @property
    def done(self) -> jnp.ndarray:
        return self.finish != RUNNING


def empty_state(cfg: ModelConfig, slots: int, cache_len: int, dtype: Any, attention: Backend) -> SlotState:
    """All slots free, the cache in the backend's layout. Call it under jit with
    out_shardings (`Engine.empty_state`)."""
    z = lambda dt: jnp.zeros((slots,), dt)  # noqa: E731
    return SlotState(
        cache=attention.layout.zeros(cfg, slots, cache_len, dtype),
        last_token=z(jnp.int32), pos=z(jnp.int32), n_gen=z(jnp.int32), max_new=z(jnp.int32),
        finish=jnp.full((slots,), RELEASED, jnp.int32), seen=jnp.zeros((slots, cfg.vocab_size), bool),
        keys=jnp.zeros((slots, 2), jnp.uint32), adapter=z(jnp.int32), chat=z(bool),
        sampling=RowParams(z(jnp.float32), z(jnp.int32), jnp.ones((slots,), jnp.float32),
                           jnp.ones((slots,), jnp.float32), jnp.ones((slots,), bool)))


class NewRows(NamedTuple):
    """Prompts to admit, each run once however many rows share it (the answers of one
    instruction, the extensions of one text), and the rows that take them.

    Prompts are padded to a bucket length; a row's `src` names its prompt, and
    `slot` = -1 marks a filler row.
    """

    tokens: jnp.ndarray        # [u, P] int32: the distinct prompts
    length: jnp.ndarray        # [u] int32
    prompt_adapter: jnp.ndarray  # [u] int32: keys/values depend on the adapter too
    src: jnp.ndarray           # [n] int32: each row's prompt
    slot: jnp.ndarray          # [n] int32
    max_new: jnp.ndarray       # [n] int32
    keys: jnp.ndarray          # [n, 2] uint32
    adapter: jnp.ndarray       # [n] int32
    chat: jnp.ndarray          # [n] bool
    sampling: RowParams        # each [n]


def _in(tokens: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
    return jnp.any(tokens[:, None] == ids[None, :], axis=-1)


def ends_row(tokens: jnp.ndarray, chat: jnp.ndarray, ends: Ends) -> jnp.ndarray:
    """[b] bool: the token ends its row (an EOS id, or end of turn on a chat row)."""
    return _in(tokens, ends.eos) | (chat & _in(tokens, ends.turn))


def _lora_kwargs(lora: Any, adapter: jnp.ndarray) -> dict:
    return {} if lora is None else {"lora": lora, "adapter_ids": adapter}


def _finish_code(ended: jnp.ndarray, n_gen: jnp.ndarray, max_new: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(ended, EOS, jnp.where(n_gen >= max_new, LENGTH, RUNNING)).astype(jnp.int32)


def prefill(params: Any, lora: Any, state: SlotState, rows: NewRows, ends: Ends, *,
            cfg: ModelConfig, k_cap: int, attention: Backend) -> tuple[SlotState, jnp.ndarray]:
    """Run each distinct prompt once, write its keys/values into the slots of every row
    that shares it, and draw each row's first token (with the row's own key)."""
    u, p = rows.tokens.shape
    n = rows.src.shape[0]
    seg = (jnp.arange(p)[None, :] < rows.length[:, None]).astype(jnp.int32)
    out = forward(params, cfg, rows.tokens, segment_ids=seg, return_kv=True, return_hidden=True,
                  attention=attention, **_lora_kwargs(lora, rows.prompt_adapter))
    last = out.hidden[jnp.arange(u), rows.length - 1]
    logits = to_logits(params, cfg, last)[rows.src]
    length, tokens, seg = rows.length[rows.src], rows.tokens[rows.src], seg[rows.src]
    seen = jnp.zeros((n, cfg.vocab_size), bool).at[jnp.arange(n)[:, None], tokens].set(seg > 0)
    step_keys = jax.vmap(jax.random.fold_in)(rows.keys, jnp.zeros((n,), jnp.uint32))
    first = sample(logits, seen, rows.sampling, step_keys, k_cap)
    seen = seen.at[jnp.arange(n), first].set(True)

    slot = jnp.where(rows.slot >= 0, rows.slot, state.pos.shape[0])  # filler rows are dropped
    layout = attention.layout
    cache = layout.insert(state.cache, slot, layout.take(out.kv, rows.src))
    put = lambda old, new: old.at[slot].set(new, mode="drop")  # noqa: E731
    ones = jnp.ones((n,), jnp.int32)
    finish = _finish_code(ends_row(first, rows.chat, ends), ones, rows.max_new)
    state = SlotState(
        cache=cache, last_token=put(state.last_token, first), pos=put(state.pos, length),
        n_gen=put(state.n_gen, ones), max_new=put(state.max_new, rows.max_new),
        finish=put(state.finish, finish), seen=put(state.seen, seen), keys=put(state.keys, rows.keys),
        adapter=put(state.adapter, rows.adapter), chat=put(state.chat, rows.chat),
        sampling=jax.tree.map(put, state.sampling, rows.sampling))
    return state, first


class Piece(NamedTuple):
    """One piece of prompts prefilled into their slots: of a long prompt between decode
    chunks, or a whole short prompt refilling a slot while others decode (`mixed_step`).

    Row r holds tokens [start, start + count) of its prompt; on its `final` piece the
    row's first token is drawn and it starts decoding. Until then its slot is RELEASED
    with `pos` at the next piece's start, so a decode chunk's write for the idle row
    lands where that piece writes next. `slot` = -1 marks a filler row.
    """

    tokens: jnp.ndarray        # [n, C] int32
    start: jnp.ndarray         # [n] int32
    count: jnp.ndarray         # [n] int32
    final: jnp.ndarray         # [n] bool
    slot: jnp.ndarray          # [n] int32
    max_new: jnp.ndarray       # [n] int32
    keys: jnp.ndarray          # [n, 2] uint32
    adapter: jnp.ndarray       # [n] int32
    chat: jnp.ndarray          # [n] bool
    sampling: RowParams        # each [n]


def mixed_step(params: Any, lora: Any, state: SlotState, piece: Piece, ends: Ends, *, cfg: ModelConfig,
               k_cap: int, attention: Backend, decode: bool = True) -> tuple[SlotState, jnp.ndarray, jnp.ndarray]:
    """One piece of each row's prompt over its slot's cache (the earlier pieces) and, with
    `decode`, one decode step for every decoding slot, in one forward pass: the decode
    tokens ride on the piece's read of the weights (vLLM's mixed batch). Rows on their
    final piece draw their first token. Returns the state, those first tokens [n] and
    the decode step's tokens [b] (-1 where a slot made none; all -1 without `decode`)."""
    n, c = piece.tokens.shape
    b = state.pos.shape[0]
    slot = jnp.where(piece.slot >= 0, piece.slot, b)             # filler rows are dropped
    positions = piece.start[:, None] + jnp.arange(c)[None, :]
    parts = [Part(piece.tokens, positions, slot, piece.adapter)]
    if decode:  # first, so the piece's write wins at the position an idle slot's step writes
        parts.insert(0, Part(state.last_token[:, None], state.pos[:, None], None, state.adapter))
    # written into the slots' rows of the carried cache in place: no row copied in or out
    hidden, cache = forward_parts(params, cfg, parts, state.cache, lora=lora, attention=attention)
    state = state._replace(cache=cache)
    # one LM-head product for the decode rows and the piece's last positions: the head is
    # the largest single weight, read once per step like every other
    last = hidden[-1][jnp.arange(n), piece.count - 1]
    logits = to_logits(params, cfg, jnp.concatenate([hidden[0][:, 0], last]) if decode else last)
    toks = jnp.full((b,), -1, jnp.int32)
    if decode:
        state, toks = _advance(state, logits[:b], ends, k_cap)
    state, first = _start_rows(state, piece, slot, logits[-n:], ends, k_cap)
    return state, first, toks


def _start_rows(state: SlotState, piece: Piece, slot: jnp.ndarray, logits: jnp.ndarray, ends: Ends,
                k_cap: int) -> tuple[SlotState, jnp.ndarray]:
    """The piece's rows after their piece: prompt tokens marked seen, and on the final
    piece the first token drawn and the slot running; until then the slot stays RELEASED
    with `pos` at the next piece's start."""
    n, c = piece.tokens.shape
    take = jnp.minimum(slot, state.pos.shape[0] - 1)
    valid = jnp.arange(c)[None, :] < piece.count[:, None]
    fresh = piece.start == 0
    seen = jnp.where(fresh[:, None], False, state.seen[take])
    seen = seen.at[jnp.arange(n)[:, None], piece.tokens].max(valid)
    step_keys = jax.vmap(jax.random.fold_in)(piece.keys, jnp.zeros((n,), jnp.uint32))
    first = sample(logits, seen, piece.sampling, step_keys, k_cap)
    seen = seen.at[jnp.arange(n), first].max(piece.final)

    put = lambda old, new: old.at[slot].set(new, mode="drop")  # noqa: E731
    ones = jnp.ones((n,), jnp.int32)
    end = piece.start + piece.count
    finish = jnp.where(piece.final, _finish_code(ends_row(first, piece.chat, ends), ones, piece.max_new),
                       RELEASED)
    state = state._replace(
        last_token=put(state.last_token, first), pos=put(state.pos, end),
        n_gen=put(state.n_gen, ones), max_new=put(state.max_new, piece.max_new),
        finish=put(state.finish, finish), seen=put(state.seen, seen), keys=put(state.keys, piece.keys),
        adapter=put(state.adapter, piece.adapter), chat=put(state.chat, piece.chat),
        sampling=jax.tree.map(put, state.sampling, piece.sampling))
    return state, first


def _advance(s: SlotState, logits: jnp.ndarray, ends: Ends, k_cap: int) -> tuple[SlotState, jnp.ndarray]:
    """One decode step's bookkeeping from its logits [b, vocab]: each running slot draws
    a token (its key folded with its count) and may finish; others stay as they are.
    Returns the state and the tokens [b] (-1 where a slot made none)."""
    rows = jnp.arange(s.pos.shape[0])
    keys = jax.vmap(jax.random.fold_in)(s.keys, s.n_gen.astype(jnp.uint32))
    tok = sample(logits, s.seen, s.sampling, keys, k_cap)
    active = ~s.done
    n_gen = s.n_gen + active
    finish = jnp.where(active, _finish_code(ends_row(tok, s.chat, ends), n_gen, s.max_new), s.finish)
    s = s._replace(
        last_token=jnp.where(active, tok, s.last_token),
        pos=s.pos + active, n_gen=n_gen, finish=finish,
        seen=s.seen.at[rows, tok].set(s.seen[rows, tok] | active))
    return s, jnp.where(active, tok, -1)


def decode(params: Any, lora: Any, state: SlotState, ends: Ends, steps: jnp.ndarray,
           exit_on_finish: jnp.ndarray, *, cfg: ModelConfig, chunk: int, k_cap: int,
           attention: Backend) -> tuple[SlotState, jnp.ndarray, jnp.ndarray]:
    """Up to `steps` (<= chunk, a traced scalar) decode steps for all slots.

    Stops early once every slot is done, or, with `exit_on_finish`, as soon as any slot
    finishes, so the host can refill it with a pending prompt right away. Returns the
    new state, the tokens made [b, chunk] (-1 where a row made none) and the finish codes [b].
    """
    b = state.pos.shape[0]

    def step(carry):
        i, s, out = carry
        o = forward(params, cfg, s.last_token[:, None], positions=s.pos[:, None], cache=s.cache,
                    write_index=s.pos, attention=attention, **_lora_kwargs(lora, s.adapter))
        s, tok = _advance(s._replace(cache=o.cache), o.logits[:, 0], ends, k_cap)
        return i + 1, s, out.at[:, i].set(tok)

    started_done = state.done

    def cond(carry):
        i, s, _ = carry
        finished = jnp.any(s.done & ~started_done)
        return (i < steps) & ~jnp.all(s.done) & ~(exit_on_finish & finished)

    out = jnp.full((b, chunk), -1, jnp.int32)
    _, state, out = jax.lax.while_loop(cond, step, (jnp.int32(0), state, out))
    return state, out, state.finish


def release(state: SlotState, mask: jnp.ndarray) -> SlotState:
    """Free the masked slots (the host ended them: a stop string, or a slot it emptied)."""
    return state._replace(finish=jnp.where(mask, RELEASED, state.finish))


class ScoreRows(NamedTuple):
    """Prompts with the continuations to score after each (0-length ones are padding)."""

    tokens: jnp.ndarray        # [n, P] int32: prompts, padded
    length: jnp.ndarray        # [n] int32
    conts: jnp.ndarray         # [n, c, C] int32: continuations, padded
    cont_len: jnp.ndarray      # [n, c] int32
    adapter: jnp.ndarray       # [n] int32


def score(params: Any, lora: Any, rows: ScoreRows, *, cfg: ModelConfig,
          attention: Backend) -> jnp.ndarray:
    """[n, c] float32: the summed log-probs of each continuation given its prompt.

    The prompt runs once; its keys/values become a cache that each continuation reads
    (continuations are written over the same positions, so they never see each other).
    The first continuation token's log-prob comes from the prompt's last position.
    """
    n, p = rows.tokens.shape
    _, c, length_c = rows.conts.shape
    kw = _lora_kwargs(lora, rows.adapter)
    seg = (jnp.arange(p)[None, :] < rows.length[:, None]).astype(jnp.int32)
    out = forward(params, cfg, rows.tokens, segment_ids=seg, return_kv=True, return_hidden=True,
                  attention=attention, **kw)
    last = out.hidden[jnp.arange(n), rows.length - 1]
    first = jax.nn.log_softmax(to_logits(params, cfg, last), axis=-1)
    total = jnp.take_along_axis(first, rows.conts[:, :, 0], axis=1)          # [n, c]
    total = jnp.where(rows.cont_len > 0, total, 0.0)
    if length_c == 1:
        return total
    cache = attention.layout.pad(out.kv, length_c)
    positions = rows.length[:, None] + jnp.arange(length_c)[None, :]
    for j in range(c):
        toks = rows.conts[:, j]
        cont = forward(params, cfg, toks, positions=positions, cache=cache, write_index=rows.length,
                       attention=attention, **kw).logits
        lp = jax.nn.log_softmax(cont[:, :-1], axis=-1)                     # predicts toks[:, 1:]
        picked = jnp.take_along_axis(lp, toks[:, 1:, None], axis=-1)[..., 0]  # [n, C-1]
        used = jnp.arange(1, length_c)[None, :] < rows.cont_len[:, j:j + 1]
        total = total.at[:, j].add(jnp.where(used, picked, 0.0).sum(axis=1))
    return total

"""Continuous batching on the host: which requests run, when to prefill, when a row is done.

The scheduler drives an engine through its public kernels only (`empty_state`,
`prefill`, `decode`, `release`) and owns everything that is bookkeeping: the queue,
the slot table, the token budget of each prefill, and the stop-string scan.

* Requests with the same prompt and adapter admitted together (the answers of one
  instruction, the extensions of one text) share one prefill; each samples with its own key.
* A prompt longer than `engine.max_prefill_len` comes back at once with finish reason
  `prompt_too_long` (no tokens); the other requests run as usual.
* A prompt longer than `engine.prefill_chunk` waits in its slot and is prefilled one
  piece of that many tokens between decode chunks, so the decoding slots never wait for
  more than one piece (`stats["longest_stall_s"]` is the longest such wait).
* With `engine.mixed_batches` (vLLM's mixed batches) every piece also steps each
  decoding slot once in the same forward pass, so the decode tokens ride on the piece's
  read of the weights; prompts admitted while other slots decode go in as pieces too
  (one, if short), unless several of them share a prompt, whose one shared prefill
  saves more.
* EOS, end of turn and length budgets are found on device (finish codes); the host only
  looks for stop strings, which need text. While a chunk runs on the device the host
  scans the previous chunk's new tokens, so detokenising overlaps with decoding; a slot
  found stopped there is released after the chunk in flight, whose extra tokens for it
  are dropped.
* `mode="static"` refills only when every slot is free: the baseline that continuous
  batching is measured against.
* The engine's `stats` add up where the time went: `decode_s` (decode chunks),
  `prefill_s` (prefills) and `piece_s` (pieces, with any decode step they carry), each in
  wall seconds with its host sync, so a benchmark can split a run without a profiler.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from selflengthen_jax import signals
from selflengthen_jax.metrics import profile
from selflengthen_jax.sampling import kernels
from selflengthen_jax.sampling.request import Completion, FinishReason, Request
from selflengthen_jax.sampling.sampler import RowParams
from selflengthen_jax.sampling.stops import first_stop

if TYPE_CHECKING:
    from selflengthen_jax.sampling.engine import Engine

STOP_WINDOW = 16  # tokens re-decoded before a scan's new ones when looking for stops
_SAMPLING = (("temperature", np.float32), ("top_k", np.int32), ("top_p", np.float32),
             ("repetition_penalty", np.float32), ("greedy", bool))


@dataclasses.dataclass
class Slot:
    index: int           # position of the request in the caller's list
    request: Request
    prompt_len: int
    max_new: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    checked: int = 0     # tokens already searched for stop strings
    prompt: list[int] | None = None  # a long prompt still being prefilled, piece by piece
    prefilled: int = 0   # of which this many tokens are in the cache

    @property
    def decoding(self) -> bool:
        return self.prompt is None


def bucket(n: int, cap: int, floor: int = 16) -> int:
    """The power of two (from `floor`) at or above n, at most `cap`: few compiled shapes."""
    b = floor
    while b < n:
        b *= 2
    return min(b, cap)


def admit(pending: collections.deque, free: int, lengths: Sequence[int], slots: int,
          max_prefill_len: int, prefill_tokens: int, keys: Sequence[object] | None = None) -> list[int]:
    """Next prompts for `free` slots, as many as fit `prefill_tokens` at their bucket length.

    With `keys`, requests of equal key share one prefill, so a prompt already admitted
    costs nothing more.
    """
    key = (lambda j: j) if keys is None else keys.__getitem__
    admitted = [pending.popleft()]
    distinct = {key(admitted[0])}
    while pending and len(admitted) < free:
        nxt = pending[0]
        if key(nxt) not in distinct:
            rows = bucket(len(distinct) + 1, slots, floor=1)
            longest = max(lengths[j] for j in [*admitted, nxt])
            if rows * bucket(longest, max_prefill_len) > prefill_tokens:
                break
            distinct.add(key(nxt))
        admitted.append(pending.popleft())
    return admitted


def stop_prefix(decode: Callable[[list[int]], str], slot: Slot, ids: list[int]) -> list[int] | None:
    """The shortest prefix of ids whose text holds a stop string, looking only where the
    unchecked tokens could have completed one; None when there is none."""
    stops = slot.request.params.stop
    if not stops or len(ids) <= slot.checked:
        return None
    lo = max(0, slot.checked - STOP_WINDOW)
    if first_stop(decode(ids[lo:]), stops) is None:
        return None
    for k in range(max(lo, 1), len(ids) + 1):
        if first_stop(decode(ids[lo:k]), stops) is not None:
            return ids[:k]
    return ids


class Scheduler:
    """One `generate` call: requests in, completions out in input order."""

    def __init__(self, engine: Engine, requests: Sequence[Request],
                 on_complete: Callable[[int, Completion], None] | None = None, progress: bool = False):
        self.engine, self.requests, self.on_complete = engine, requests, on_complete
        self.section = engine.section
        self.results: list[Completion | None] = [None] * len(requests)
        self.slots: list[Slot | None] = [None] * self.section.slots
        self.bar = tqdm(total=len(requests), disable=not progress, unit="req", dynamic_ncols=True)
        self.made = 0

    def _decode_text(self, ids: list[int]) -> str:
        return self.engine.tok.decode(ids, skip_special_tokens=True)

    def _finish(self, i: int, slot: Slot, reason: FinishReason, ids: list[int]) -> None:
        text = self._decode_text(ids)
        if reason == "stop":
            text = text[:first_stop(text, slot.request.params.stop)]
        self._complete(slot.index, Completion(slot.request.id, text, tuple(ids), slot.prompt_len, reason))
        self.slots[i] = None

    def _complete(self, index: int, done: Completion) -> None:
        self.results[index] = done
        self.bar.update(1)
        if self.on_complete:
            self.on_complete(index, done)

    def run(self) -> list[Completion]:
        engine = self.engine
        prompts = [engine.prompt_ids(r) for r in self.requests]
        limit = self.section.max_prefill_len
        pending = collections.deque()
        for j, (r, ids) in enumerate(zip(self.requests, prompts)):
            if not ids:
                raise ValueError(f"request {r.id!r}: the prompt has no tokens")
            if len(ids) > limit:  # that request alone; the batch goes on
                self._complete(j, Completion(r.id, "", (), len(ids), "prompt_too_long"))
            else:
                pending.append(j)
        if not pending:
            self.bar.close()
            return self.results  # type: ignore[return-value]
        k_cap = engine.k_cap([self.requests[j] for j in pending])
        state = engine.empty_state()
        start = time.perf_counter()
        lagging: list[int] = []  # slots whose newest tokens wait for the stop-string scan
        fetched: float | None = None  # when the last decode chunk's tokens reached the host
        while pending or any(self.slots):
            signals.check()  # a stop whose raise was swallowed (a gc callback) ends here
            free = [i for i, s in enumerate(self.slots) if s is None]
            if pending and free and (self.section.mode == "continuous" or len(free) == len(self.slots)):
                t0 = time.perf_counter()
                state = self._prefill(state, pending, free, prompts, k_cap)
                self._settle(engine.to_host(state.finish))
                engine.stats["prefill_s"] += time.perf_counter() - t0
            if self._prefilling():
                rides = self.section.mixed_batches and self._decoding() > 0
                t0 = time.perf_counter()
                if rides and fetched is not None:  # this step makes the decoding slots' next token
                    engine.stats["longest_stall_s"] = max(engine.stats["longest_stall_s"], t0 - fetched)
                state, stepped, finish = self._piece(state, k_cap)
                engine.stats["piece_s"] += time.perf_counter() - t0
                if rides:
                    fetched = time.perf_counter()
                lagging = sorted(set(lagging) | set(stepped))
                self._settle(finish)
                lagging = [i for i in lagging if self.slots[i] is not None]
            if not self._decoding():
                continue
            steps, exit_early = self._chunk_plan(bool(pending))
            wall, cpu = time.perf_counter(), time.process_time()
            if fetched is not None:  # what the slots decoding since then waited for the host
                engine.stats["longest_stall_s"] = max(engine.stats["longest_stall_s"], wall - fetched)
            state, toks, finish = engine.decode(state, steps, exit_early, k_cap)  # runs async
            stopped = self._scan_stops(lagging)  # overlaps with the chunk in flight
            toks, finish = engine.to_host(toks), engine.to_host(finish)
            fetched = time.perf_counter()
            engine.count_decode(toks, time.perf_counter() - wall, time.process_time() - cpu)
            profile.tick("decode")
            lagging = self._append(toks)
            if stopped:
                state = engine.release(state, stopped)
            self._settle(finish)
            lagging = [i for i in lagging if self.slots[i] is not None]
            if not self._decoding():
                fetched = None  # no slot is decoding, so none waits for what runs next
            self.bar.set_postfix(tok_s=f"{self.made / (time.perf_counter() - start):.0f}")
        self.bar.close()
        engine.stats["tokens"] += self.made
        return self.results  # type: ignore[return-value]

    def _append(self, toks: np.ndarray) -> list[int]:
        """Add each decoding slot's new tokens (row i of toks [slots, t], -1: none);
        returns those slots, whose new tokens the stop-string scan has not seen."""
        got = []
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.decoding:
                new = [int(t) for t in toks[i] if t >= 0]
                slot.tokens.extend(new)
                self.made += len(new)
                got.append(i)
        return got

    def _decoding(self) -> int:
        """How many slots decode (their prompt is wholly in the cache)."""
        return sum(s is not None and s.decoding for s in self.slots)

    def _prefilling(self) -> bool:
        """Whether some slot holds a long prompt still being prefilled piece by piece."""
        return any(s is not None and not s.decoding for s in self.slots)

    def _settle(self, finish: np.ndarray) -> None:
        """Finish the slots the device ended (EOS, length), checking their last tokens for
        a stop string first: a stop found there wins, as it came earlier in the text."""
        for i, slot in enumerate(self.slots):
            code = kernels.RUNNING if slot is None or not slot.decoding else int(finish[i])
            if code == kernels.RUNNING:
                continue
            ids = slot.tokens[:-1] if code == kernels.EOS else slot.tokens[:slot.max_new]
            hit = stop_prefix(self._decode_text, slot, ids)
            if hit is not None:
                self._finish(i, slot, "stop", hit)
            else:
                self._finish(i, slot, "eos" if code == kernels.EOS else "length", ids)

    def _scan_stops(self, lagging: list[int]) -> list[int]:
        """Finish the slots whose tokens since the last scan complete a stop string."""
        stopped = []
        for i in lagging:
            slot = self.slots[i]
            if slot is None:
                continue
            hit = stop_prefix(self._decode_text, slot, slot.tokens)
            if hit is None:
                slot.checked = len(slot.tokens)
            else:
                self._finish(i, slot, "stop", hit)
                stopped.append(i)
        return stopped

    def _chunk_plan(self, pending: bool) -> tuple[int, bool]:
        """How many steps to run before the host looks again.

        With prompts waiting, stop when the first slot reaches its token budget (known in
        advance) or ends early (EOS, seen on device), so its slot is refilled at once.
        With a long prompt part-prefilled, run about `prefill_chunk` decode tokens (over
        all decoding slots) before its next piece: its slot decodes nothing until the
        last piece is in, so a whole `decode_chunk` between pieces would idle it for
        many chunks, and each piece stalls the decoding slots for only one piece.
        """
        s = self.section
        steps = s.decode_chunk
        if self._prefilling():
            steps = min(steps, -(-s.prefill_chunk // max(self._decoding(), 1)))
        early = pending and s.mode == "continuous"
        if early:
            steps = min([steps] + [x.max_new - len(x.tokens) for x in self.slots if x is not None and x.decoding])
        return max(steps, 1), early

    def _prefill(self, state: kernels.SlotState, pending: collections.deque, free: list[int],
                 prompts: list[list[int]], k_cap: int) -> kernels.SlotState:
        s, engine = self.section, self.engine
        shared = [(tuple(p), r.adapter) for p, r in zip(prompts, self.requests)]
        admitted = admit(pending, len(free), [min(len(p), s.prefill_chunk) for p in prompts], s.slots,
                         s.max_prefill_len, s.prefill_tokens, keys=shared)
        whole = [j for j in admitted if len(prompts[j]) <= s.prefill_chunk]
        ride = s.mixed_batches and self._decoding() > 0 and len({shared[j] for j in whole}) == len(whole)
        short = []
        for j, i in zip(admitted, free):  # long prompts (and, riding a decode step, all) wait in their slot
            if ride or len(prompts[j]) > s.prefill_chunk:
                self.slots[i] = self._slot(j, prompts[j])
                self.slots[i].prompt = prompts[j]
            else:
                short.append((j, i))
        if not short:
            return state
        admitted, free = [j for j, _ in short], [i for _, i in short]
        distinct: dict[tuple, int] = {}
        for j in admitted:
            distinct.setdefault(shared[j], j)
        u, n = bucket(len(distinct), s.slots, floor=1), bucket(len(admitted), s.slots, floor=1)
        p = bucket(max(len(prompts[j]) for j in admitted), s.max_prefill_len)
        tokens, length, prompt_adapter = np.zeros((u, p), np.int32), np.ones((u,), np.int32), np.zeros((u,), np.int32)
        for k, j in enumerate(distinct.values()):
            tokens[k, :len(prompts[j])], length[k] = prompts[j], len(prompts[j])
            prompt_adapter[k] = engine.adapter_index(self.requests[j].adapter)
        which = {key: k for k, key in enumerate(distinct)}
        src, slot, max_new = np.zeros((n,), np.int32), np.full((n,), -1, np.int32), np.ones((n,), np.int32)
        keys, adapter, chat = np.zeros((n, 2), np.uint32), np.zeros((n,), np.int32), np.zeros((n,), bool)
        samp = {f: np.zeros((n,), t) for f, t in _SAMPLING}
        for row, (j, i) in enumerate(zip(admitted, free)):
            self.slots[i] = self._slot(j, prompts[j])
            src[row], slot[row], max_new[row] = which[shared[j]], i, self.slots[i].max_new
            self._row_settings(row, self.requests[j], keys, adapter, chat, samp)
        engine.stats["prefill_calls"] += 1
        engine.stats["prefill_tokens"] += sum(len(prompts[j]) for j in distinct.values())
        engine.stats["prefill_tokens_shared"] += sum(len(prompts[j]) for j in admitted) - \
            sum(len(prompts[j]) for j in distinct.values())
        rows = kernels.NewRows(tokens, length, prompt_adapter, src, slot, max_new, keys, adapter, chat,
                               RowParams(**samp))
        state, first = engine.prefill(state, rows, k_cap)
        for i, tok in zip(free, engine.to_host(first)[:len(admitted)]):
            self.slots[i].tokens.append(int(tok))
            self.made += 1
        return state

    def _slot(self, j: int, ids: list[int]) -> Slot:
        req = self.requests[j]
        budget = min(req.params.max_new_tokens, self.section.max_new_tokens, self.engine.cache_len - len(ids))
        return Slot(j, req, len(ids), budget)

    def _row_settings(self, row: int, req: Request, keys: np.ndarray, adapter: np.ndarray,
                      chat: np.ndarray, samp: dict[str, np.ndarray]) -> None:
        keys[row] = np.asarray(jax.random.key_data(jax.random.PRNGKey(req.params.seed)))
        adapter[row] = self.engine.adapter_index(req.adapter)
        chat[row] = self.engine.is_chat(req)
        for f in samp:
            samp[f][row] = getattr(req.params, f)

    def _piece(self, state: kernels.SlotState, k_cap: int) -> tuple[kernels.SlotState, list[int], np.ndarray]:
        """The next piece of the prompts being prefilled, `prefill_chunk` tokens in all,
        oldest first: between two decode chunks the other slots wait for this much, or,
        with `mixed_batches`, make one token each alongside it. Returns the state, the
        slots that made a token and the finish codes."""
        s, engine = self.section, self.engine
        budget, rows = s.prefill_chunk, []
        for i in sorted((i for i, x in enumerate(self.slots) if x is not None and not x.decoding),
                        key=lambda i: self.slots[i].index):
            slot = self.slots[i]
            take = min(len(slot.prompt) - slot.prefilled, budget)
            if take <= 0:
                break
            rows.append((i, take))
            budget -= take
        n, c = bucket(len(rows), s.slots, floor=1), bucket(max(t for _, t in rows), s.prefill_chunk)
        tokens, start, count = np.zeros((n, c), np.int32), np.zeros((n,), np.int32), np.ones((n,), np.int32)
        final, slot_ids, max_new = np.zeros((n,), bool), np.full((n,), -1, np.int32), np.ones((n,), np.int32)
        keys, adapter, chat = np.zeros((n, 2), np.uint32), np.zeros((n,), np.int32), np.zeros((n,), bool)
        samp = {f: np.zeros((n,), t) for f, t in _SAMPLING}
        for row, (i, take) in enumerate(rows):
            slot = self.slots[i]
            a = slot.prefilled
            tokens[row, :take], start[row], count[row] = slot.prompt[a:a + take], a, take
            final[row], slot_ids[row], max_new[row] = a + take == len(slot.prompt), i, slot.max_new
            self._row_settings(row, slot.request, keys, adapter, chat, samp)
            slot.prefilled += take
        engine.stats["prefill_tokens"] += sum(t for _, t in rows)
        engine.stats["prefill_pieces"] += 1
        piece = kernels.Piece(tokens, start, count, final, slot_ids, max_new, keys, adapter, chat,
                              RowParams(**samp))
        state, first, toks, finish = engine.mixed_step(state, piece, k_cap)
        stepped = self._append(engine.to_host(toks)[:, None]) if s.mixed_batches else []
        first = engine.to_host(first)
        for row, (i, _) in enumerate(rows):
            if final[row]:
                self.slots[i].prompt = None
                self.slots[i].tokens.append(int(first[row]))
                self.made += 1
        return state, stepped, engine.to_host(finish)

"""The generation engine: continuous batching over fixed decode slots.

Callers submit `Request`s and get `Completion`s back in input order (see request.py);
slots, caches and devices stay in here. When a slot's sequence ends (EOS, a stop string
or its length limit) the next pending prompt is prefilled into that slot while the
other slots keep decoding. `mode="static"` refills only when every slot is free: the
baseline that continuous batching is measured against.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from selflengthen_jax.checkpoint.loader import LoadedModel, param_shardings, per_layer_shardings
from selflengthen_jax.checkpoint.tokenizer import chat_prompt
from selflengthen_jax.config import EngineSection
from selflengthen_jax.metrics import profile
from selflengthen_jax.models.lora import stack_adapters
from selflengthen_jax.models.transformer import CACHE_BLOCK, K_CACHE_AXES, V_CACHE_AXES, forward, per_layer
from selflengthen_jax.parallel.placement import put, replicated, to_host
from selflengthen_jax.parallel.rules import Rules, named
from selflengthen_jax.sampling import decode_state as ds
from selflengthen_jax.sampling.request import Completion, FinishReason, Request
from selflengthen_jax.sampling.sampler import RowParams
from selflengthen_jax.sampling.stops import first_stop

CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>")
STOP_WINDOW = 16  # tokens re-decoded before a chunk's new ones when looking for stops


@dataclasses.dataclass
class _Slot:
    index: int           # position of the request in the caller's list
    request: Request
    prompt_len: int
    max_new: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    checked: int = 0     # tokens already searched for stop strings


def cache_length(section: EngineSection) -> int:
    """The KV cache length: prompt plus output room, in whole blocks for cached attention."""
    room = section.max_prefill_len + section.max_new_tokens
    return -(-room // CACHE_BLOCK) * CACHE_BLOCK


def slot_state_shardings(cfg: Any, slots: int, cache_len: int, mesh: Mesh, rules: Rules) -> ds.SlotState:
    """Where each part of the slots' decode state lives on the generation mesh."""
    n = partial(named, mesh, rules)
    vec = n(("batch",), (slots,))
    k_shape, v_shape = ds.KVCache.shapes(cfg, slots, cache_len)
    return ds.SlotState(
        cache=ds.KVCache(n(K_CACHE_AXES, k_shape), n(V_CACHE_AXES, v_shape)),
        last_token=vec, pos=vec, n_gen=vec, max_new=vec,
        done=vec, seen=n(("batch", None), (slots, cfg.vocab_size)), keys=n(("batch", None), (slots, 2)),
        adapter=vec, sampling=RowParams(vec, vec, vec, vec, vec))


def empty_state_fn(cfg: Any, slots: int, cache_len: int, dtype: Any,
                   shardings: ds.SlotState) -> Callable[[], ds.SlotState]:
    """jit(empty_state) with the state's out_shardings: each device makes only its own
    shards of the KV cache, so no full-size cache ever exists on one device or the host."""
    return jax.jit(partial(ds.empty_state, cfg, slots, cache_len, dtype), out_shardings=shardings)


def kernel(kind: str, cfg: Any, section: EngineSection, k_cap: int, attention_impl: str,
           param_shardings: Any, lora_shardings: Any, state_shardings: ds.SlotState,
           rep: Any) -> Callable:
    """The jitted prefill or decode kernel with explicit shardings; the state is donated."""
    common = dict(cfg=cfg, k_cap=k_cap, attention_impl=attention_impl)
    if kind == "decode":
        fn = partial(ds.decode, chunk=section.decode_chunk, **common)
        return jax.jit(fn, in_shardings=(param_shardings, lora_shardings, state_shardings, rep, rep, rep),
                       out_shardings=(state_shardings, rep), donate_argnums=(2,))
    fn = partial(ds.prefill, **common)
    return jax.jit(fn, in_shardings=(param_shardings, lora_shardings, state_shardings, rep, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(2,))


def logprobs_fn(cfg: Any, attention_impl: str) -> Callable:
    """jit of one sequence's next-token log-probs (the likelihood judge's scoring call)."""
    def fn(params, lora, tokens, seg, adapter_ids):
        kw = {} if lora is None else {"lora": lora, "adapter_ids": adapter_ids}
        logits = forward(params, cfg, tokens, segment_ids=seg, attention_impl=attention_impl, **kw).logits
        return jax.nn.log_softmax(logits[0], axis=-1)
    return jax.jit(fn)


def stack_fn(scales: Sequence[float], mesh: Mesh) -> Callable:
    """jit of `stack_adapters` for adapters with these scales, replicated on the mesh:
    the stack is built on the devices, never on the host."""
    return jax.jit(lambda ads: stack_adapters(list(zip(ads, scales))), out_shardings=replicated(mesh))


def prefill_rows(section: EngineSection) -> int:
    """Rows of the largest prefill `_admit` builds: the largest power-of-two bucket of
    slots whose prompts at full length fit `engine.prefill_tokens` (one row at least)."""
    rows, p = 1, _bucket(section.max_prefill_len, section.max_prefill_len)
    while rows < section.slots and _bucket(rows + 1, section.slots, floor=1) * p <= section.prefill_tokens:
        rows = _bucket(rows + 1, section.slots, floor=1)
    return rows


def _bucket(n: int, cap: int, floor: int = 16) -> int:
    b = floor
    while b < n:
        b *= 2
    return min(b, cap)


class Engine:
    """Generates for many requests on one loaded base model plus optional LoRA adapters."""

    def __init__(self, model: LoadedModel, section: EngineSection, mesh: Mesh, rules: Rules,
                 cache_dtype: Any = None, attention_impl: str = "xla"):
        self.model, self.section, self.mesh, self.rules = model, section, mesh, rules
        self.cfg = model.cfg
        self.tok = model.tokenizer
        self.cache_len = cache_length(section)
        self.cache_dtype = jnp.dtype(cache_dtype or model.cfg.compute_dtype)
        self.attention_impl = attention_impl
        vocab = self.tok.get_vocab()
        end_ids = {vocab[t] for t in CHAT_END_TOKENS if t in vocab}
        self.eos_ids = sorted(set(model.eos_ids) | end_ids)
        self._eos = put(np.asarray(self.eos_ids or [-1], np.int32), replicated(mesh))
        self.params, self.param_shardings = self._weights()
        self.adapter_names: dict[str, int] = {"base": 0}
        self.lora: Any = None
        self._compiled: dict[tuple, Callable] = {}
        self._empty: Callable[[], ds.SlotState] | None = None
        self.stats = collections.Counter()

    @property
    def compile_count(self) -> int:
        """XLA executables built so far by this engine's jitted kernels."""
        return sum(f._cache_size() for f in self._compiled.values())

    # -- weights ----------------------------------------------------------------------------
    def _weights(self) -> tuple[Any, Any]:
        """The params the kernels read, and their shardings, in the configured layout.

        `auto` picks the per-layer layout on CPU, where it saves the copies XLA makes of
        scanned weight slices (see `per_layer`); elsewhere the engine shares the loaded
        (stacked) params and holds no second copy.
        """
        stacked = param_shardings(self.cfg, self.mesh, self.rules)
        if self.section.layout_on(self.mesh.devices.flat[0].platform) == "stacked":
            return self.model.params, stacked
        shardings = per_layer_shardings(self.cfg, self.mesh, self.rules)
        convert = jax.jit(partial(per_layer, cfg=self.cfg), in_shardings=(stacked,), out_shardings=shardings)
        return convert(self.model.params), shardings

    # -- adapters ---------------------------------------------------------------------------
    def set_adapters(self, adapters: dict[str, tuple[Any, float]]) -> None:
        """Register LoRA adapters by name (e.g. generator, extender): one base in memory.

        Adapters are stacked with the zero adapter at index 0 ("base"); a request picks
        one by name and rows of different adapters share a batch.
        """
        names = list(adapters)
        self.adapter_names = {"base": 0, **{n: i + 1 for i, n in enumerate(names)}}
        stack = stack_fn([float(adapters[n][1]) for n in names], self.mesh)
        self.lora = None if not names else stack([adapters[n][0] for n in names])
        self._compiled.clear()

    # -- shardings --------------------------------------------------------------------------
    def _state_shardings(self) -> ds.SlotState:
        return slot_state_shardings(self.cfg, self.section.slots, self.cache_len, self.mesh, self.rules)

    def _empty_state(self) -> ds.SlotState:
        if self._empty is None:  # one compile per engine
            self._empty = empty_state_fn(self.cfg, self.section.slots, self.cache_len, self.cache_dtype,
                                         self._state_shardings())
        return self._empty()

    def _lora_sharding(self) -> Any:
        return None if self.lora is None else jax.tree.map(lambda _: replicated(self.mesh), self.lora)

    def _fn(self, kind: str, k_cap: int) -> Callable:
        key = (kind, k_cap, self.lora is None)
        if key not in self._compiled:
            self._compiled[key] = kernel(kind, self.cfg, self.section, k_cap, self.attention_impl,
                                         self.param_shardings, self._lora_sharding(),
                                         self._state_shardings(), replicated(self.mesh))
        return self._compiled[key]

    # -- prompts ----------------------------------------------------------------------------
    def prompt_ids(self, req: Request) -> list[int]:
        if req.messages is not None:
            text = chat_prompt(self.tok, req.messages)
            return self.tok.encode(text, add_special_tokens=False)
        bos = self.tok.bos_token
        add = bool(bos) and not req.prompt.startswith(bos)
        return self.tok.encode(req.prompt, add_special_tokens=add)

    def _k_cap(self, requests: Sequence[Request]) -> int:
        sampled = [r.params for r in requests if not (r.params.greedy or r.params.temperature <= 0)]
        if not sampled:
            return 1
        if any(p.top_k <= 0 for p in sampled):
            return self.cfg.vocab_size
        return min(max(p.top_k for p in sampled), self.cfg.vocab_size)

    # -- the loop ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], progress: bool = False,
                 on_complete: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """Run all requests; results come back in input order.

        `on_complete(index, completion)` is called as each finishes (callers append to
        their store there, so a crash loses only unfinished requests).
        """
        for r in requests:
            if r.adapter not in self.adapter_names:
                raise ValueError(f"request {r.id!r} asks for adapter {r.adapter!r}; "
                                 f"registered: {', '.join(self.adapter_names)}")
        prompts = [self.prompt_ids(r) for r in requests]
        for r, ids in zip(requests, prompts):
            if not 0 < len(ids) <= self.section.max_prefill_len:
                raise ValueError(f"request {r.id!r}: prompt has {len(ids)} tokens; "
                                 f"engine.max_prefill_len is {self.section.max_prefill_len}")
        k_cap = self._k_cap(requests)
        results: list[Completion | None] = [None] * len(requests)
        pending = collections.deque(range(len(requests)))
        slots: list[_Slot | None] = [None] * self.section.slots
        state = self._empty_state() if requests else None
        bar = tqdm(total=len(requests), disable=not progress, unit="req", dynamic_ncols=True)
        start, made = time.perf_counter(), 0

        def finish(i: int, slot: _Slot, reason: FinishReason, ids: list[int]) -> None:
            text = self.tok.decode(ids, skip_special_tokens=True)
            if reason == "stop":
                text = text[:first_stop(text, slot.request.params.stop)]
            done = Completion(slot.request.id, text, tuple(ids), slot.prompt_len, reason)
            results[slot.index] = done
            slots[i] = None
            bar.update(1)
            if on_complete:
                on_complete(slot.index, done)

        while pending or any(slots):
            free = [i for i, s in enumerate(slots) if s is None]
            if pending and free and (self.section.mode == "continuous" or len(free) == len(slots)):
                admitted = self._admit(pending, len(free), prompts)
                state, first = self._prefill(state, admitted, free, requests, prompts, slots, k_cap)
                for i, tok in zip(free, first):
                    if slots[i] is not None:
                        slots[i].tokens.append(int(tok))
                        made += 1
            if not any(slots):
                continue
            state = self._release(state, slots, finish)
            if not any(slots):
                continue
            steps, exit_early = self._chunk_plan(slots, bool(pending))
            wall, cpu = time.perf_counter(), time.process_time()
            state, toks = self._fn("decode", k_cap)(self.params, self.lora, state, self._eos,
                                                    steps, exit_early)
            toks = to_host(toks)
            profile.tick("decode")
            self._count_decode(toks, time.perf_counter() - wall, time.process_time() - cpu)
            for i, slot in enumerate(slots):
                if slot is not None:
                    new = [int(t) for t in toks[i] if t >= 0]
                    slot.tokens.extend(new)
                    made += len(new)
            state = self._release(state, slots, finish)
            bar.set_postfix(tok_s=f"{made / (time.perf_counter() - start):.0f}")
        bar.close()
        self.stats["tokens"] += made
        return results  # type: ignore[return-value]

    def _count_decode(self, toks: np.ndarray, wall: float, cpu: float) -> None:
        """Decode-kernel totals in `stats`: calls, steps run, wall and process CPU seconds
        (host sync included, prefill and stop checks not), for per-step cost."""
        self.stats["decode_calls"] += 1
        self.stats["decode_steps"] += int((toks >= 0).sum(axis=1).max())
        self.stats["decode_s"] += wall
        self.stats["decode_cpu_s"] += cpu

    def _admit(self, pending: collections.deque, free: int, prompts: list[list[int]]) -> list[int]:
        """Next prompts for free slots, as many as fit `prefill_tokens` at their bucket length."""
        admitted = [pending.popleft()]
        while pending and len(admitted) < free:
            rows = _bucket(len(admitted) + 1, self.section.slots, floor=1)
            longest = max(len(prompts[j]) for j in [*admitted, pending[0]])
            if rows * _bucket(longest, self.section.max_prefill_len) > self.section.prefill_tokens:
                break
            admitted.append(pending.popleft())
        return admitted

    def _chunk_plan(self, slots: list[_Slot | None], pending: bool) -> tuple[jax.Array, jax.Array]:
        """How many steps to run before the host looks again.

        With prompts waiting, stop when the first slot reaches its token budget (known in
        advance) or ends early (EOS, seen on device), so its slot is refilled at once.
        """
        steps = self.section.decode_chunk
        if pending and self.section.mode == "continuous":
            steps = min([steps] + [s.max_new - len(s.tokens) for s in slots if s is not None])
        rep = replicated(self.mesh)
        exit_early = pending and self.section.mode == "continuous"
        return put(np.int32(max(steps, 1)), rep), put(np.bool_(exit_early), rep)

    def _prefill(self, state, admitted, free, requests, prompts, slots, k_cap):
        n = _bucket(len(admitted), self.section.slots, floor=1)
        p = _bucket(max(len(prompts[j]) for j in admitted), self.section.max_prefill_len)
        tokens = np.zeros((n, p), np.int32)
        length = np.ones((n,), np.int32)
        slot = np.full((n,), -1, np.int32)
        max_new = np.ones((n,), np.int32)
        keys = np.zeros((n, 2), np.uint32)
        adapter = np.zeros((n,), np.int32)
        samp = {f: np.zeros((n,), t) for f, t in (("temperature", np.float32), ("top_k", np.int32),
                                                   ("top_p", np.float32), ("repetition_penalty", np.float32),
                                                   ("greedy", bool))}
        for row, (j, i) in enumerate(zip(admitted, free)):
            req, ids = requests[j], prompts[j]
            budget = min(req.params.max_new_tokens, self.section.max_new_tokens, self.cache_len - len(ids))
            tokens[row, :len(ids)] = ids
            length[row], slot[row], max_new[row] = len(ids), i, budget
            keys[row] = np.asarray(jax.random.key_data(jax.random.PRNGKey(req.params.seed)))
            adapter[row] = self.adapter_names[req.adapter]
            for f in samp:
                samp[f][row] = getattr(req.params, f)
            slots[i] = _Slot(j, req, len(ids), budget)
        rep = replicated(self.mesh)
        rows = ds.NewRows(*(put(a, rep) for a in (tokens, length, slot, max_new, keys, adapter)),
                          sampling=RowParams(**{f: put(a, rep) for f, a in samp.items()}))
        state, first = self._fn("prefill", k_cap)(self.params, self.lora, state, rows, self._eos)
        return state, to_host(first)[:len(admitted)]

    def _release(self, state, slots, finish):
        """Finish slots that hit EOS, their budget or a stop string; free them on device."""
        ended = []
        for i, slot in enumerate(slots):
            if slot is None:
                continue
            reason, ids = self._finished(slot)
            if reason is not None:
                finish(i, slot, reason, ids)
                ended.append(i)
        if ended:
            mask = np.zeros((self.section.slots,), bool)
            mask[ended] = True
            state = state._replace(done=state.done | put(mask, state.done.sharding))
        return state

    def _finished(self, slot: _Slot) -> tuple[FinishReason | None, list[int]]:
        ids = slot.tokens
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                ids = ids[:k]
                return self._stop_within(slot, ids) or ("eos", ids)
        hit = self._stop_within(slot, ids)
        if hit:
            return hit
        if len(ids) >= slot.max_new:
            return "length", ids[:slot.max_new]
        slot.checked = len(ids)
        return None, ids

    def _stop_within(self, slot: _Slot, ids: list[int]) -> tuple[FinishReason, list[int]] | None:
        """The shortest prefix of ids whose text holds a stop string, among the new tokens."""
        stops = slot.request.params.stop
        if not stops or len(ids) <= slot.checked:
            return None
        lo = max(0, slot.checked - STOP_WINDOW)
        if first_stop(self.tok.decode(ids[lo:], skip_special_tokens=True), stops) is None:
            return None
        for k in range(max(lo, 1), len(ids) + 1):
            if first_stop(self.tok.decode(ids[lo:k], skip_special_tokens=True), stops) is not None:
                return "stop", ids[:k]
        return "stop", ids

    # -- scoring ----------------------------------------------------------------------------
    def loglikelihood(self, pairs: Sequence[tuple[str, str]], adapter: str = "base") -> list[float]:
        """Sum of log-probs of each continuation given its (raw, templated) prompt text."""
        out = []
        for prompt, cont in pairs:
            p_ids = self.tok.encode(prompt, add_special_tokens=False)
            c_ids = self.tok.encode(cont, add_special_tokens=False)
            ids = (p_ids + c_ids)[-self.section.max_prefill_len:]
            n = _bucket(len(ids), self.section.max_prefill_len)
            tokens = np.zeros((1, n), np.int32)
            tokens[0, :len(ids)] = ids
            lp = self._logprobs(tokens, len(ids), self.adapter_names[adapter])
            out.append(float(lp[len(ids) - len(c_ids) - 1: len(ids) - 1][
                np.arange(len(c_ids)), c_ids].sum()))
        return out

    def _logprobs(self, tokens: np.ndarray, length: int, adapter: int) -> np.ndarray:
        key = ("logprobs", tokens.shape, self.lora is None)
        if key not in self._compiled:
            self._compiled[key] = logprobs_fn(self.cfg, self.attention_impl)
        seg = (np.arange(tokens.shape[1])[None] < length).astype(np.int32)
        rep = replicated(self.mesh)
        return to_host(self._compiled[key](self.params, self.lora, put(tokens, rep),
                                           put(seg, rep), put(np.asarray([adapter], np.int32), rep)))

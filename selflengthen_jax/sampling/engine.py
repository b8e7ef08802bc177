"""The generation engine: one loaded model, its adapters, and the public kernel API.

Callers submit `Request`s to `generate` and get `Completion`s back in input order (see
request.py); slots, caches and devices stay in here and in the scheduler. The public
methods are the seam that the scheduler, the benchmarks and the rehearsal all use:

* `empty_state()`: every slot free, made inside jit with the state's shardings;
* `prefill(state, rows, k_cap)`: JetStream's prefill + insert (new prompts into slots);
* `mixed_step(state, piece, k_cap)`: one piece of prompts (chunked prefill), with one
  decode step for the decoding slots riding on it (`engine.mixed_batches`);
* `decode(state, steps, exit_on_finish, k_cap)`: one chunk of decode steps;
* `score(...)` / `loglikelihood(...)`: continuation log-probs, batched on device;
* `kernel(kind, k_cap)`: the jitted function behind each, for AOT lowering.

Which requests run and when (continuous batching) is `scheduler.py`'s business.
"""

from __future__ import annotations

import collections
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from selflengthen_jax.checkpoint.loader import LoadedModel
from selflengthen_jax.checkpoint.tokenizer import chat_prompt, end_of_turn_ids
from selflengthen_jax.config import EngineSection
from selflengthen_jax.models.lora import stack_adapters
from selflengthen_jax.models.attention import Backend
from selflengthen_jax.models.attention.cache import CACHE_BLOCK, KVCache
from selflengthen_jax.models import weight_layout
from selflengthen_jax.parallel.placement import arrange_weights, put, replicated, to_host
from selflengthen_jax.parallel.rules import Rules, attention_backend, named
from selflengthen_jax.sampling import kernels
from selflengthen_jax.sampling.request import Completion, Request
from selflengthen_jax.sampling.sampler import RowParams
from selflengthen_jax.sampling.scheduler import Scheduler, admit, bucket


def _padded_ids(ids: Sequence[int]) -> np.ndarray:
    return np.asarray(list(ids) or [-1], np.int32)


# The engine's shapes, shardings and kernels as plain functions of the config, so the
# memory planner and the TPU rehearsal build exactly what a real engine runs, with no
# weights loaded. The `Engine` methods below delegate to them.

def cache_length(section: EngineSection) -> int:
    """The KV cache length: prompt plus output room, in whole blocks for cached attention."""
    room = section.max_prefill_len + section.max_new_tokens
    return -(-room // CACHE_BLOCK) * CACHE_BLOCK


def piece_tokens(section: EngineSection) -> int:
    """Tokens in the largest prompt piece the scheduler builds: one row of a long prompt,
    `prefill_chunk` of it, at its bucket length."""
    return bucket(section.max_prefill_len, section.prefill_chunk)


def prefill_rows(section: EngineSection) -> int:
    """Rows of the largest prefill the scheduler builds: the largest power-of-two bucket
    of slots whose prompts at full length fit `engine.prefill_tokens` (one row at least)."""
    rows, p = 1, bucket(section.max_prefill_len, section.max_prefill_len)
    while rows < section.slots and bucket(rows + 1, section.slots, floor=1) * p <= section.prefill_tokens:
        rows = bucket(rows + 1, section.slots, floor=1)
    return rows


def slot_state_shardings(cfg: Any, slots: int, cache_len: int, mesh: Mesh, rules: Rules,
                         attention: Backend) -> kernels.SlotState:
    """The NamedSharding of every leaf of the slots' decode state on the generation mesh
    (the cache's from its layout's logical axes)."""
    n = partial(named, mesh, rules)
    vec = n(("batch",), (slots,))
    layout = attention.layout
    (k_axes, v_axes), (k_shape, v_shape) = layout.axes(), layout.shapes(cfg, slots, cache_len)
    return kernels.SlotState(
        cache=KVCache(n(k_axes, k_shape), n(v_axes, v_shape)),
        last_token=vec, pos=vec, n_gen=vec, max_new=vec, finish=vec,
        seen=n(("batch", None), (slots, cfg.vocab_size)), keys=n(("batch", None), (slots, 2)), adapter=vec,
        chat=vec, sampling=RowParams(vec, vec, vec, vec, vec))


def stack_fn(scales: Sequence[float], dtype: Any, mesh: Mesh) -> Callable:
    """jit of `stack_adapters` for adapters with these scales, in `dtype`, replicated on
    the mesh: the stack is built on the devices, never on the host."""
    def stack(ads: Sequence[Any]) -> Any:
        return jax.tree.map(lambda x: x.astype(dtype), stack_adapters(list(zip(ads, scales))))
    return jax.jit(stack, out_shardings=replicated(mesh))


def kernel(kind: str, cfg: Any, section: EngineSection, k_cap: int, attention: Backend,
           param_sh: Any, lora_sh: Any, state_sh: kernels.SlotState, mesh: Mesh,
           cache_dtype: Any) -> Callable:
    """The jitted kernel `kind` ("empty", "prefill", "mixed", "decode", "release",
    "score") with explicit shardings; kernels that take the state donate it.

    Signatures are those of `kernels.<kind>` with the keyword-only settings bound:
    prefill(params, lora, state, rows, ends), mixed = mixed_step(params, lora, state,
    piece, ends), decode(params, lora, state, ends, steps, exit_on_finish),
    release(state, mask), score(params, lora, rows), empty().
    """
    rep = replicated(mesh)
    common = dict(cfg=cfg, attention=attention)
    if kind == "empty":
        return jax.jit(partial(kernels.empty_state, cfg, section.slots, cache_length(section), cache_dtype,
                               attention),
                       out_shardings=state_sh)
    if kind == "release":
        return jax.jit(kernels.release, in_shardings=(state_sh, rep), out_shardings=state_sh,
                       donate_argnums=(0,))
    if kind == "score":
        return jax.jit(partial(kernels.score, **common), in_shardings=(param_sh, lora_sh, rep),
                       out_shardings=rep)
    if kind == "decode":
        fn = partial(kernels.decode, chunk=section.decode_chunk, k_cap=k_cap, **common)
        return jax.jit(fn, in_shardings=(param_sh, lora_sh, state_sh, rep, rep, rep),
                       out_shardings=(state_sh, rep, rep), donate_argnums=(2,))
    if kind == "mixed":
        fn = partial(kernels.mixed_step, k_cap=k_cap, decode=section.mixed_batches, **common)
        return jax.jit(fn, in_shardings=(param_sh, lora_sh, state_sh, rep, rep), out_shardings=(state_sh, rep, rep),
                       donate_argnums=(2,))
    if kind == "prefill":
        return jax.jit(partial(kernels.prefill, k_cap=k_cap, **common),
                       in_shardings=(param_sh, lora_sh, state_sh, rep, rep), out_shardings=(state_sh, rep),
                       donate_argnums=(2,))
    raise ValueError(f"unknown kernel {kind!r}")


class Engine:
    """Generates for many requests on one loaded base model plus optional LoRA adapters."""

    def __init__(self, model: LoadedModel, section: EngineSection, mesh: Mesh, rules: Rules,
                 cache_dtype: Any = None, attention_impl: str = "auto"):
        self.model, self.section, self.mesh, self.rules = model, section, mesh, rules
        self.cfg = model.cfg
        self.tok = model.tokenizer
        self.cache_len = cache_length(section)
        self.cache_dtype = jnp.dtype(cache_dtype or model.cfg.compute_dtype)
        self.attention = attention_backend(attention_impl, mesh, rules)   # kernels and cache layout
        # What ends a row: the checkpoint's own EOS ids for every request, and the chat
        # template's end-of-turn token for chat requests (as transformers and vLLM stop).
        self.eos_ids = sorted(model.eos_ids)
        self.turn_ids = end_of_turn_ids(self.tok)
        self._turn_text = [self.tok.convert_ids_to_tokens(t) for t in self.turn_ids]
        rep = replicated(mesh)
        self.ends = kernels.Ends(put(_padded_ids(self.eos_ids), rep), put(_padded_ids(self.turn_ids), rep))
        self.params, self.param_shardings = self._weights()
        self.adapter_names: dict[str, int] = {"base": 0}
        self.lora: Any = None
        self._compiled: dict[tuple, Callable] = {}
        self.stats = collections.Counter()

    @property
    def compile_count(self) -> int:
        """XLA executables built so far by this engine's jitted kernels."""
        return sum(f._cache_size() for f in self._compiled.values())

    # -- weights ----------------------------------------------------------------------------
    def _weights(self) -> tuple[Any, Any]:
        """The params the kernels read, and their shardings, in the configured layout
        (`models.weight_layout`: on CPU a per-layer copy; elsewhere the loaded params)."""
        layout = weight_layout.choose(self.section.weight_layout, self.mesh.devices.flat[0].platform)
        return arrange_weights(layout, self.model.params, self.cfg, self.mesh, self.rules)

    # -- adapters ---------------------------------------------------------------------------
    def set_adapters(self, adapters: dict[str, tuple[Any, float]]) -> None:
        """Register LoRA adapters by name (e.g. generator, extender): one base in memory.

        Adapters are stacked with the zero adapter at index 0 ("base"); a request picks
        one by name and rows of different adapters share a batch. They are stored in the
        compute dtype and passed to the kernels as arguments, so new adapters of the same
        count and rank (every iteration after the first) reuse the compiled kernels.
        """
        names = list(adapters)
        self.adapter_names = {"base": 0, **{n: i + 1 for i, n in enumerate(names)}}
        if not names:
            self.lora = None
            return
        stack = stack_fn([float(adapters[n][1]) for n in names], jnp.dtype(self.cfg.compute_dtype), self.mesh)
        self.lora = stack([adapters[n][0] for n in names])

    def adapter_index(self, name: str) -> int:
        return self.adapter_names[name]

    # -- shardings and state ----------------------------------------------------------------
    def state_shardings(self) -> kernels.SlotState:
        """The NamedSharding of every leaf of the slot state."""
        return slot_state_shardings(self.cfg, self.section.slots, self.cache_len, self.mesh, self.rules,
                                    self.attention)

    def _lora_sharding(self) -> Any:
        return None if self.lora is None else jax.tree.map(lambda _: replicated(self.mesh), self.lora)

    def empty_state(self) -> kernels.SlotState:
        """Every slot free, created on the devices with the state's shardings (never via the host)."""
        return self.kernel("empty", 0)()

    def kernel(self, kind: str, k_cap: int) -> Callable:
        """The jitted kernel `kind` (see the module-level `kernel`), compiled once per
        engine and k_cap; exposed for AOT lowering, callers otherwise use the methods below."""
        key = (kind, k_cap, self.lora is None, self.section.mixed_batches if kind == "mixed" else None)
        if key not in self._compiled:
            self._compiled[key] = kernel(kind, self.cfg, self.section, k_cap, self.attention,
                                         self.param_shardings, self._lora_sharding(), self.state_shardings(),
                                         self.mesh, self.cache_dtype)
        return self._compiled[key]

    # -- the public kernels -----------------------------------------------------------------
    def _replicated(self, tree: Any) -> Any:
        rep = replicated(self.mesh)
        return jax.tree.map(lambda a: put(np.asarray(a), rep), tree)

    def prefill(self, state: kernels.SlotState, rows: kernels.NewRows,
                k_cap: int) -> tuple[kernels.SlotState, jax.Array]:
        """Admit `rows` (host arrays) into their slots; returns the state and first tokens [n]."""
        return self.kernel("prefill", k_cap)(self.params, self.lora, state, self._replicated(rows), self.ends)

    def mixed_step(self, state: kernels.SlotState, piece: kernels.Piece,
                   k_cap: int) -> tuple[kernels.SlotState, jax.Array, jax.Array, jax.Array]:
        """Prefill one piece of prompts into their slots (chunked prefill) and, with
        `engine.mixed_batches`, step every decoding slot once in the same pass. Returns the
        state, the first tokens [n] of rows on their final piece, the decode tokens
        [slots] (-1: none) and the finish codes [slots]."""
        state, first, toks = self.kernel("mixed", k_cap)(self.params, self.lora, state, self._replicated(piece),
                                                         self.ends)
        return state, first, toks, state.finish

    def decode(self, state: kernels.SlotState, steps: int, exit_on_finish: bool,
               k_cap: int) -> tuple[kernels.SlotState, jax.Array, jax.Array]:
        """Up to `steps` decode steps for every slot (asynchronous: nothing is fetched).
        Returns the state, the tokens [slots, decode_chunk] (-1: none) and finish codes [slots]."""
        rep = replicated(self.mesh)
        return self.kernel("decode", k_cap)(self.params, self.lora, state, self.ends,
                                            put(np.int32(steps), rep), put(np.bool_(exit_on_finish), rep))

    def release(self, state: kernels.SlotState, slots: Sequence[int]) -> kernels.SlotState:
        """Free the given slots on the device (the host ended them)."""
        mask = np.zeros((self.section.slots,), bool)
        mask[list(slots)] = True
        return self.kernel("release", 0)(state, put(mask, replicated(self.mesh)))

    @staticmethod
    def to_host(x: jax.Array) -> np.ndarray:
        return to_host(x)

    def count_decode(self, toks: np.ndarray, wall: float, cpu: float) -> None:
        """Decode-kernel totals in `stats`: calls, steps run, wall and process CPU seconds
        (host sync included, prefill and stop checks not), for per-step cost."""
        self.stats["decode_calls"] += 1
        self.stats["decode_steps"] += int((toks >= 0).sum(axis=1).max())
        self.stats["decode_s"] += wall
        self.stats["decode_cpu_s"] += cpu

    # -- prompts ----------------------------------------------------------------------------
    def prompt_ids(self, req: Request) -> list[int]:
        if req.messages is not None:
            text = chat_prompt(self.tok, req.messages)
            return self.tok.encode(text, add_special_tokens=False)
        bos = self.tok.bos_token
        add = bool(bos) and not req.prompt.startswith(bos)
        return self.tok.encode(req.prompt, add_special_tokens=add)

    def is_chat(self, req: Request) -> bool:
        """Whether the end-of-turn token ends this request: chat messages, or a raw prompt
        that already holds a templated turn (e.g. an assistant turn continued)."""
        return req.messages is not None or any(t in req.prompt for t in self._turn_text)

    def k_cap(self, requests: Sequence[Request]) -> int:
        """Candidates the sampler keeps per row: the largest top_k asked (1 if all greedy)."""
        sampled = [r.params for r in requests if not (r.params.greedy or r.params.temperature <= 0)]
        if not sampled:
            return 1
        if any(p.top_k <= 0 for p in sampled):
            return self.cfg.vocab_size
        return min(max(p.top_k for p in sampled), self.cfg.vocab_size)

    # -- generation -------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], progress: bool = False,
                 on_complete: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """Run all requests; results come back in input order.

        `on_complete(index, completion)` is called as each finishes (callers append to
        their store there, so a crash loses only unfinished requests). A prompt longer
        than `max_prefill_len` finishes at once as `prompt_too_long`, alone.
        """
        for r in requests:
            if r.adapter not in self.adapter_names:
                raise ValueError(f"request {r.id!r} asks for adapter {r.adapter!r}; "
                                 f"registered: {', '.join(self.adapter_names)}")
        return Scheduler(self, requests, on_complete, progress).run()

    # -- scoring ----------------------------------------------------------------------------
    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
              adapter: str = "base") -> list[list[float]]:
        """Summed log-probs of each prompt's continuations (token ids), one prompt forward
        for all of them, in batches of up to `slots` prompts within `prefill_tokens`.

        A prompt that leaves no room for its longest continuation within
        `max_prefill_len` keeps its last tokens (the end of a prompt holds the question).
        """
        out: list[list[float]] = [[] for _ in prompts]
        longest = max((len(c) for cs in continuations for c in cs), default=1)
        width = bucket(max(longest, 1), self.section.max_prefill_len, floor=1)
        room = self.section.max_prefill_len - width
        if room <= 0:
            raise ValueError(f"a continuation of {longest} tokens leaves no room for its prompt "
                             f"within engine.max_prefill_len={self.section.max_prefill_len}")
        ids = [list(p)[-room:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        pending = collections.deque(order)
        while pending:
            s = self.section
            group = admit(pending, s.slots, [len(x) for x in ids], s.slots, s.max_prefill_len, s.prefill_tokens)
            n_conts = max(1, *(len(continuations[i]) for i in group))
            rows = self._score_rows(group, ids, continuations, n_conts, width, self.adapter_names[adapter])
            sums = to_host(self.kernel("score", 0)(self.params, self.lora, self._replicated(rows)))
            for r, i in enumerate(group):
                out[i] = [float(x) for x in sums[r, :len(continuations[i])]]
        return out

    def _score_rows(self, group: list[int], ids: list[list[int]], continuations, n_conts: int, width: int,
                    adapter: int) -> kernels.ScoreRows:
        n = bucket(len(group), self.section.slots, floor=1)
        p = bucket(max(len(ids[i]) for i in group), self.section.max_prefill_len)
        tokens, length = np.zeros((n, p), np.int32), np.ones((n,), np.int32)
        conts, cont_len = np.zeros((n, n_conts, width), np.int32), np.zeros((n, n_conts), np.int32)
        for r, i in enumerate(group):
            tokens[r, :len(ids[i])], length[r] = ids[i], len(ids[i])
            for j, c in enumerate(continuations[i]):
                conts[r, j, :len(c)], cont_len[r, j] = c, len(c)
        return kernels.ScoreRows(tokens, length, conts, cont_len, np.full((n,), adapter, np.int32))

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], adapter: str = "base") -> list[float]:
        """Sum of log-probs of each continuation given its (raw, templated) prompt text;
        pairs that share a prompt share its forward pass."""
        encode = lambda text: self.tok.encode(text, add_special_tokens=False)  # noqa: E731
        heads: dict[str, int] = {}
        for prompt, _ in pairs:
            heads.setdefault(prompt, len(heads))
        conts: list[list[list[int]]] = [[] for _ in heads]
        where = []
        for prompt, cont in pairs:
            h = heads[prompt]
            where.append((h, len(conts[h])))
            conts[h].append(encode(cont))
        sums = self.score([encode(p) for p in heads], conts, adapter)
        return [sums[h][j] for h, j in where]

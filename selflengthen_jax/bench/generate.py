"""Generation throughput: our engine against transformers, a matmul floor, and itself.

Measurements on one random-initialised Qwen2-shaped model, all in one process so
they share the machine's state (the numbers are only comparable within a run):

* Workload A: a full batch with the reference sampling settings, our engine vs
  `transformers` `generate` (torch, KV cache), interleaved, median of repeats.
* The floor: one jitted loop of just the decode step's matmuls at the same batch, with
  the weights passed as arguments so every step reads them from memory. Our per-step
  decode time (prefill excluded) against it says how much the engine spends on
  anything but the unavoidable weight reads and FLOPs.
* Workload B: many requests with long-tailed lengths, continuous vs static batching on
  the same engine; both must return identical tokens (per-request seeds).
* The judge: the yes/no likelihood judge's wall time for `judge_candidates` candidates.
* Shared prefill: the prompt tokens saved on the extension phase's mix (each prompt twice).
* Long prompts mid-decode: chunked vs whole prefill, the decoding slots' tokens/s and
  their longest stall.
* The position curve: decode cost at growing context, against the KV-cache read bound
  from a measured copy bandwidth, and the compile count before and after (the kernel
  must not recompile as the context grows).

The model's vocabulary is a word-level tokenizer with no end-of-sequence token, so both
sides generate exactly the requested number of tokens and the timings compare equal work.

Every comparison is paired in time (interleaved runs, alternating order) because a
shared CPU's load changes by the minute: what is compared saw the same machine. The
floor ratio is also given in CPU time, which other jobs on the machine disturb less.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from selflengthen_jax.checkpoint.hf_export import export_hf
from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.config import ConfigError, EngineSection, MeshSection, check_positive
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params, init_params, lm_head
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.placement import to_host
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import Completion, Request, SamplingParams
from selflengthen_jax.sampling.sampler import RowParams

# The reference Self-Lengthen sampling settings; both sides use exactly these.
REFERENCE = dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """A Qwen2-shaped decoder; the default is ~40M parameters (fp32, tied embeddings)."""

    vocab: int = 32000
    hidden: int = 512
    intermediate: int = 1408
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2

    def config(self, max_positions: int) -> ModelConfig:
        return ModelConfig(
            model_type="qwen2", vocab_size=self.vocab, hidden_size=self.hidden,
            intermediate_size=self.intermediate, num_layers=self.layers, num_heads=self.heads,
            num_kv_heads=self.kv_heads, head_dim=self.hidden // self.heads, rms_norm_eps=1e-6,
            rope_theta=1e6, max_position_embeddings=max_positions, tie_word_embeddings=True,
            attention_bias=True)


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """Sizes of every workload; `FULL` and `QUICK` below are the presets."""

    model: ModelShape = ModelShape()
    batch: int = 8                 # engine slots = workload A batch = floor batch
    prompt_len: int = 64
    new_tokens: int = 256          # workload A
    repeats: int = 3               # workload A timed repeats (after a warm-up)
    decode_chunk: int = 256        # engine.decode_chunk: one host sync per 256 tokens in A
    ragged_requests: int = 48      # workload B
    ragged_min: int = 16
    ragged_max: int = 512
    ragged_median: float = 64.0    # lognormal median of max_new_tokens
    ragged_sigma: float = 1.0
    ragged_repeats: int = 2        # workload B runs per mode (order alternates)
    depths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    depth_steps: int = 16          # decode steps timed at each depth
    floor_steps: int = 32          # steps inside one jitted floor loop
    bandwidth_mib: int = 256       # array copied to measure memory bandwidth
    judge_candidates: int = 200    # yes/no likelihood judge: candidates scored
    shared_texts: int = 24         # extension-phase mix: texts, each asked twice
    long_prompt_len: int = 2048    # long prompts arriving mid-decode (the stage-2 extension shape)
    long_prompts: int = 4
    long_chunk: int = 256          # engine.prefill_chunk with chunking on
    seed: int = 0


FULL = BenchSpec()
QUICK = BenchSpec(new_tokens=32, repeats=1, ragged_requests=16, ragged_repeats=1, ragged_min=4, ragged_max=64,
                  ragged_median=12.0, depths=(512, 2048), depth_steps=4, floor_steps=8,
                  bandwidth_mib=64, judge_candidates=40, shared_texts=8,
                  long_prompt_len=512, long_prompts=2, long_chunk=128)


def check_model_shape(shape: ModelShape, prefix: str = "model.") -> None:
    """The shape builds a model: heads divide the width, KV heads divide the heads
    (sizes are checked positive with the section that holds the shape)."""
    if shape.hidden % shape.heads:
        raise ConfigError(f"{prefix}heads={shape.heads} does not divide {prefix}hidden={shape.hidden}")
    if shape.heads % shape.kv_heads:
        raise ConfigError(f"{prefix}kv_heads={shape.kv_heads} does not divide {prefix}heads={shape.heads}")


def check_spec(spec: BenchSpec) -> BenchSpec:
    """`spec` itself if every workload size makes sense, else one ConfigError naming the key."""
    check_positive(spec, zero_ok=("seed", "ragged_sigma"))
    check_model_shape(spec.model)
    if spec.ragged_min > spec.ragged_max:
        raise ConfigError(f"ragged_min={spec.ragged_min} exceeds ragged_max={spec.ragged_max}")
    return spec


# -- the checkpoint --------------------------------------------------------------------------
def word_tokenizer(vocab_size: int) -> Any:
    """Words "w0".."w{n-1}" as ids 0..n-1, split on whitespace, decoded joined by spaces.

    No special tokens at all: the random model cannot end a sequence early, and any id
    sequence round-trips through text, so our engine and HF see the same prompt ids.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # " ".join for our words
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def load_word_tokenizer(path: Path) -> Any:
    """The word tokenizer, by its class: `AutoTokenizer` on a qwen2 checkpoint always builds
    transformers' byte-level `Qwen2Tokenizer` (and adds <|endoftext|> as EOS), which cannot
    represent a word-level vocabulary."""
    import transformers

    return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


def _init(cfg: ModelConfig, seed: int) -> Params:
    """`init_params` under a cheaper PRNG: threefry makes 40M normals take ~20 s on 2 cores."""
    previous = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    try:
        return jax.block_until_ready(init_params(cfg, seed))
    finally:
        jax.config.update("jax_default_prng_impl", previous)


def build_checkpoint(spec: BenchSpec, root: Path) -> Path:
    """Random weights written as a HF checkpoint directory with our exporter + tokenizer."""
    cfg = spec.model.config(max_positions=max(32768, max(spec.depths, default=0) + 1024))
    tok_dir = root / "tokenizer"
    word_tokenizer(cfg.vocab_size).save_pretrained(tok_dir)
    return export_hf(_init(cfg, spec.seed), cfg, root / "model", tokenizer_dir=tok_dir)


def build_engine(path: Path, spec: BenchSpec, max_new_tokens: int) -> Engine:
    """Our engine on one device, loaded through the same path as production."""
    mesh = make_mesh(MeshSection(data=1), jax.devices()[:1])
    rules = strategy_rules("dp")
    section = EngineSection(slots=spec.batch, max_prefill_len=spec.prompt_len,
                            max_new_tokens=max_new_tokens, decode_chunk=spec.decode_chunk)
    model = dataclasses.replace(load_model(path, mesh, rules), tokenizer=load_word_tokenizer(path), eos_ids=[])
    engine = Engine(model, section, mesh, rules)
    if engine.eos_ids:
        raise RuntimeError(f"benchmark checkpoint must have no EOS ids, got {engine.eos_ids}")
    return engine


@contextlib.contextmanager
def batching(engine: Engine, mode: str, mixed: bool = True) -> Iterator[Engine]:
    """Switch continuous/static (and mixed batches) on one engine: the mode is read per
    `generate` call and is not part of any compiled kernel's key, so both modes share
    the same executables; each mixed setting has its own piece kernel."""
    old = engine.section
    engine.section = dataclasses.replace(old, mode=mode, mixed_batches=mixed)
    try:
        yield engine
    finally:
        engine.section = old


# -- workloads --------------------------------------------------------------------------------
def prompts(n: int, length: int, vocab: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in row) for row in rng.integers(0, vocab, (n, length))]


def requests(texts: Sequence[str], new_tokens: Sequence[int], seed: int = 0) -> list[Request]:
    """Raw-prompt requests with the reference sampling and per-request seeds, no stops."""
    return [Request(id=f"r{i}", prompt=t, params=SamplingParams(
        max_new_tokens=int(n), stop=(), seed=seed + i, **REFERENCE))
        for i, (t, n) in enumerate(zip(texts, new_tokens))]


def ragged_lengths(spec: BenchSpec) -> list[int]:
    """Long-tailed (lognormal, seeded) max_new_tokens clipped to [ragged_min, ragged_max]."""
    rng = np.random.default_rng(spec.seed + 1)
    raw = rng.lognormal(np.log(spec.ragged_median), spec.ragged_sigma, spec.ragged_requests)
    return [int(x) for x in np.clip(np.round(raw), spec.ragged_min, spec.ragged_max)]


def schedule_steps(lengths: Sequence[int], slots: int) -> tuple[int, int]:
    """Decode steps (batch forward passes) static and FIFO continuous batching need for
    these lengths: the ratio time would show if a step cost the same in both modes and
    prefill and refills were free."""
    static = sum(max(lengths[i:i + slots]) for i in range(0, len(lengths), slots))
    ends = list(lengths[:slots])
    for n in lengths[slots:]:
        i = ends.index(min(ends))
        ends[i] += n
    return static, max(ends)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _clocked(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, this process's CPU s, result). CPU time counts only while our threads
    run, so on a machine shared with other jobs it tracks the work done, not the wait."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def warm_up(engine: Engine, texts: Sequence[str]) -> None:
    """Compile every kernel the timed runs use: decode, prefill at each admission bucket
    (continuous batching admits 1..slots prompts at a time, rounded up to 2^k), and the
    mixed step at each bucket of refills riding a decode step (n slots finish together
    while the others decode)."""
    slots, n = engine.section.slots, 1
    while True:
        with batching(engine, "continuous"):
            engine.generate(requests(texts[:n], [2] * n))
        if n >= slots:
            break
        n = min(2 * n, slots)
    n = 1
    while n < slots:
        done = min(n, slots - 1)  # refills, riding the decode step of the slots - done others
        with batching(engine, "continuous", mixed=True):
            engine.generate(requests(texts[:slots + done], [2] * done + [6] * (slots - done) + [2] * done))
        n *= 2


# -- transformers ----------------------------------------------------------------------------
class HFGenerate:
    """`transformers` generate with the same sampling settings, torch fp32, KV cache on."""

    def __init__(self, path: Path):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32).eval()
        self.tok = load_word_tokenizer(path)

    def input_ids(self, texts: Sequence[str]) -> Any:
        ids = [self.tok.encode(t, add_special_tokens=False) for t in texts]
        return self.torch.tensor(ids, dtype=self.torch.long)

    def pick_threads(self, input_ids: Any, new_tokens: int = 4) -> dict[int, float]:
        """Give torch its faster intra-op thread count (1 or all cores), by a short probe.

        On a loaded machine torch's OpenMP barriers can make every op wait for a
        descheduled thread (with the default spinning wait policy we saw 0.5-1 s per
        step with 2 threads, 65 ms with 1; launch.bench_generate sets
        OMP_WAIT_POLICY=PASSIVE, which cures most of it). Called before every timed HF
        run, so HF gets whichever setting is faster at that moment.
        """
        probes = {}
        for n in sorted({1, os.cpu_count() or 1}):
            self.torch.set_num_threads(n)
            self(input_ids, 1)
            probes[n] = _timed(lambda: self(input_ids, new_tokens))[0]
        self.torch.set_num_threads(min(probes, key=probes.get))
        return probes

    def __call__(self, input_ids: Any, new_tokens: int, seed: int = 0) -> Any:
        self.torch.manual_seed(seed)
        with self.torch.inference_mode():
            return self.model.generate(
                input_ids=input_ids, attention_mask=self.torch.ones_like(input_ids),
                do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                use_cache=True, pad_token_id=0, **REFERENCE)


# -- the floor and the bandwidth --------------------------------------------------------------
def _layer_matmuls(cfg: ModelConfig, h: jnp.ndarray, p: dict) -> jnp.ndarray:
    """One layer's q/k/v/o/gate/up/down products for one token per row, joined by cheap
    elementwise glue so every product feeds the next (nothing is dead code)."""
    b, g = h.shape[0], cfg.q_per_kv
    q = h @ p["wq"]
    kv = (h @ p["wk"] + h @ p["wv"]).reshape(b, cfg.num_kv_heads, 1, cfg.head_dim)
    kv = jnp.broadcast_to(kv, (b, cfg.num_kv_heads, g, cfg.head_dim)).reshape(b, -1)
    h = h + (q + kv) @ p["wo"]
    return h + ((h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]


def _head_and_feedback(h: jnp.ndarray, head: jnp.ndarray) -> jnp.ndarray:
    """LM head ([embed, vocab], or [vocab, embed] for a tied embedding read as stored),
    then the next step's input. The full-vocab max keeps XLA from shrinking the head
    matmul to the columns used; tanh keeps values bounded (no inf/denormals)."""
    logits = h @ head if head.shape[0] == h.shape[-1] else jnp.einsum("bd,vd->bv", h, head)
    return jnp.tanh(h) + 1e-6 * jnp.max(logits, axis=-1, keepdims=True)


def _flat_weights(params: Params, cfg: ModelConfig, layer: int | None) -> dict:
    """[in, out] weights of one layer, each copied into its own buffer, or (layer=None)
    all layers stacked [layers, in, out] as the model stores them."""
    out = {}
    for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        w = params["layers"][name]
        n_in = cfg.num_heads * cfg.head_dim if name == "wo" else w.shape[1]
        if layer is None:
            out[name] = w.reshape(w.shape[0], n_in, -1)
        else:
            out[name] = jnp.asarray(np.asarray(w[layer]).reshape(n_in, -1))
    return out


class MatmulFloor:
    """ms per decode step of just the matmuls: the faster of the engine's two weight layouts.

    `unrolled` (the engine's `per_layer` layout): each layer's weights in their own
    buffer, layers unrolled in Python, the head as its own [embed, vocab] buffer.
    `scanned` (`stacked`): stacked weights under `lax.scan`, the head as the model
    stores it. Both put `steps` steps in one jit (`fori_loop`, each step feeding the
    next) so dispatch is amortised; the weights are arguments, so every step reads them
    from memory. Compiled once; each call times one run of each, so the caller can
    interleave it with the runs it is compared to (the machine's load changes by the minute).
    """

    def __init__(self, params: Params, cfg: ModelConfig, batch: int, steps: int):
        self.steps = steps
        stored_head = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]
        self.x0 = jnp.full((batch, cfg.hidden_size), 0.1, jnp.float32)

        def unrolled(weights, x0):
            layers, head = weights
            def step(_, h):
                for p in layers:
                    h = _layer_matmuls(cfg, h, p)
                return _head_and_feedback(h, head)
            return jax.lax.fori_loop(0, steps, step, x0)

        def scanned(weights, x0):
            stacked, head = weights
            def step(_, h):
                h, _ = jax.lax.scan(lambda c, p: (_layer_matmuls(cfg, c, p), None), h, stacked)
                return _head_and_feedback(h, head)
            return jax.lax.fori_loop(0, steps, step, x0)

        head = jnp.asarray(np.asarray(lm_head(params, cfg)))  # its own [embed, vocab] buffer
        layers = [_flat_weights(params, cfg, i) for i in range(cfg.num_layers)]
        self.variants = {
            "unrolled": (jax.jit(unrolled), (layers, head)),
            "scanned": (jax.jit(scanned), (_flat_weights(params, cfg, None), stored_head)),
        }
        self()  # compile

    def __call__(self) -> dict[str, float]:
        wall, cpu = {}, {}
        for name, (fn, weights) in self.variants.items():
            w, c, _ = _clocked(lambda: jax.block_until_ready(fn(weights, self.x0)))
            wall[name], cpu[name] = 1e3 * w / self.steps, 1e3 * c / self.steps
        best = min(wall, key=wall.get)
        return {**{f"{k}_ms_per_step": v for k, v in wall.items()},
                "ms_per_step": wall[best], "cpu_ms_per_step": cpu[best]}


def copy_bandwidth(mib: int, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by a jitted elementwise pass over a big array.

    The input is donated so the output reuses its pages: no page faults in the timing.
    """
    x = jnp.ones((mib << 18,), jnp.float32)
    fn = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    x = jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return 2 * x.nbytes / statistics.median(times)


# -- the measurements -------------------------------------------------------------------------
def workload_a(engine: Engine, hf: HFGenerate, floor: MatmulFloor, spec: BenchSpec,
               texts: Sequence[str]) -> dict:
    """Full batch, reference sampling: ours vs HF, interleaved, medians over repeats.

    Each side is also timed making a single token (prefill + first draw). HF's per-step
    decode time is the difference over new_tokens - 1; ours is the engine's own count
    of time in its decode kernel over the steps it ran (host sync included), which no
    noise in prefill can push below zero. The matmul floor runs in every repeat too,
    and fraction_of_floor is the median of the per-repeat ratios: both sides of each
    ratio saw the same machine load.
    """
    n = spec.new_tokens
    full, one = requests(texts, [n] * len(texts)), requests(texts, [1] * len(texts))
    ids = hf.input_ids(texts)
    ours_ids = [engine.prompt_ids(r) for r in full]
    if ids.tolist() != ours_ids:
        raise RuntimeError("HF and our engine tokenise the prompts differently")
    hf(ids, 2)  # warm-up (ours was warmed up by the caller)
    threads: list[dict] = []
    t = {k: [] for k in ("ours", "ours_1", "hf", "hf_1")}
    ours_cpu: list[float] = []
    lengths_ok = True
    floors: list[dict[str, float]] = []
    ours_steps: list[float] = []
    for r in range(spec.repeats):
        engine.stats.clear()
        dt, out = _timed(lambda: engine.generate(full))
        t["ours"].append(dt)
        lengths_ok &= all(c.completion_tokens == n for c in out)
        steps = max(engine.stats["decode_steps"], 1)
        ours_steps.append(1e3 * engine.stats["decode_s"] / steps)
        ours_cpu.append(1e3 * engine.stats["decode_cpu_s"] / steps)
        t["ours_1"].append(_timed(lambda: engine.generate(one))[0])
        floors.append(floor())
        probe = hf.pick_threads(ids)
        threads.append({"probe_s": probe, "chosen": hf.torch.get_num_threads()})
        dt, seqs = _timed(lambda: hf(ids, n, seed=r))
        t["hf"].append(dt)
        lengths_ok &= tuple(seqs.shape) == (len(texts), spec.prompt_len + n)
        t["hf_1"].append(_timed(lambda: hf(ids, 1, seed=r))[0])
    tokens = len(texts) * n

    def side(total: list[float], single: list[float]) -> dict:
        per_step = [(a - b) / max(n - 1, 1) for a, b in zip(total, single)]
        med = statistics.median(total)
        return {"seconds": total, "seconds_1_token": single, "median_s": med,
                "tokens_per_s": tokens / med, "decode_ms_per_step": 1e3 * statistics.median(per_step),
                "prefill_s": statistics.median(single)}

    ours, theirs = side(t["ours"], t["ours_1"]), side(t["hf"], t["hf_1"])
    # ours is timed around its decode kernel (the engine's own counters): a difference of
    # two whole runs can come out negative when a tiny model's decode is within noise
    ours["decode_ms_per_step_by_difference"] = ours["decode_ms_per_step"]
    ours["decode_ms_per_step"] = statistics.median(ours_steps)
    floor_summary = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    floor_summary |= {
        "samples": floors, "steps_per_run": floor.steps,
        "fraction_of_floor": statistics.median(f["ms_per_step"] / o for f, o in zip(floors, ours_steps)),
        # the same ratio in CPU time: less sensitive to other jobs on the machine
        "fraction_of_floor_cpu": statistics.median(
            f["cpu_ms_per_step"] / o for f, o in zip(floors, ours_cpu)),
        "ours_cpu_ms_per_step": statistics.median(ours_cpu)}
    return {"batch": len(texts), "prompt_len": spec.prompt_len, "new_tokens": n,
            "sampling": REFERENCE, "ours": ours, "hf": theirs, "exact_lengths": lengths_ok,
            "hf_threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "ratio_vs_hf": theirs["median_s"] / ours["median_s"], "floor": floor_summary}


RAGGED_MODES = {"static": ("static", True), "continuous": ("continuous", True),
                "continuous_apart": ("continuous", False)}   # name: (engine.mode, engine.mixed_batches)


TIME_PARTS = ("decode_steps", "decode_s", "prefill_s", "piece_s")  # engine.stats, summed per mode


def workload_b(engine: Engine, spec: BenchSpec, texts: Sequence[str]) -> dict:
    """Long-tailed lengths, continuous vs static batching, same engine and seeds; and
    continuous with each refill prefilled apart from the decode steps (mixed batches
    off), the schedule before refills rode a decode step.

    Repeats alternate the order (forwards, then backwards, ...) so a change in machine
    load during the run does not favour one mode; ratios are of the summed times. Every
    run must return the same tokens per request.
    """
    lengths = ragged_lengths(spec)
    reqs = requests(texts, lengths, seed=1000)
    times: dict[str, list[float]] = {name: [] for name in RAGGED_MODES}
    parts = {name: dict.fromkeys(TIME_PARTS, 0.0) for name in RAGGED_MODES}
    reference: list[Completion] | None = None
    same, exact = True, True
    for r in range(spec.ragged_repeats):
        for mode in list(RAGGED_MODES)[::1 if r % 2 == 0 else -1]:
            engine.stats.clear()
            with batching(engine, *RAGGED_MODES[mode]):
                dt, out = _timed(lambda: engine.generate(reqs))
            times[mode].append(dt)
            for k in TIME_PARTS:
                parts[mode][k] += engine.stats[k]
            reference = reference or out
            same &= all(a.token_ids == b.token_ids for a, b in zip(reference, out))
            exact &= all(len(c.token_ids) == n for c, n in zip(out, lengths))
    t_s, t_c, t_a = sum(times["static"]), sum(times["continuous"]), sum(times["continuous_apart"])
    tokens, slots = sum(lengths), engine.section.slots
    static_steps, cont_steps = schedule_steps(lengths, slots)
    return {"requests": len(reqs), "slots": slots, "max_new_tokens": lengths, "tokens": tokens,
            "static_s": times["static"], "continuous_s": times["continuous"],
            "continuous_apart_s": times["continuous_apart"],
            "static_tokens_per_s": tokens * len(times["static"]) / t_s,
            "continuous_tokens_per_s": tokens * len(times["continuous"]) / t_c,
            "static_decode_steps": static_steps, "continuous_decode_steps": cont_steps,
            "step_ratio": static_steps / cont_steps, "identical_tokens": same, "exact_lengths": exact,
            "ratio_continuous_vs_static": t_s / t_c, "ratio_apart_vs_static": t_s / t_a,
            "time_parts": parts, "ratio_at_static_step_cost": t_s / at_step_cost(parts, "continuous")}


def at_step_cost(parts: dict[str, dict[str, float]], mode: str) -> float:
    """Seconds `mode` would take if each of its decode steps cost what a static one did,
    its prompt work (prefills, pieces) as measured: the schedule's own bound at this
    machine's prefill and decode costs, without the mode's longer contexts or host syncs."""
    static, p = parts["static"], parts[mode]
    return p["decode_steps"] * static["decode_s"] / static["decode_steps"] + p["prefill_s"] + p["piece_s"]


def judge_scoring(engine: Engine, spec: BenchSpec, texts: Sequence[str]) -> dict:
    """The yes/no judge as `phases.judge` runs it: every candidate's prompt scored against
    two one-token answers. Timed after a full warm-up pass (every batch shape compiled)."""
    pairs = [(t, a) for t in texts for a in (" w1", " w2")]
    engine.loglikelihood(pairs)
    times = [_timed(lambda: engine.loglikelihood(pairs))[0] for _ in range(2)]
    return {"candidates": len(texts), "pairs": len(pairs), "seconds": times,
            "median_s": statistics.median(times), "ms_per_candidate": 1e3 * statistics.median(times) / len(texts)}


def shared_prefill(engine: Engine, spec: BenchSpec, texts: Sequence[str]) -> dict:
    """The extension phase's mix in round 1: each text asked twice with the same prompt
    (two extensions per response), ragged lengths, continuous batching. Reports the
    prompt tokens the engine prefilled and those it shared instead."""
    lengths = ragged_lengths(spec)
    reqs = [Request(id=f"x{i}-{k}", prompt=t, params=SamplingParams(
        max_new_tokens=lengths[(2 * i + k) % len(lengths)], stop=(), seed=2 * i + k, **REFERENCE))
        for i, t in enumerate(texts) for k in range(2)]
    before = dict(engine.stats)
    with batching(engine, "continuous"):
        dt, _ = _timed(lambda: engine.generate(reqs))
    done = engine.stats["prefill_tokens"] - before.get("prefill_tokens", 0)
    shared = engine.stats["prefill_tokens_shared"] - before.get("prefill_tokens_shared", 0)
    return {"requests": len(reqs), "prompt_tokens": done + shared, "prefilled_tokens": done,
            "shared_tokens": shared, "saved_fraction": shared / max(done + shared, 1), "seconds": dt}


def long_prompts_mid_decode(path: Path, spec: BenchSpec, texts: Sequence[str]) -> dict:
    """Long prompts admitted while the other slots decode: with chunked prefill (pieces of
    `long_chunk` tokens between decode chunks, each riding a decode step: "chunked"; or
    run apart from the decode steps: "chunked_apart") and without (each prompt in one
    prefill, apart: "whole").

    One slot-full of short prompts with staggered budgets decodes while `long_prompts`
    prompts of `long_prompt_len` tokens wait; each takes a slot as one frees. Reported:
    the short requests' tokens/s until the last of them finished, the run's seconds,
    and the longest time the decoding slots waited between two decode chunks. Runs
    alternate the two settings.
    """
    long_spec = dataclasses.replace(spec, prompt_len=spec.long_prompt_len)
    engine = build_engine(path, long_spec, max(spec.new_tokens, 8 * spec.batch))
    budgets = [spec.new_tokens // 2 + k * spec.new_tokens // spec.batch for k in range(spec.batch)]
    long_texts = prompts(spec.long_prompts, spec.long_prompt_len, spec.model.vocab, spec.seed + 9)
    reqs = requests(list(texts[:spec.batch]) + long_texts, budgets + [8] * spec.long_prompts, seed=3000)
    short_tokens = sum(budgets)
    settings = {"chunked": (spec.long_chunk, True), "chunked_apart": (spec.long_chunk, False),
                "whole": (spec.long_prompt_len, False)}   # name: (engine.prefill_chunk, engine.mixed_batches)
    runs: dict[str, list[dict]] = {k: [] for k in settings}
    old = engine.section
    outs = {}
    for r in range(3):  # the first round compiles; it is not reported
        for name in list(settings)[::1 if r % 2 == 0 else -1]:
            chunk, mixed = settings[name]
            engine.section = dataclasses.replace(old, prefill_chunk=chunk, mixed_batches=mixed)
            engine.stats.clear()
            ended: dict[int, float] = {}
            begun = time.perf_counter()
            outs[name] = engine.generate(reqs, on_complete=lambda i, _: ended.setdefault(i, time.perf_counter()))
            dt, short_s = time.perf_counter() - begun, max(ended[i] for i in range(spec.batch)) - begun
            if r:
                runs[name].append({"seconds": dt, "short_tokens_per_s": short_tokens / short_s,
                                   "longest_stall_s": engine.stats["longest_stall_s"],
                                   "pieces": engine.stats["prefill_pieces"]})
    engine.section = old
    summary = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    return {"slots": spec.batch, "long_prompt_len": spec.long_prompt_len, "long_prompts": spec.long_prompts,
            "chunk": spec.long_chunk, "runs": runs, **summary,
            "identical_tokens": all([c.token_ids for c in outs[name]] == [c.token_ids for c in outs["whole"]]
                                    for name in settings),
            "stall_ratio_whole_vs_chunked": summary["whole"]["longest_stall_s"]
            / max(summary["chunked"]["longest_stall_s"], 1e-9)}


def position_curve(engine: Engine, spec: BenchSpec, bandwidth: float) -> dict:
    """Decode ms/step with every slot at context depth d, for each d in spec.depths.

    Drives the engine's own jitted decode kernel (the one `generate` runs) on a state
    whose rows are placed at position d, so no 8k-token prompt has to be prefilled or
    decoded to get there; attention cost depends on the position, not the cache contents.
    """
    cfg, b, steps = engine.cfg, engine.section.slots, spec.depth_steps
    k_cap = engine.k_cap(requests(["w0"], [steps]))
    sh = engine.state_shardings()
    state = engine.empty_state()
    keys = np.stack([np.asarray(jax.random.key_data(jax.random.PRNGKey(i))) for i in range(b)])
    fixed = dict(
        last_token=np.arange(b, dtype=np.int32) % cfg.vocab_size, n_gen=np.ones(b, np.int32),
        max_new=np.full(b, engine.cache_len, np.int32), finish=np.zeros(b, np.int32),
        keys=keys.astype(np.uint32), adapter=np.zeros(b, np.int32), chat=np.zeros(b, bool),
        sampling=RowParams(np.full(b, REFERENCE["temperature"], np.float32),
                           np.full(b, REFERENCE["top_k"], np.int32),
                           np.full(b, REFERENCE["top_p"], np.float32),
                           np.full(b, REFERENCE["repetition_penalty"], np.float32), np.zeros(b, bool)))

    def chunk(depth: int):
        nonlocal state
        fresh = {k: jax.device_put(v, getattr(sh, k)) for k, v in fixed.items()}  # donated below
        state = state._replace(pos=jax.device_put(np.full(b, depth, np.int32), sh.pos), **fresh)
        state, toks, _ = engine.decode(state, steps, False, k_cap)
        made = int((to_host(toks) >= 0).sum())
        if made != b * steps:
            raise RuntimeError(f"decode at depth {depth} made {made} tokens, expected {b * steps}")

    chunk(spec.depths[0])  # compile
    before = engine.compile_count
    kv_per_pos = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(engine.cache_dtype).itemsize
    weights = sum(x.nbytes for x in jax.tree.leaves(engine.model.params))
    rows = []
    for depth in spec.depths:
        chunk(depth)  # first touch of deeper cache pages stays out of the timing
        ms = 1e3 * statistics.median([_timed(lambda: chunk(depth))[0] for _ in range(2)]) / steps
        kv = b * (depth + steps // 2) * kv_per_pos
        rows.append({"depth": depth, "ms_per_step": ms, "ms_per_token": ms / b, "kv_bytes_per_step": kv,
                     "kv_bound_ms": 1e3 * kv / bandwidth, "weights_bound_ms": 1e3 * weights / bandwidth,
                     "kv_share_of_step": (1e3 * kv / bandwidth) / ms})
    return {"batch": b, "steps_per_chunk": steps, "cache_len": engine.cache_len, "rows": rows,
            "compile_count_before": before, "compile_count_after": engine.compile_count,
            "recompiled": engine.compile_count != before}


def run(spec: BenchSpec = FULL, out_dir: str | Path | None = None,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """All measurements; writes `result.json` into out_dir (when given) and returns it."""
    started = time.perf_counter()
    env = {"python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
           "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        log("building the checkpoint")
        path = build_checkpoint(spec, Path(tmp))
        cfg = spec.model.config(max_positions=0)
        texts = prompts(max(spec.batch, spec.ragged_requests), spec.prompt_len, spec.model.vocab, spec.seed)
        engine = build_engine(path, spec, max(spec.new_tokens, spec.ragged_max))
        hf = HFGenerate(path)
        log("compiling")
        warm_up(engine, texts)
        compiled = engine.compile_count
        log("workload A and the matmul floor")
        floor_fn = MatmulFloor(engine.model.params, engine.cfg, spec.batch, spec.floor_steps)
        a = workload_a(engine, hf, floor_fn, spec, texts[:spec.batch])
        floor = a.pop("floor")
        del hf, floor_fn
        log("workload B")
        b = workload_b(engine, spec, texts[:spec.ragged_requests])
        compile_ab = {"after_warm_up": compiled, "after_workloads": engine.compile_count}
        log("judge scoring and shared prefill")
        judge = judge_scoring(engine, spec, prompts(spec.judge_candidates, spec.prompt_len,
                                                    spec.model.vocab, spec.seed + 7))
        shared = shared_prefill(engine, spec, prompts(spec.shared_texts, spec.prompt_len,
                                                      spec.model.vocab, spec.seed + 8))
        del engine
        log("long prompts mid-decode")
        long_mid = long_prompts_mid_decode(path, spec, texts)
        log("bandwidth and position curve")
        bandwidth = copy_bandwidth(spec.bandwidth_mib)
        deep = build_engine(path, spec, max(spec.depths) + spec.depth_steps)
        positions = position_curve(deep, spec, bandwidth)
        positions["bandwidth_gb_s"] = bandwidth / 1e9
    env["loadavg_end"] = os.getloadavg()
    result = {
        "spec": dataclasses.asdict(spec), "env": env,
        "model": {"params": cfg.num_params(), "weight_bytes": 4 * cfg.num_params()},
        "workload_a": a, "floor": floor, "workload_b": b, "positions": positions,
        "judge": judge, "shared_prefill": shared, "long_prompts": long_mid,
        "compile_count": compile_ab, "seconds": time.perf_counter() - started,
        "summary": {"ratio_vs_hf": a["ratio_vs_hf"],
                    "ratio_continuous_vs_static": b["ratio_continuous_vs_static"],
                    "fraction_of_floor": floor["fraction_of_floor"]},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


# -- the report -------------------------------------------------------------------------------
def summary_line(result: dict) -> str:
    s = result["summary"]
    return (f"ratio_vs_hf={s['ratio_vs_hf']:.2f} "
            f"ratio_continuous_vs_static={s['ratio_continuous_vs_static']:.2f} "
            f"fraction_of_floor={s['fraction_of_floor']:.2f}")


def _secs(times: Sequence[float]) -> str:
    return " + ".join(f"{t:.2f}" for t in times)


def markdown(result: dict) -> str:
    """The result as markdown tables (the JSON holds every raw timing)."""
    a, f, b, p = result["workload_a"], result["floor"], result["workload_b"], result["positions"]
    o, h = a["ours"], a["hf"]
    m = result["model"]
    lines = [
        f"model: {m['params'] / 1e6:.1f}M params, {m['weight_bytes'] / 1e6:.0f} MB fp32; "
        f"{result['env']['cpus']} CPUs, load avg {result['env']['loadavg_start'][0]:.1f} -> "
        f"{result['env']['loadavg_end'][0]:.1f}; total {result['seconds']:.0f} s",
        "",
        f"### Workload A: batch {a['batch']}, prompt {a['prompt_len']}, {a['new_tokens']} new tokens, "
        f"T={REFERENCE['temperature']} top_p={REFERENCE['top_p']} top_k={REFERENCE['top_k']} "
        f"rep={REFERENCE['repetition_penalty']} (median of {len(o['seconds'])})",
        "",
        "| | total s | tokens/s | prefill + 1st token s | decode ms/step |",
        "|---|---:|---:|---:|---:|",
        f"| ours (JAX engine) | {o['median_s']:.2f} | {o['tokens_per_s']:.0f} | {o['prefill_s']:.3f} | "
        f"{o['decode_ms_per_step']:.2f} |",
        f"| HF generate (torch, threads {'/'.join(str(x['chosen']) for x in a['hf_threads'])}) | "
        f"{h['median_s']:.2f} | {h['tokens_per_s']:.0f} | {h['prefill_s']:.3f} | "
        f"{h['decode_ms_per_step']:.2f} |",
        f"| matmul floor | | | | {f['ms_per_step']:.2f} (unrolled {f['unrolled_ms_per_step']:.2f}, "
        f"scanned {f['scanned_ms_per_step']:.2f}) |",
        "",
        f"ratio_vs_hf = {a['ratio_vs_hf']:.2f}; fraction_of_floor = {f['fraction_of_floor']:.2f} "
        f"(median of per-repeat floor/ours, floor timed beside each repeat; in CPU time: "
        f"{f['fraction_of_floor_cpu']:.2f}); "
        f"exact lengths: {a['exact_lengths']}",
        "",
        f"### Workload B: {b['requests']} requests, {b['slots']} slots, lognormal max_new_tokens "
        f"{min(b['max_new_tokens'])}..{max(b['max_new_tokens'])} ({b['tokens']} tokens)",
        "",
        "| mode | seconds | tokens/s | decode steps |",
        "|---|---:|---:|---:|",
        f"| static | {_secs(b['static_s'])} | {b['static_tokens_per_s']:.0f} | {b['static_decode_steps']} |",
        f"| continuous | {_secs(b['continuous_s'])} | {b['continuous_tokens_per_s']:.0f} | "
        f"{b['continuous_decode_steps']} |",
        f"| continuous, refills apart from decode steps | {_secs(b['continuous_apart_s'])} | "
        f"{b['tokens'] * len(b['continuous_apart_s']) / sum(b['continuous_apart_s']):.0f} | |",
        "",
        "| mode | decode steps | decode ms/step | prefill s | pieces s (refills riding a step) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {mode} | {int(t['decode_steps'])} | {1e3 * t['decode_s'] / max(t['decode_steps'], 1):.2f} | "
          f"{t['prefill_s']:.2f} | {t['piece_s']:.2f} |" for mode, t in b["time_parts"].items()),
        "",
        f"step ratio (no prefill or refill cost) = {b['step_ratio']:.2f}; at this machine's costs "
        f"(continuous's decode steps at static's ms/step, its prompt work as measured) = "
        f"{b['ratio_at_static_step_cost']:.2f}",
        f"ratio_continuous_vs_static = {b['ratio_continuous_vs_static']:.2f} (refills apart: "
        f"{b['ratio_apart_vs_static']:.2f}); identical tokens: "
        f"{b['identical_tokens']} (every request, every run); exact lengths: {b['exact_lengths']}",
        "",
        f"### Position curve: batch {p['batch']}, {p['steps_per_chunk']} steps per chunk, "
        f"copy bandwidth {p['bandwidth_gb_s']:.1f} GB/s",
        "",
        "| depth | ms/step | ms/token | KV MB/step | KV bound ms | weights bound ms | KV bound / step |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in p["rows"]:
        lines.append(f"| {r['depth']} | {r['ms_per_step']:.2f} | {r['ms_per_token']:.2f} | "
                     f"{r['kv_bytes_per_step'] / 1e6:.1f} | {r['kv_bound_ms']:.2f} | "
                     f"{r['weights_bound_ms']:.2f} | {r['kv_share_of_step']:.2f} |")
    j, sp = result["judge"], result["shared_prefill"]
    lines += ["", f"### Judge: {j['candidates']} candidates x 2 answers: {j['median_s']:.2f} s "
                  f"({j['ms_per_candidate']:.1f} ms per candidate)",
              "", f"### Shared prefill: {sp['requests']} requests (each prompt twice): "
                  f"{sp['shared_tokens']} of {sp['prompt_tokens']} prompt tokens shared "
                  f"({100 * sp['saved_fraction']:.0f}% of prefill saved)"]
    lp = result["long_prompts"]
    lines += ["", f"### Long prompts mid-decode: {lp['long_prompts']} prompts of {lp['long_prompt_len']} tokens "
                  f"into {lp['slots']} decoding slots (median of {len(lp['runs']['chunked'])})",
              "", "| prefill | seconds | short requests tokens/s | longest stall s |", "|---|---:|---:|---:|",
              *(f"| {name} | {lp[name]['seconds']:.2f} | {lp[name]['short_tokens_per_s']:.0f} | "
                f"{lp[name]['longest_stall_s']:.3f} |" for name in ("chunked", "chunked_apart", "whole")),
              "", f"identical tokens: {lp['identical_tokens']}"]
    c = result["compile_count"]
    lines += ["", f"compile count: position sweep {p['compile_count_before']} -> {p['compile_count_after']}; "
                  f"workloads A+B {c['after_warm_up']} -> {c['after_workloads']}"]
    return "\n".join(lines)

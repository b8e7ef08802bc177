"""Benchmark sharding strategies on the devices at hand: speed, memory and agreement.

For each strategy (a mesh layout plus logical-axis rules) the harness
  * generation: drives the engine's own prefill and decode executables (`Engine.kernel`:
    the same jit, shardings and buffer donation as production) with token ids, at each
    batch size and context length: time to first token, prefill and decode tokens/s;
  * training: runs the trainer's jitted step (`make_train_step`), LoRA and full, on one
    fixed global batch, so every strategy does the same work per step;
  * records compile time, XLA's per-device `memory_analysis()`, the devices' live peak
    (where the backend reports it), MFU and bandwidth utilisation against the peak
    table, and the memory planner's estimate for the same shapes;
  * checks numerics: every strategy's greedy tokens and first training loss are
    compared with the first strategy's. A difference is a failure in float32 (the
    layouts compute the same sums, only split differently) and a warning in bfloat16
    (where a different reduction order can flip a near-tie late in a sequence).

Every figure is the median of `repeats` timed runs after `warmup` untimed ones, with
min/max and interquartile range. Strategies are the built-in four, the run config's
own mesh (`config`), or named layouts from the bench YAML (see the README, "Benchmark
on the devices you have").
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from selflengthen_jax.bench.random_model import random_model
from selflengthen_jax.checkpoint.hf_import import read_config
from selflengthen_jax.checkpoint.loader import LoadedModel, load_model
from selflengthen_jax.config import Config, ConfigError, EngineSection, MeshSection, build_section, load_section
from selflengthen_jax.models.attention.cache import CACHE_BLOCK
from selflengthen_jax.models.attention.xla import positions_read
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import init_lora, lora_logical_axes
from selflengthen_jax.models.presets import PRESETS, is_preset, model_config_from_name
from selflengthen_jax.models.transformer import logical_axes
from selflengthen_jax.parallel.mesh import make_mesh, mesh_shape
from selflengthen_jax.parallel.peaks import SystemPeak, system_peak
from selflengthen_jax.parallel.placement import put, put_tree, replicated, to_host
from selflengthen_jax.plan.planner import (TRAIN_MODES, builtin_layout, generation_breakdown,
                                               training_breakdown)
from selflengthen_jax.parallel.rules import STRATEGIES, Rules, attention_backend, strategy_rules, tree_shardings
from selflengthen_jax.sampling import kernels as ds
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.sampler import RowParams
from selflengthen_jax.training.data import Batch
from selflengthen_jax.training.optimizer import make_optimizer, to_master
from selflengthen_jax.training.step import (StepSpec, batch_shardings, init_state, make_train_step,
                                            state_shardings)


@dataclasses.dataclass
class BenchSection:
    """What to measure; read from the bench YAML and `bench.key=value` overrides."""

    model: str = ""          # preset or checkpoint dir; "" = model.path, model.preset, "tiny"
    strategies: list[str] = dataclasses.field(default_factory=lambda: list(STRATEGIES))
    layouts: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> mesh section
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 4])     # [] = no generation
    context_lengths: list[int] = dataclasses.field(default_factory=lambda: [64, 256])
    decode_steps: int = 16
    train_modes: list[str] = dataclasses.field(default_factory=lambda: list(TRAIN_MODES))  # [] = none
    train_seq_len: int = 128
    train_rows: int = 0      # global sequences per training step; 0 = one per device
    warmup: int = 1
    repeats: int = 5
    peak_flops: float = 0.0  # per device, overrides the table / CPU measurement
    peak_bandwidth: float = 0.0
    compile_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # XLA options
    output_dir: str = ""     # "" = <output_dir>/bench_sharding


def load_bench(path: str | None, overrides: Sequence[str] = ()) -> BenchSection:
    """The bench YAML (its top level is this section) plus `key=value` overrides."""
    bench = load_section(BenchSection, path, overrides, prefix="bench.")
    for key in ("decode_steps", "train_seq_len", "repeats"):
        if getattr(bench, key) <= 0:
            raise ConfigError(f"bench.{key}={getattr(bench, key)} must be a positive integer")
    for key in ("batch_sizes", "context_lengths"):
        if any(v <= 0 for v in getattr(bench, key)):
            raise ConfigError(f"bench.{key} must be a list of positive integers (empty: no generation)")
    if bench.warmup < 0 or bench.train_rows < 0:
        raise ConfigError("bench.warmup and bench.train_rows must be >= 0")
    unknown = sorted(set(bench.train_modes) - set(TRAIN_MODES))
    if unknown:
        raise ConfigError(f"bench.train_modes: unknown {unknown}; choose from {', '.join(TRAIN_MODES)}")
    if not (bench.batch_sizes and bench.context_lengths) and not bench.train_modes:
        raise ConfigError("nothing to measure: bench.batch_sizes/context_lengths and "
                          "bench.train_modes are all empty")
    return bench


# -- what runs where ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """A strategy to measure: its mesh section (sizes, base strategy, rule overrides)."""

    name: str
    section: MeshSection
    builtin: bool            # sized by `builtin_layout` for whatever devices it runs on


def resolve_layouts(cfg: Config, bench: BenchSection, num_heads: int,
                    num_devices: int) -> list[Layout]:
    """The requested strategies, checked against the devices before any compute.

    A name is looked up in the bench YAML's `layouts` first (so a built-in can be
    redefined), then among the built-ins, then `config` (the run config's mesh).
    """
    out = []
    for name in bench.strategies:
        builtin = name not in bench.layouts and name in STRATEGIES
        if name in bench.layouts:
            section = build_section(MeshSection, bench.layouts[name], f"bench.layouts.{name}.")
        elif builtin:
            section = builtin_layout(name, num_devices, num_heads)
        elif name == "config":
            section = cfg.mesh
        else:
            raise ConfigError(f"unknown strategy {name!r}; built in: {', '.join(STRATEGIES)}, "
                              f"config; from the bench YAML: {', '.join(bench.layouts) or 'none'}")
        strategy_rules(section.strategy, section.rules)
        if num_heads % mesh_shape(section, num_devices)[2]:
            raise ConfigError(f"strategy {name}: tensor axis does not divide {num_heads} heads")
        section = dataclasses.replace(section, replica_per_host=cfg.mesh.replica_per_host)
        out.append(Layout(name, section, builtin))
    return out


def generation_layout(layout: Layout, num_heads: int) -> tuple[MeshSection, list[jax.Device]]:
    """The engine's mesh section and devices: this host's alone with one replica per
    host (a built-in is re-sized for them; a YAML layout should use -1 for that)."""
    if not (layout.section.replica_per_host and jax.process_count() > 1):
        return layout.section, jax.devices()
    local = jax.local_devices()
    if layout.builtin:
        return builtin_layout(layout.name, len(local), num_heads), local
    return layout.section, local


def resolve_model(cfg: Config, bench: BenchSection, random_init: bool) -> tuple[ModelConfig, str | None]:
    """(architecture, checkpoint dir to load or None for random weights).

    The model is `bench.model`, else `model.path` when it holds a checkpoint, else
    `model.preset`, else the `tiny` preset. A preset always has random weights.
    """
    here = cfg.model.path if cfg.model.path and Path(cfg.model.path, "config.json").is_file() else ""
    name = bench.model or here or cfg.model.preset or "tiny"
    dtypes = dict(param_dtype=cfg.model.param_dtype, compute_dtype=cfg.model.compute_dtype)
    if is_preset(name):
        return model_config_from_name(name, **dtypes), None
    if not Path(name, "config.json").is_file():
        raise ConfigError(f"model {name!r} is neither a checkpoint directory nor a preset "
                          f"({', '.join(PRESETS)})")
    return read_config(name, **dtypes), None if random_init else name


def place_model(model_cfg: ModelConfig, checkpoint: str | None, mesh: Mesh, rules: Rules,
                seed: int) -> LoadedModel:
    if checkpoint is None:
        return random_model(model_cfg, mesh, rules, seed)
    return load_model(checkpoint, mesh, rules, model_cfg.param_dtype, model_cfg.compute_dtype)


# -- measuring ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stat:
    """Summary of repeated measurements."""

    median: float
    lo: float
    hi: float
    q1: float
    q3: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stat":
        xs = sorted(samples)
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else xs * 3
        return cls(statistics.median(xs), xs[0], xs[-1], q1, q3)

    def rate(self, work: float) -> "Stat":
        """work / seconds: the order flips (the slowest run is the lowest rate)."""
        return Stat(work / self.median, work / self.hi, work / self.lo, work / self.q3, work / self.q1)


@dataclasses.dataclass
class Measurement:
    """One row of the results: a strategy doing one workload at one shape."""

    strategy: str
    mesh: str                  # "data x fsdp x tensor"
    workload: str              # prefill | decode | train-lora | train-full
    batch: int                 # sequences (slots for generation, global rows for training)
    seq: int                   # context length (generation) or sequence length (training)
    seconds: Stat              # per call: TTFT for prefill, a decode chunk, a train step
    tokens_per_s: Stat
    compile_s: float
    mfu: float | None
    bandwidth_util: float | None
    xla_memory: dict[str, int] | None   # per device, from memory_analysis()
    live_peak: int | None      # largest device peak_bytes_in_use so far (None: not reported)
    planned_bytes: int         # the planner's per-device estimate
    check: str = "reference"   # agreement with the first strategy
    loss: float | None = None


def xla_memory(compiled: Any) -> dict[str, int] | None:
    """Argument/output/temp bytes per device as XLA reports them; None where unsupported."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if isinstance(m, (list, tuple)):
        m = m[0] if m else None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def live_peak(devices: Sequence[jax.Device]) -> int | None:
    """The largest `peak_bytes_in_use` of this process's devices (GPU/TPU; None on CPU)."""
    peaks = []
    for d in devices:
        if d.process_index != jax.process_index():
            continue
        stats = d.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def timed(run: Callable[[], Any], warmup: int, repeats: int) -> list[Any]:
    """`warmup` untimed calls, then the results of `repeats` calls (each times itself)."""
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


def _mesh_str(mesh: Mesh) -> str:
    return "x".join(str(mesh.shape[a]) for a in ("data", "fsdp", "tensor"))


def _compile(options: dict[str, Any], fn: Any, *args: Any) -> tuple[Any, float]:
    """AOT-compile a jitted function for `args` with XLA `options` (e.g. flags under
    test); returns the executable and the seconds lowering and compiling took."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile(options or None)
    return compiled, time.perf_counter() - t0


# -- model arithmetic -----------------------------------------------------------------

def layer_matmul_params(cfg: ModelConfig) -> int:
    """Weights every token multiplies through in the decoder layers (all of them)."""
    D, F, H, K, Dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return cfg.num_layers * (D * (H + 2 * K) * Dh + H * Dh * D + 3 * D * F)


def attention_flops(cfg: ModelConfig, rows: int, queries: int, keys: int) -> float:
    """Scores and weighted values over every key: XLA computes masked positions too."""
    return 4.0 * cfg.num_layers * rows * queries * keys * cfg.num_heads * cfg.head_dim


def prefill_flops(cfg: ModelConfig, rows: int, ctx: int) -> float:
    head = 2.0 * cfg.hidden_size * cfg.vocab_size * rows  # logits of the last position only
    return 2.0 * layer_matmul_params(cfg) * rows * ctx + attention_flops(cfg, rows, ctx, ctx) + head


def keys_read(position: int, cache_len: int) -> int:
    """Cache positions a decode step at `position` reads (`cached_attention` reads whole
    blocks, then the partial one in shorter pieces, up to the furthest query)."""
    return positions_read(position + 1, math.gcd(cache_len, CACHE_BLOCK))


def decode_flops(cfg: ModelConfig, rows: int, start: int, steps: int, cache_len: int) -> float:
    """Decode steps at positions start..start+steps-1 for `rows` sequences."""
    per_token = 2.0 * (layer_matmul_params(cfg) + cfg.hidden_size * cfg.vocab_size)
    keys = sum(keys_read(p, cache_len) for p in range(start, start + steps))
    return per_token * rows * steps + attention_flops(cfg, rows, 1, keys)


def decode_bytes(cfg: ModelConfig, rows: int, start: int, steps: int, cache_len: int) -> float:
    """Bytes those steps must read: every weight once per step (the embedding only as a
    tied head) and each slot's cache blocks up to the live context."""
    w = jnp.dtype(cfg.param_dtype).itemsize
    c = jnp.dtype(cfg.compute_dtype).itemsize
    weights = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    keys = sum(keys_read(p, cache_len) for p in range(start, start + steps))
    return steps * weights * w + 2 * cfg.num_layers * rows * keys * cfg.num_kv_heads * cfg.head_dim * c


def train_step_flops(cfg: ModelConfig, rows: int, seq: int, mode: str) -> float:
    """Model FLOPs (no remat recompute): forward 2N, backward 4N (LoRA: 2N, no weight
    grads for the frozen base) per token, plus attention forward and backward."""
    per_token = (6.0 if mode == "full" else 4.0) * (layer_matmul_params(cfg)
                                                     + cfg.hidden_size * cfg.vocab_size)
    return per_token * rows * seq + 3 * attention_flops(cfg, rows, seq, seq)


# -- the two workloads ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Context:
    """What every measurement of one strategy shares."""

    cfg: Config
    bench: BenchSection
    strategy: str
    mesh: Mesh
    rules: Rules
    peak: SystemPeak | None


def _util(done: float, seconds: float, peak: float | None) -> float | None:
    return None if not peak else done / seconds / peak


def _greedy_rows(cfg: ModelConfig, batch: int, ctx: int, max_new: int, mesh: Mesh, seed: int) -> ds.NewRows:
    """`batch` random prompts of exactly `ctx` tokens into slots 0..batch-1, greedy."""
    rng = np.random.default_rng([seed, batch, ctx])
    rep = replicated(mesh)
    host = dict(tokens=rng.integers(0, cfg.vocab_size, (batch, ctx), dtype=np.int32),
                length=np.full((batch,), ctx, np.int32), prompt_adapter=np.zeros((batch,), np.int32),
                src=np.arange(batch, dtype=np.int32), slot=np.arange(batch, dtype=np.int32),
                max_new=np.full((batch,), max_new, np.int32),
                keys=np.zeros((batch, 2), np.uint32), adapter=np.zeros((batch,), np.int32),
                chat=np.zeros((batch,), bool))
    sampling = RowParams(np.zeros((batch,), np.float32), np.zeros((batch,), np.int32),
                         np.ones((batch,), np.float32), np.ones((batch,), np.float32),
                         np.ones((batch,), bool))
    return ds.NewRows(**{k: put(v, rep) for k, v in host.items()},
                      sampling=RowParams(*(put(v, rep) for v in sampling)))


def bench_generation(ctx: Context, model: LoadedModel, batch: int, length: int
                     ) -> tuple[list[Measurement], np.ndarray]:
    """Prefill `batch` prompts of `length` tokens, then decode `decode_steps` tokens each.

    Returns the prefill and decode rows and the greedy tokens [batch, 1 + steps].
    """
    steps = ctx.bench.decode_steps
    section = EngineSection(slots=batch, max_prefill_len=length, max_new_tokens=steps,
                            decode_chunk=steps, mode="static")
    engine = Engine(model, section, ctx.mesh, ctx.rules, attention_impl=ctx.cfg.model.attention_impl)
    rows = _greedy_rows(model.cfg, batch, length, steps + 1, ctx.mesh, ctx.cfg.seed)
    rep = replicated(ctx.mesh)
    params, ends = engine.params, engine.ends
    chunk = (put(np.int32(steps), rep), put(np.bool_(False), rep))  # all steps, no early exit
    state = engine.empty_state()
    opts = ctx.bench.compile_options
    prefill, t_prefill = _compile(opts, engine.kernel("prefill", 1), params, None, state, rows, ends)
    decode, t_decode = _compile(opts, engine.kernel("decode", 1), params, None, state, ends, *chunk)

    def run() -> tuple[float, float, np.ndarray]:
        s = jax.block_until_ready(engine.empty_state())
        t0 = time.perf_counter()
        s, first = prefill(params, None, s, rows, ends)
        first = to_host(first)
        t1 = time.perf_counter()
        s, toks, _ = decode(params, None, s, ends, *chunk)
        toks = to_host(toks)
        return t1 - t0, time.perf_counter() - t1, np.concatenate([first[:, None], toks], axis=1)

    runs = timed(run, ctx.bench.warmup, ctx.bench.repeats)
    tokens = runs[-1][2]
    if any(not np.array_equal(r[2], tokens) for r in runs):
        raise RuntimeError(f"{ctx.strategy}: greedy tokens changed between identical runs")
    planned = generation_breakdown(model.cfg, section, ctx.mesh, ctx.rules,
                                   platform=ctx.mesh.devices.flat[0].platform).total
    peak_flops = ctx.peak.flops if ctx.peak else None
    peak_bw = ctx.peak.bandwidth if ctx.peak else None
    pre, dec = Stat.of([r[0] for r in runs]), Stat.of([r[1] for r in runs])
    common = dict(strategy=ctx.strategy, mesh=_mesh_str(ctx.mesh), batch=batch, seq=length,
                  live_peak=live_peak(ctx.mesh.devices.flat), planned_bytes=planned)
    cfg = model.cfg
    return [
        Measurement(workload="prefill", seconds=pre, tokens_per_s=pre.rate(batch * length),
                    compile_s=t_prefill, xla_memory=xla_memory(prefill),
                    mfu=_util(prefill_flops(cfg, batch, length), pre.median, peak_flops),
                    bandwidth_util=None, **common),
        Measurement(workload="decode", seconds=dec, tokens_per_s=dec.rate(batch * steps),
                    compile_s=t_decode, xla_memory=xla_memory(decode),
                    mfu=_util(decode_flops(cfg, batch, length, steps, engine.cache_len),
                              dec.median, peak_flops),
                    bandwidth_util=_util(decode_bytes(cfg, batch, length, steps, engine.cache_len),
                                         dec.median, peak_bw), **common),
    ], tokens


def _train_batch(vocab: int, rows: int, seq: int, seed: int) -> Batch:
    """One step of random tokens; the first quarter of each row is an unsupervised prompt."""
    rng = np.random.default_rng([seed, rows, seq])
    tokens = rng.integers(0, vocab, (1, rows, seq + 1), dtype=np.int32)
    weights = np.ones((1, rows, seq), np.float32)
    weights[..., : seq // 4] = 0.0
    positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (1, rows, seq)).copy()
    return Batch(tokens[..., :-1], tokens[..., 1:], weights, positions,
                 np.ones((1, rows, seq), np.int32))


def bench_training(ctx: Context, model: LoadedModel, mode: str, rows: int,
                   adapters: Any) -> Measurement:
    """Time the trainer's step for `mode` on one fixed [1, rows, seq] batch."""
    seq = ctx.bench.train_seq_len
    tc = dataclasses.replace(ctx.cfg.train, mode=mode)
    optimizer, schedule = make_optimizer(tc, total_steps=1000)
    lora = mode == "lora"
    source = adapters if lora else model.params
    axes = lora_logical_axes(tuple(adapters)) if lora else logical_axes(model.cfg)
    shapes = jax.eval_shape(to_master, source)
    shardings = state_shardings(optimizer, tree_shardings(axes, shapes, ctx.mesh, ctx.rules),
                                shapes, ctx.mesh)
    base_sh = jax.tree.map(lambda x: x.sharding, model.params) if lora else None
    spec = StepSpec(dataclasses.replace(model.cfg, compute_dtype=tc.compute_dtype),
                    tc.lora.alpha / tc.lora.rank if lora else None, tc.remat,
                    attention_backend(ctx.cfg.model.attention_impl, ctx.mesh, ctx.rules))
    batch_sh = batch_shardings(ctx.mesh, ctx.rules, (1, rows, seq))
    step = make_train_step(spec, optimizer, schedule, shardings, base_sh, batch_sh)
    batch = put_tree(_train_batch(model.cfg.vocab_size, rows, seq, ctx.cfg.seed), batch_sh)
    base = model.params if lora else None
    state = init_state(source, optimizer, shardings)
    compiled, compile_s = _compile(ctx.bench.compile_options, step, state, base, batch)
    losses: list[float] = []

    def run() -> float:
        nonlocal state
        t0 = time.perf_counter()
        state, metrics = compiled(state, base, batch)
        losses.append(float(to_host(metrics["loss"])))
        return time.perf_counter() - t0

    secs = Stat.of(timed(run, ctx.bench.warmup, ctx.bench.repeats))
    peak_flops = ctx.peak.flops if ctx.peak else None
    planned = training_breakdown(model.cfg, tc, mode, ctx.mesh, ctx.rules, rows=rows, seq=seq).total
    return Measurement(
        strategy=ctx.strategy, mesh=_mesh_str(ctx.mesh), workload=f"train-{mode}", batch=rows,
        seq=seq, seconds=secs, tokens_per_s=secs.rate(rows * seq), compile_s=compile_s,
        mfu=_util(train_step_flops(model.cfg, rows, seq, mode), secs.median, peak_flops),
        bandwidth_util=None, xla_memory=xla_memory(compiled),
        live_peak=live_peak(ctx.mesh.devices.flat), planned_bytes=planned, loss=losses[0])


# -- numerics -------------------------------------------------------------------------

def token_difference(reference: np.ndarray, got: np.ndarray) -> str | None:
    """None when identical, else where the greedy sequences first part."""
    if np.array_equal(reference, got):
        return None
    rows, steps = np.nonzero(reference != got)
    return f"tokens differ from step {int(steps.min())} in {len(set(rows.tolist()))} of {len(reference)} rows"


def loss_difference(reference: float, got: float, compute_dtype: str) -> str | None:
    rtol = 1e-4 if compute_dtype == "float32" else 2e-2
    if abs(got - reference) <= rtol * abs(reference):
        return None
    return f"loss {got:.6f} vs {reference:.6f} (rtol {rtol:g})"


# -- the run --------------------------------------------------------------------------

@dataclasses.dataclass
class BenchResult:
    environment: dict[str, Any]
    settings: dict[str, Any]
    measurements: list[Measurement]
    failures: list[str]        # numerics that must agree and do not (float32)
    warnings: list[str]        # numerics that may legitimately differ (bfloat16)


def _peak(devices: Sequence[jax.Device], bench: BenchSection) -> SystemPeak | None:
    """The devices' summed peaks: `bench.peak_*` (per device) where given, else the table
    or, on CPU, a measurement (skipped when both are given)."""
    n = len(devices)
    flops, bandwidth = bench.peak_flops * n, bench.peak_bandwidth * n
    if flops and bandwidth:
        return SystemPeak(flops, bandwidth, f"bench.peak_* x{n}")
    known = system_peak(devices)
    if not (flops or bandwidth):
        return known
    return SystemPeak(flops or (known.flops if known else 0.0),
                      bandwidth or (known.bandwidth if known else 0.0),
                      f"bench.peak_* x{n} and {known.source if known else 'unknown device'}")


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Setup:
    """A checked benchmark request: everything decided before any device work."""

    cfg: Config
    bench: BenchSection
    model_cfg: ModelConfig
    checkpoint: str | None                  # None: random weights
    layouts: list[Layout]
    train_rows: int


def prepare(cfg: Config, bench: BenchSection, random_init: bool = False) -> Setup:
    """Resolve the model and strategies; raises ConfigError/CheckpointError on bad input."""
    model_cfg, checkpoint = resolve_model(cfg, bench, random_init)
    layouts = resolve_layouts(cfg, bench, model_cfg.num_heads, jax.device_count())
    return Setup(cfg, bench, model_cfg, checkpoint, layouts, bench.train_rows or jax.device_count())


def run(setup: Setup) -> BenchResult:
    """Measure every strategy in turn, checking each against the first."""
    cfg, bench, model_cfg, checkpoint = setup.cfg, setup.bench, setup.model_cfg, setup.checkpoint
    rows = setup.train_rows
    adapters = init_lora(model_cfg, cfg.train.lora.rank, cfg.seed) if "lora" in bench.train_modes else None
    result = BenchResult(_environment(model_cfg, checkpoint, _peak(jax.devices(), bench)),
                         _settings(cfg, bench, rows), [], [], [])
    tokens_ref: dict[tuple[int, int], tuple[str, np.ndarray]] = {}
    loss_ref: dict[str, tuple[str, float]] = {}

    def check(m: Measurement, problem: str | None, against: str) -> None:
        if problem is None:
            m.check = "ok" if against != m.strategy else "reference"
            return
        m.check = "MISMATCH"
        line = f"{m.strategy} {m.workload} batch={m.batch} seq={m.seq}: {problem} (vs {against})"
        (result.failures if _exact(cfg, m) else result.warnings).append(line)

    for layout in setup.layouts:
        name, section = layout.name, layout.section
        gen_section, gen_devices = generation_layout(layout, model_cfg.num_heads)
        gen_mesh = make_mesh(gen_section, gen_devices)
        gen_rules = strategy_rules(gen_section.strategy, gen_section.rules)
        _log(f"[bench] {name}: mesh {_mesh_str(gen_mesh)}, rules {gen_rules}")
        model = place_model(model_cfg, checkpoint, gen_mesh, gen_rules, cfg.seed)
        ctx = Context(cfg, bench, name, gen_mesh, gen_rules, _peak(list(gen_mesh.devices.flat), bench))
        for batch in bench.batch_sizes:
            for length in bench.context_lengths:
                _log(f"[bench] {name}: generation batch={batch} context={length}")
                measured, tokens = bench_generation(ctx, model, batch, length)
                ref_name, ref = tokens_ref.setdefault((batch, length), (name, tokens))
                for m in measured:
                    check(m, token_difference(ref, tokens), ref_name)
                result.measurements += measured
        if bench.train_modes:
            mesh = make_mesh(section)
            rules = strategy_rules(section.strategy, section.rules)
            if mesh != gen_mesh or rules != gen_rules:
                model = place_model(model_cfg, checkpoint, mesh, rules, cfg.seed)
            ctx = Context(cfg, bench, name, mesh, rules, _peak(list(mesh.devices.flat), bench))
            for mode in bench.train_modes:
                _log(f"[bench] {name}: train {mode} rows={rows} seq={bench.train_seq_len}")
                m = bench_training(ctx, model, mode, rows, adapters)
                ref_name, ref_loss = loss_ref.setdefault(mode, (name, m.loss))
                check(m, loss_difference(ref_loss, m.loss, cfg.train.compute_dtype), ref_name)
                result.measurements.append(m)
        del model  # free this layout's weights before the next is placed
    return result


def _exact(cfg: Config, m: Measurement) -> bool:
    """Whether this workload's compute is float32, where strategies must agree exactly."""
    dtype = cfg.train.compute_dtype if m.workload.startswith("train") else cfg.model.compute_dtype
    return dtype == "float32"


def _environment(model_cfg: ModelConfig, checkpoint: str | None,
                 peak: SystemPeak | None) -> dict[str, Any]:
    d = jax.devices()[0]
    return {"jax": jax.__version__, "backend": d.platform, "device_kind": d.device_kind,
            "devices": jax.device_count(), "processes": jax.process_count(),
            "peak_source": peak.source if peak else None,
            "model": dataclasses.asdict(model_cfg), "weights": checkpoint or "random",
            "params": model_cfg.num_params()}


def _settings(cfg: Config, bench: BenchSection, rows: int) -> dict[str, Any]:
    return {"bench": dataclasses.asdict(bench), "train_rows": rows, "remat": cfg.train.remat,
            "lora_rank": cfg.train.lora.rank, "train_compute_dtype": cfg.train.compute_dtype,
            "replica_per_host": cfg.mesh.replica_per_host, "seed": cfg.seed}

"""Rehearse a whole Self-Lengthen run on a TPU slice that is not here.

With libtpu installed, `jax.experimental.topologies` gives a slice's devices and XLA's
real TPU compiler accepts them on a CPU host. The rehearsal builds the run's meshes
with `parallel.mesh` (the training mesh over the slice, each host's generation mesh),
gets every jitted function from the code the run itself calls (`sampling.engine`'s
state creation, prefill, decode, scoring and adapter stacking; `training.trainer`'s
state creation and step), lowers them on abstract arguments that carry the run's
shardings, and compiles them. No weight is loaded and nothing runs.

Each executable's row has the compiler's per-chip `memory_analysis()`, the planner's
estimate for the same thing, trip-count-corrected FLOPs and bytes (`plan.hlo`) and the
collective bytes it moves (per decode step for the decode chunk).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selflengthen_jax.config import Config, ConfigError, load_config
from selflengthen_jax.models.attention.xla import SAVE_SCORES_UP_TO, query_blocks
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import adapter_shapes, projection_dims
from selflengthen_jax.models.attention.cache import CACHE_BLOCK
from selflengthen_jax.checkpoint.loader import param_shardings
from selflengthen_jax.models import weight_layout
from selflengthen_jax.models.transformer import abstract_model
from selflengthen_jax.parallel.mesh import check_meshes, generation_layout, generation_mesh, make_mesh
from selflengthen_jax.parallel.peaks import GiB
from selflengthen_jax.parallel.placement import weight_shardings
from selflengthen_jax.parallel.rules import attention_backend, generation_rules, strategy_rules
from selflengthen_jax.plan import hlo
from selflengthen_jax.plan.planner import fmt_bytes, kernel_breakdowns, training_breakdown
from selflengthen_jax.plan.slices import Slice, describe
from selflengthen_jax.sampling import kernels
from selflengthen_jax.sampling import engine as eng
from selflengthen_jax.sampling.sampler import RowParams
from selflengthen_jax.training.data import Batch
from selflengthen_jax.training.step import LOSS_CHUNK
from selflengthen_jax.training.trainer import build_step

HEADROOM = 0.9    # usable share of HBM, as the planner assumes
ROLES = 2         # generator and extender adapters, stacked on one base


class CompileError(RuntimeError):
    """The TPU compiler refused an executable."""


@dataclasses.dataclass
class Row:
    executable: str
    mesh: str                      # "data x fsdp x tensor strategy"
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    compiled_bytes: int            # args + outputs - aliased + temp, per chip
    resident_bytes: int            # other buffers alive meanwhile (not arguments)
    planned_bytes: int | None      # the planner's figure for the same thing
    hbm_bytes: int                 # usable per chip
    fits: bool
    flops: float                   # per chip per call, loop trip counts included
    bytes_accessed: float
    collective_bytes: dict[str, float]  # per call, or per decode step
    per: str                       # "call" or "step"
    compile_s: float
    analytic_flops: float | None = None
    steps: int = 1                 # decode steps per call (FLOPs and bytes are per call)

    @property
    def peak_bytes(self) -> int:
        return self.compiled_bytes + self.resident_bytes


@dataclasses.dataclass
class Executable:
    """One jitted function of the run with the abstract arguments it is called with."""

    name: str
    mesh: Mesh
    strategy: str
    fn: Any
    args: tuple
    planned: int | None = None
    resident: int = 0
    unknown_trips: tuple[int, ...] = ()  # run-time loops' largest trip counts, outermost first
    per_step: int = 1              # divide traffic by this (decode: per step)
    analytic_flops: float | None = None


def _abstract(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def _spec(shape: tuple[int, ...], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)


def _sampling_specs(n: int, sharding: Any) -> RowParams:
    """Abstract per-row sampling settings of n rows, as the scheduler passes them."""
    vec = lambda dt: _spec((n,), dt, sharding)  # noqa: E731
    return RowParams(vec(jnp.float32), vec(jnp.int32), vec(jnp.float32), vec(jnp.float32), vec(jnp.bool_))


def _mesh_str(mesh: Mesh, strategy: str) -> str:
    return "x".join(str(v) for v in mesh.shape.values()) + f" {strategy}"


def _per_chip(shapes: Any, shardings: Any) -> int:
    return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))


def _k_cap(cfg: Config, mcfg: ModelConfig) -> int:
    top_k = cfg.sampling.top_k
    return mcfg.vocab_size if top_k <= 0 else min(top_k, mcfg.vocab_size)


def generation_executables(cfg: Config, mcfg: ModelConfig, devices: Sequence[Any]) -> list[Executable]:
    """The engine's executables on host 0's generation mesh (every host compiles the same)."""
    mesh = generation_mesh(cfg.mesh, devices, devices[0].process_index)
    layout = generation_layout(cfg.mesh, len(devices), mesh.devices.size)
    rules, strategy = strategy_rules(layout.strategy, layout.rules), layout.strategy
    section, rep = cfg.engine, NamedSharding(mesh, P())
    platform = devices[0].platform
    weights_in = weight_layout.choose(section.weight_layout, platform)
    weights = _abstract(weights_in.tree(mcfg)[1], weight_shardings(weights_in, mcfg, mesh, rules))
    w_sh = jax.tree.map(lambda x: x.sharding, weights)
    one = adapter_shapes(mcfg, cfg.train.lora.rank)
    scales = [cfg.train.lora.alpha / cfg.train.lora.rank] * ROLES
    dtype = mcfg.compute_dtype
    stack = eng.stack_fn(scales, dtype, mesh)
    stacked = jax.eval_shape(stack, [one] * ROLES)
    lora = _abstract(stacked, jax.tree.map(lambda _: rep, stacked))
    lora_sh = jax.tree.map(lambda x: x.sharding, lora)
    cache_len = eng.cache_length(section)
    attention = attention_backend(cfg.model.attention_impl, mesh, rules)
    state_sh = eng.slot_state_shardings(mcfg, section.slots, cache_len, mesh, rules, attention)
    state = _abstract(jax.eval_shape(partial(kernels.empty_state, mcfg, section.slots, cache_len, dtype,
                                             attention)), state_sh)
    k_cap = _k_cap(cfg, mcfg)
    n, p = eng.prefill_rows(section), section.max_prefill_len
    vec = lambda dt: _spec((n,), dt, rep)  # noqa: E731
    rows = kernels.NewRows(_spec((n, p), jnp.int32, rep), vec(jnp.int32), vec(jnp.int32), vec(jnp.int32),
                           vec(jnp.int32), vec(jnp.int32), _spec((n, 2), jnp.uint32, rep), vec(jnp.int32),
                           vec(jnp.bool_), _sampling_specs(n, rep))
    ends = kernels.Ends(_spec((4,), jnp.int32, rep), _spec((1,), jnp.int32, rep))  # a few EOS ids, one turn end
    planned = kernel_breakdowns(mcfg, section, mesh, rules, platform, cfg.model.attention_impl)
    make = lambda kind: eng.kernel(kind, mcfg, section, k_cap, attention, w_sh, lora_sh, state_sh, mesh,  # noqa: E731
                                   dtype)
    judged = 2  # the judge scores "yes" and "no" after one prompt forward
    score_rows = kernels.ScoreRows(_spec((n, p), jnp.int32, rep), vec(jnp.int32),
                                   _spec((n, judged, 16), jnp.int32, rep), _spec((n, judged), jnp.int32, rep),
                                   vec(jnp.int32))
    one_sh = jax.tree.map(lambda _: rep, one)
    c = eng.piece_tokens(section)  # the largest piece: one row of a long prompt
    pvec = lambda dt: _spec((1,), dt, rep)  # noqa: E731
    piece = kernels.Piece(_spec((1, c), jnp.int32, rep), pvec(jnp.int32), pvec(jnp.int32), pvec(jnp.bool_),
                          pvec(jnp.int32), pvec(jnp.int32), _spec((1, 2), jnp.uint32, rep), pvec(jnp.int32),
                          pvec(jnp.bool_), _sampling_specs(1, rep))
    stepped = " + decode step" if section.mixed_batches else ""
    return [
        Executable("decode state", mesh, strategy, make("empty"), (), planned=planned["decode"].kv_cache),
        Executable("adapter stack", mesh, strategy, stack, ([_abstract(one, one_sh)] * ROLES,)),
        Executable(f"prefill {n}x{p}", mesh, strategy, make("prefill"), (weights, lora, state, rows, ends),
                   planned=planned["prefill"].total),
        Executable(f"decode chunk {section.decode_chunk}", mesh, strategy, make("decode"),
                   (weights, lora, state, ends, _spec((), jnp.int32, rep), _spec((), jnp.bool_, rep)),
                   planned=planned["decode"].total,
                   unknown_trips=(section.decode_chunk, cache_len // CACHE_BLOCK),  # full cache read
                   per_step=section.decode_chunk),
        Executable(f"prompt piece 1x{c}{stepped}", mesh, strategy, make("mixed"), (weights, lora, state, piece, ends),
                   planned=planned["piece"].total),
        Executable(f"judge score {n}x{p}", mesh, strategy, make("score"), (weights, lora, score_rows)),
    ]


def analytic_train_flops(mcfg: ModelConfig, cfg: Config, tokens: int, rows: int,
                         count_attention: bool = True) -> float:
    """Matmul FLOPs of one step: 6·N·tokens (full) or 4·N·tokens (LoRA: no weight
    gradients) plus the adapters' own, block-causal attention (forward x3), and what is
    recomputed: the forward again under `remat=full`, the logits of each loss chunk and,
    past `SAVE_SCORES_UP_TO`, each attention block's scores. Without `count_attention`
    the attention products are left out: a Pallas kernel's FLOPs are invisible to XLA's
    cost analysis, so the compiled figure has none to compare with."""
    d, f, v, L = mcfg.hidden_size, mcfg.intermediate_size, mcfg.vocab_size, mcfg.num_layers
    H, K, Dh = mcfg.num_heads, mcfg.num_kv_heads, mcfg.head_dim
    layer = d * (H + 2 * K) * Dh + H * Dh * d + 3 * d * f
    seq = cfg.train.cutoff_len
    attention = rows * 4 * Dh * H * sum((e - a) * e for a, e in query_blocks(seq)) * L if count_attention else 0
    n = L * layer + v * d
    base = (6 if cfg.train.mode == "full" else 4) * n * tokens + 3 * attention
    adapters = 0
    if cfg.train.mode == "lora":  # x·A·B on every projection: forward, dX and dW
        adapters = 2 * tokens * L * cfg.train.lora.rank * sum(a + b for a, b in projection_dims(mcfg).values())
    recompute = 2 * v * d * tokens if seq > LOSS_CHUNK else 0
    if seq > SAVE_SCORES_UP_TO:  # each query block's scores are recomputed in the backward
        recompute += attention
    if cfg.train.remat == "full":
        recompute += 2 * L * layer * tokens + attention + adapters
    base += 3 * adapters
    return float(base + recompute)


def training_executables(cfg: Config, mcfg: ModelConfig, devices: Sequence[Any],
                         gen_mesh: Mesh | None) -> list[Executable]:
    """The trainer's executables on the global training mesh, for `train.mode`."""
    mesh = make_mesh(cfg.mesh, devices)
    rules = strategy_rules(cfg.mesh.strategy, cfg.mesh.rules)
    attention = attention_backend(cfg.model.attention_impl, mesh, rules)
    parts = build_step(cfg, mcfg, mesh, total=1000)
    tc, layout = cfg.train, parts.layout
    state = _abstract(parts.abstract, parts.shardings)
    shapes = nnx.state(abstract_model(mcfg), nnx.Param).to_pure_dict()
    base = _abstract(shapes, parts.base_shardings) if tc.mode == "lora" else None
    shape = (layout.accum, layout.global_rows, tc.cutoff_len)
    batch = Batch(*(_spec(shape, dt, parts.batch_shardings.tokens)
                    for dt in (jnp.int32, jnp.int32, jnp.float32, jnp.int32, jnp.int32)))
    planned = training_breakdown(mcfg, tc, tc.mode, mesh, rules, attention=attention)
    resident = 0
    if gen_mesh is not None and not _same_mesh(gen_mesh, mesh):
        gen_rules = generation_rules(cfg.mesh, len(devices), gen_mesh.devices.size)
        resident = _per_chip(shapes, param_shardings(mcfg, gen_mesh, gen_rules))  # the engine's weights
    rep = NamedSharding(mesh, P())
    gather = jax.jit(lambda t: t, out_shardings=jax.tree.map(lambda _: rep, state.trainable))
    chips = mesh.devices.size
    tokens = math.prod(shape)
    source = None if tc.mode == "lora" else _abstract(shapes, jax.tree.map(
        lambda x: x.sharding, state.trainable))
    return [
        Executable(f"{tc.mode} state init", mesh, cfg.mesh.strategy, parts.fresh_fn, (source,),
                   planned=planned.trainable + planned.optimizer, resident=resident),
        Executable(f"train step {tc.mode} {layout.accum}x{layout.global_rows}x{tc.cutoff_len}", mesh,
                   cfg.mesh.strategy, parts.step_fn, (state, base, batch), planned=planned.total,
                   resident=resident,
                   analytic_flops=analytic_train_flops(mcfg, cfg, tokens, layout.accum * layout.global_rows,
                                                      attention.impl == "xla") / chips),
        Executable("export gather", mesh, cfg.mesh.strategy, gather, (state.trainable,), resident=resident),
    ]


def _same_mesh(a: Mesh, b: Mesh) -> bool:
    return a.devices.shape == b.devices.shape and list(a.devices.flat) == list(b.devices.flat)


def executables(cfg: Config, mcfg: ModelConfig, devices: Sequence[Any]) -> list[Executable]:
    """Every executable of the loop on the slice (meshes checked first, naming the axis)."""
    check_meshes(cfg.mesh, devices)
    gen = generation_executables(cfg, mcfg, devices)
    return gen + training_executables(cfg, mcfg, devices, gen[0].mesh)


def compile_row(x: Executable, usable: int) -> Row:
    t0 = time.perf_counter()
    try:
        compiled = x.fn.lower(*x.args).compile()
    except Exception as error:  # the compiler's own message, whatever its type
        needed = _exhausted_bytes(str(error))
        if needed is None:
            raise CompileError(f"{x.name}: {error}") from error
        return Row(x.name, _mesh_str(x.mesh, x.strategy), 0, 0, needed, 0, needed, x.resident, x.planned,
                   usable, False, 0.0, 0.0, {k: 0.0 for k in hlo.COLLECTIVES},
                   "step" if x.per_step > 1 else "call", time.perf_counter() - t0, x.analytic_flops,
                   x.per_step)
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    work = hlo.analyse(compiled.as_text(), x.unknown_trips)
    flops, nbytes = work.corrected(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))
    coll = {k: v / x.per_step for k, v in work.collectives.items()}
    return Row(x.name, _mesh_str(x.mesh, x.strategy), m.argument_size_in_bytes, m.output_size_in_bytes,
               m.temp_size_in_bytes, m.alias_size_in_bytes, total, x.resident, x.planned, usable,
               total + x.resident <= usable, flops, nbytes, coll,
               "step" if x.per_step > 1 else "call", seconds, x.analytic_flops, x.per_step)


_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _exhausted_bytes(message: str) -> int | None:
    """What the TPU compiler says an executable needs when it exceeds HBM (it refuses
    to compile it: "RESOURCE_EXHAUSTED ... required for HLO temporaries (64.25G)"), else None."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    m = re.search(r"required[^(]*\(([\d.]+)([KMGT])\)", message)
    return int(float(m[1]) * _UNITS[m[2]]) if m else 0


def rehearse(cfg: Config, mcfg: ModelConfig, s: Slice, devices: Sequence[Any],
             log: Callable[[str], None] = lambda _: None, only: Sequence[str] = ()) -> list[Row]:
    """Compile every executable of the run for the slice (or those whose names start
    with one of `only`); one row each."""
    usable = int(s.spec.hbm_bytes * HEADROOM)  # one device per chip (`slices`)
    todo = [x for x in executables(cfg, mcfg, devices) if not only or x.name.startswith(tuple(only))]
    if not todo:
        raise ValueError(f"--only {', '.join(only)} names no executable; they are: "
                         + ", ".join(x.name for x in executables(cfg, mcfg, devices)))
    rows = []
    for x in todo:
        log(f"compiling {x.name} on {_mesh_str(x.mesh, x.strategy)} ...")
        rows.append(compile_row(x, usable))
    return rows


# -- what to change when something does not fit --------------------------------------------

def _ladder(cfg: Config, row: Row) -> list[str]:
    """Overrides to try, mildest first, for the executable that does not fit."""
    if row.executable.startswith(("train", "lora", "full", "export")):
        t = cfg.train
        out = [] if t.remat == "full" else ["train.remat=full"]
        out += [f"mesh.tensor={k}" for k in (2, 4, 8) if k > cfg.mesh.tensor]
        c = t.cutoff_len // 2
        while c >= 1024:
            out.append(f"train.cutoff_len={c}")
            c //= 2
        return out
    e, out = cfg.engine, []
    if row.executable.startswith(_PREFILL):  # fewer rows per prefill call first
        t = e.prefill_tokens // 2
        while t >= e.max_prefill_len:
            out.append(f"engine.prefill_tokens={t}")
            t //= 2
    s = e.slots // 2
    while s >= 1:
        out.append(f"engine.slots={s}")
        s //= 2
    n = e.max_new_tokens // 2
    while n >= 1024:
        out.append(f"engine.max_new_tokens={n}")
        n //= 2
    return out


_PREFILL = ("prefill", "judge")  # executables that run a prompt forward (else: the decode loop)


def suggest(cfg: Config, mcfg: ModelConfig, row: Row, s: Slice, devices: Sequence[Any]) -> str | None:
    """The first override under which the planner, scaled by this executable's
    compiled/planned ratio, says it fits (no recompiles)."""
    ratio = row.compiled_bytes / row.planned_bytes if row.planned_bytes else 1.0
    for override in _ladder(cfg, row):
        key, value = override.split("=")
        try:
            trial = load_config(None, [*_as_overrides(cfg), override])
            check_meshes(trial.mesh, devices)
        except (ValueError, ConfigError):
            continue
        if key.startswith("engine"):
            mesh = generation_mesh(trial.mesh, devices, devices[0].process_index)
            rules = generation_rules(trial.mesh, len(devices), mesh.devices.size)
            kernel = "prefill" if row.executable.startswith(_PREFILL) else "decode"
            planned = kernel_breakdowns(mcfg, trial.engine, mesh, rules, devices[0].platform,
                                        trial.model.attention_impl)[kernel].total
        else:
            mesh = make_mesh(trial.mesh, devices)
            rules = strategy_rules(trial.mesh.strategy, trial.mesh.rules)
            attention = attention_backend(trial.model.attention_impl, mesh, rules)
            planned = training_breakdown(mcfg, trial.train, trial.train.mode, mesh, rules,
                                         attention=attention).total
        if planned * ratio + row.resident_bytes <= row.hbm_bytes:
            return override
    return None


def _as_overrides(cfg: Config) -> list[str]:
    """The config as key=value overrides (for re-planning it with one change)."""
    out = []

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and k != "rules":
                walk(f"{prefix}{k}.", v)
            elif not isinstance(v, (list, dict)):
                out.append(f"{prefix}{k}={v}")
    walk("", cfg.to_dict())
    return out


# -- the report -----------------------------------------------------------------------------

def _gib(n: float | None) -> str:
    return "-" if n is None else fmt_bytes(int(n))


def _coll(c: dict[str, float]) -> str:
    parts = [f"{k} {v / 2 ** 20:.1f}M" for k, v in c.items() if v]
    return ", ".join(parts) or "none"


def format_rows(s: Slice, devices: Sequence[Any], rows: Sequence[Row]) -> str:
    cols = ("executable", "mesh", "args", "outputs", "temp", "aliased", "total/chip", "resident",
            "planned", "fits", "TFLOP/chip", "GB accessed", "collectives (bytes)", "per", "compile s")
    lines = [describe(s, devices), "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.executable, r.mesh, _gib(r.argument_bytes), _gib(r.output_bytes), _gib(r.temp_bytes),
            _gib(r.alias_bytes), _gib(r.compiled_bytes), _gib(r.resident_bytes), _gib(r.planned_bytes),
            "yes" if r.fits else "NO", f"{r.flops / 1e12:.3f}", f"{r.bytes_accessed / 1e9:.2f}",
            _coll(r.collective_bytes), r.per, f"{r.compile_s:.1f}"]) + " |")
    for r in rows:
        if r.analytic_flops and r.flops:
            lines.append(f"\n{r.executable}: {r.flops / 1e12:.3f} TFLOP/chip compiled vs "
                         f"{r.analytic_flops / 1e12:.3f} analytic ({r.flops / r.analytic_flops:.3f}x)")
    return "\n".join(lines)


def last_line(s: Slice, rows: Sequence[Row], suggestion: str | None) -> str:
    peak = max(rows, key=lambda r: r.peak_bytes)
    head = (f"rehearsal: {s.name}: {len(rows)} executables, peak {peak.peak_bytes / GiB:.2f} GiB/chip "
            f"of {peak.hbm_bytes / GiB:.2f} GiB")
    bad = [r for r in rows if not r.fits]
    if not bad:
        return head + ": fits"
    worst = max(bad, key=lambda r: r.peak_bytes)
    hint = f"try {suggestion}" if suggestion else "no single override found; use a larger slice"
    return f"{head}: does not fit: {worst.executable} needs {worst.peak_bytes / GiB:.2f} GiB; {hint}"


def as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = dataclasses.asdict(r)
        d["peak_bytes"] = r.peak_bytes
        out.append(d)
    return out

"""Fine-tune one role (generator or extender) on (prompt, response) records.

`train` is called by `launch.train` and, in-process, by the Self-Lengthen iteration
loop, which keeps the base model loaded across roles and iterations: the base params
are never modified or donated. A run resumes from the newest committed checkpoint in
`out_dir` and, on CPU, ends bitwise where an uninterrupted run would. A non-finite loss
or gradient stops the run before anything from that step is saved. SIGTERM (a
preemption notice, raised as an exception by the launcher's handler) or Ctrl-C during
the steps saves the last finished step at once (an emergency checkpoint, as MaxText
does), so the restart loses no step. Output directories may be local or `gs://`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import transformers
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from selflengthen_jax import compile_cache, faults, signals
from selflengthen_jax.checkpoint.loader import param_shardings
from selflengthen_jax.checkpoint.orbax_params import save_params
from selflengthen_jax.config import Config
from selflengthen_jax.metrics import profile
from selflengthen_jax.metrics.tensorboard import TB_DIR, Board, TrainingCurve
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import adapter_shapes, init_lora, lora_logical_axes, lora_rank
from selflengthen_jax.models.transformer import PROJECTIONS, Params, abstract_model, logical_axes
from selflengthen_jax.parallel.placement import onto
from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.parallel.rules import Rules, named, strategy_rules, tree_shardings
from selflengthen_jax.training import checkpointing
from selflengthen_jax.training.data import (Batch, DataPosition, Example, Layout, SFTData,
                                            encode_dataset, read_records)
from selflengthen_jax.training.optimizer import make_optimizer, to_master
from selflengthen_jax.training.step import (StepSpec, TrainState, batch_shardings, fresh_state,
                                            make_train_step, state_shardings)


class TrainingError(RuntimeError):
    """Training cannot continue (diverged, or asked for something unsupported)."""


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dim is split: the size of the mesh axes `batch` maps to."""
    axes = rules.get("batch") or ()
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def to_device(batch: Batch, shardings: Batch, layout: Layout) -> Batch:
    """Assemble the global [accum, rows, seq] arrays from every process's rows."""
    def put(x: np.ndarray, s: Any) -> jax.Array:
        shape = (layout.accum, layout.global_rows, x.shape[-1])
        return jax.make_array_from_process_local_data(s, x, shape)
    return Batch(*(put(x, s) for x, s in zip(batch, shardings)))


class MetricsLog:
    """Windowed means of step metrics to metrics.jsonl and TensorBoard (process 0 only).

    The curves go to `curve` (tag prefix, global-step offset) when the caller shares one
    board across runs, as the loop does; else to OUT/tensorboard as `train/<role>/...`.
    """

    def __init__(self, out_dir: AnyPath, every: int, enabled: bool, curve: TrainingCurve):
        self.every, self.enabled, self.curve = every, enabled, curve
        self.path = out_dir / "metrics.jsonl"
        self.window: list[tuple[dict[str, float], float]] = []
        # a bucket has no append: the (small) file is rewritten whole, as one object
        self.remote = is_remote(self.path)
        self.text = self.path.read_text(encoding="utf-8") if self.remote and enabled \
            and self.path.exists() else ""

    def record(self, step: int, metrics: dict[str, Any], seconds: float, epoch: int,
               last: bool) -> None:
        self.window.append(({k: float(v) for k, v in metrics.items()}, seconds))
        if step % self.every and not last:
            return
        ms, secs = [m for m, _ in self.window], [s for _, s in self.window]
        row = {"step": step, "epoch": epoch,
               "loss": float(np.mean([m["loss"] for m in ms])),
               "lr": ms[-1]["lr"], "grad_norm": ms[-1]["grad_norm"],
               "tokens_per_s": sum(m["tokens"] for m in ms) / max(sum(secs), 1e-9),
               "step_time_s": float(np.mean(secs))}
        self.window = []
        if not self.enabled:
            return
        if self.remote:
            self.text += json.dumps(row) + "\n"
            self.path.write_text(self.text, encoding="utf-8")
        else:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        self.curve.board.scalars(self.curve.prefix, {k: v for k, v in row.items() if k != "step"},
                                 self.curve.offset + step)


def check_finite(metrics: dict[str, Any], step: int, ckpt_dir: AnyPath, last_saved: int | None) -> None:
    for key in ("loss", "grad_norm"):
        if not np.isfinite(metrics[key]):
            kept = f"step {last_saved}" if last_saved is not None else "none yet"
            raise TrainingError(f"{key} is {float(metrics[key])} at step {step}: training stopped; "
                                f"last good checkpoint in {ckpt_dir}: {kept}")


def _save_artifact(cfg: Config, role: str, out_dir: AnyPath, trainable: Any, model_cfg: ModelConfig,
                   steps: int) -> AnyPath:
    if cfg.train.mode == "full":
        tok_dir = cfg.model.path if cfg.model.path and Path(cfg.model.path).is_dir() else None
        return save_params(out_dir / "model", trainable, model_cfg, tok_dir)
    rank = lora_rank(trainable)
    meta = {"role": role, "rank": rank, "alpha": cfg.train.lora.alpha,
            "scale": cfg.train.lora.alpha / rank, "targets": [p for p in PROJECTIONS if p in trainable],
            "base_model": cfg.model.path, "steps": steps}
    return checkpointing.save_adapter(out_dir / "adapter", trainable, meta)


@dataclasses.dataclass
class StepParts:
    """The jitted executables of training on a mesh, built from config and shapes alone
    (no data, no weights): what a run calls and what the rehearsal compiles."""

    step_fn: Callable[..., tuple[TrainState, dict]]
    fresh_fn: Callable[[Any], TrainState]   # step 0, made on the devices (jit, out_shardings)
    shardings: TrainState
    base_shardings: Any                     # frozen base (LoRA), else None
    batch_shardings: Batch
    layout: Layout
    abstract: TrainState                    # shapes/dtypes of the state, for restoring


def _trainable_shapes(cfg: Config, model_cfg: ModelConfig, init_adapters: Any) -> tuple[Any, Any]:
    """(shapes of what the trainable state starts from, its logical axes)."""
    if cfg.train.mode == "full":
        return nnx.state(abstract_model(model_cfg), nnx.Param).to_pure_dict(), logical_axes(model_cfg)
    shapes = (jax.eval_shape(lambda: init_adapters) if init_adapters is not None
              else adapter_shapes(model_cfg, cfg.train.lora.rank))
    return shapes, lora_logical_axes(tuple(shapes))


def _fresh(source: Any, *, optimizer: Any, model_cfg: ModelConfig, rank: int, seed: int) -> TrainState:
    """Step 0 from `source` (base params or earlier adapters), or fresh LoRA adapters."""
    if source is None:
        source = init_lora(model_cfg, rank, seed)
    return fresh_state(source, optimizer)


def build_step(cfg: Config, model_cfg: ModelConfig, mesh: Mesh, total: int,
               init_adapters: Any = None) -> StepParts:
    """Optimizer, shardings and the jitted step and state creation for `train.mode`."""
    tc = cfg.train
    rules = strategy_rules(cfg.mesh.strategy, cfg.mesh.rules)
    shapes, axes = _trainable_shapes(cfg, model_cfg, init_adapters)
    layout = Layout(tc.grad_accum, tc.batch_size * batch_shards(mesh, rules),
                    jax.process_index(), jax.process_count())
    optimizer, schedule = make_optimizer(tc, total)
    master = jax.eval_shape(to_master, shapes)
    shardings = state_shardings(optimizer, tree_shardings(axes, master, mesh, rules), master, mesh)
    lora = tc.mode == "lora"
    base_sh = param_shardings(model_cfg, mesh, rules) if lora else None
    spec = StepSpec(dataclasses.replace(model_cfg, compute_dtype=tc.compute_dtype),
                    tc.lora.alpha / lora_rank(shapes) if lora else None, tc.remat,
                    cfg.model.attention_impl, lora_dropout=tc.lora.dropout if lora else 0.0,
                    dropout_seed=cfg.seed,
                    activation_sharding=named(mesh, rules, ("batch", None, None), (layout.global_rows, 1, 1)))
    batch_sh = batch_shardings(mesh, rules, (layout.accum, layout.global_rows, 1))
    fresh = partial(_fresh, optimizer=optimizer, model_cfg=model_cfg, rank=tc.lora.rank, seed=cfg.seed)
    return StepParts(make_train_step(spec, optimizer, schedule, shardings, base_sh, batch_sh),
                     jax.jit(fresh, out_shardings=shardings), shardings, base_sh, batch_sh, layout,
                     jax.eval_shape(partial(fresh_state, optimizer=optimizer), shapes))


@dataclasses.dataclass
class Run:
    """Everything a training loop needs, built from the config before the first step."""

    data: SFTData
    total: int                 # optimizer steps of the whole run
    step_fn: Callable[..., tuple[TrainState, dict]]
    shardings: TrainState
    batch_shardings: Batch
    base: Params | None        # frozen base on the mesh (LoRA), else None
    fresh: Callable[[], TrainState]
    abstract: TrainState       # shapes/dtypes of the state, for restoring


def prepare(cfg: Config, examples: list[Example], base_params: Params, model_cfg: ModelConfig,
            mesh: Mesh, init_adapters: Any) -> Run:
    tc = cfg.train
    compile_cache.enable(cfg.compilation_cache)
    parts = build_step(cfg, model_cfg, mesh, 1, init_adapters)  # the layout, to size the data
    data = SFTData(examples, parts.layout, cfg.seed, tc.cutoff_len, tc.packing)
    total = tc.max_steps if tc.max_steps > 0 else data.num_steps(tc.epochs)
    parts = build_step(cfg, model_cfg, mesh, total, init_adapters)
    lora = tc.mode == "lora"
    source = init_adapters if lora else base_params
    if source is not None and jax.process_count() > 1:  # the loaded adapters are per host
        source = onto(source, parts.shardings.trainable)
    return Run(data, total, parts.step_fn, parts.shardings, parts.batch_shardings,
               onto(base_params, parts.base_shardings) if lora else None,
               lambda: parts.fresh_fn(source), parts.abstract)


def run_steps(run: Run, state: TrainState, pos: DataPosition, out: AnyPath, manager: Any,
              cfg: Config, role: str, restored: bool, curve: TrainingCurve) -> TrainState:
    """Steps from state.step to run.total: log, check, save every `save_every` and at the end."""
    tc, ckpt_dir, start = cfg.train, manager.directory, int(state.step)
    last_saved = start if restored else None
    log = MetricsLog(out, tc.log_every, jax.process_index() == 0, curve)
    bar = tqdm(total=run.total, initial=start, desc=f"train {role}", disable=jax.process_index() != 0)
    done = (state, pos)  # the last finished step and its data position, always stored together
    try:
        host_batch = run.data.batch(pos)
        for step in range(start + 1, run.total + 1):
            t0 = time.perf_counter()
            batch = to_device(host_batch, run.batch_shardings, run.data.layout)
            new_state, metrics = run.step_fn(done[0], run.base, batch)
            faults.checkpoint("train_step")
            epoch, next_pos = done[1].epoch, run.data.next(done[1])
            if step < run.total:
                host_batch = run.data.batch(next_pos)  # built while the device runs the step
            metrics = jax.device_get(metrics)
            profile.tick("train")
            check_finite(metrics, step, ckpt_dir, last_saved)
            done = (new_state, next_pos)  # one store: a signal lands before it or after it
            log.record(step, metrics, time.perf_counter() - t0, epoch, step == run.total)
            bar.update(1)
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
            if step % tc.save_every == 0 or step == run.total:
                checkpointing.save(manager, *done)
                last_saved = step
    except (KeyboardInterrupt, signals.Preempted, RuntimeError) as stop:
        if isinstance(stop, TrainingError):
            raise
        emergency_save(manager, *done, last_saved)
        raise
    finally:
        manager.wait_until_finished()
        bar.close()
    return done[0]


def emergency_save(manager: Any, state: TrainState, pos: DataPosition, last_saved: int | None) -> None:
    """Stopped between steps (SIGTERM, Ctrl-C, a failing device): keep the last finished
    step unless it is already saved. On several processes every one must take part, so
    this runs only where the stop reached a single process's run."""
    step = int(state.step)
    if step == 0 or step == last_saved or jax.process_count() > 1:
        return
    manager.wait_until_finished()
    checkpointing.save(manager, state, pos)
    manager.wait_until_finished()
    print(f"emergency checkpoint: step {step} saved in {manager.directory}", flush=True)


def train(cfg: Config, role: str, data_path: str | AnyPath, out_dir: str | AnyPath,
          base_params: Params, model_cfg: ModelConfig,
          tokenizer: transformers.PreTrainedTokenizerBase, mesh: Mesh,
          init_adapters: Any = None, claim: Callable[[], Any] | None = None,
          curve: TrainingCurve | None = None) -> AnyPath:
    """Train `role` on the records in `data_path`; return the artifact's directory.

    The artifact is `out_dir/adapter` (LoRA: Orbax weights + our metadata, and the same
    adapter as PEFT files that peft and vLLM load, see training/checkpointing.py) or
    `out_dir/model` (full: an Orbax params directory, see checkpoint/orbax_params.py).
    `init_adapters` continues from earlier adapters instead of fresh ones (LoRA).
    `claim` runs once the data and the step are ready, before anything is written to
    `out_dir`, so a run that fails its checks leaves the directory as it was. `curve`
    places the TensorBoard curves in a shared board (default: `out_dir/tensorboard`,
    tags `train/<role>/...`); its `steps` is set to the run's total steps.
    """
    out = as_path(out_dir)
    examples = encode_dataset(read_records(data_path), tokenizer, cfg.train.cutoff_len)
    run = prepare(cfg, examples, base_params, model_cfg, mesh, init_adapters)
    if claim is not None:
        claim()
    out.mkdir(parents=True, exist_ok=True)
    own = curve is None
    if own:
        curve = TrainingCurve(Board(out / TB_DIR, jax.process_index() == 0), f"train/{role}")
    curve.steps = run.total
    manager = checkpointing.open_manager(out / "checkpoints", cfg.train.keep)
    try:
        restored = checkpointing.restore_latest(manager, run.abstract, run.shardings)
        state, pos = restored or (run.fresh(), DataPosition())
        state = run_steps(run, state, pos, out, manager, cfg, role, restored is not None, curve)
    finally:
        manager.close()
        if own:
            curve.board.close()
    return _save_artifact(cfg, role, out, state.trainable, model_cfg, run.total)

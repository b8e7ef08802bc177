"""Fine-tune one role (generator or extender) on (prompt, response) records.

`train` is called by `launch.train` and, in-process, by the Self-Lengthen iteration
loop, which keeps the base model loaded across roles and iterations: the base params
are never modified or donated. A run resumes from the newest committed checkpoint in
`out_dir` and, on CPU, ends bitwise where an uninterrupted run would. A non-finite loss
or gradient stops the run before anything from that step is saved.
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
from jax.sharding import Mesh
from tensorboardX import SummaryWriter
from tqdm import tqdm

from selflengthen_jax import compile_cache, faults
from selflengthen_jax.checkpoint.orbax_params import save_params
from selflengthen_jax.config import Config
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import init_lora, lora_logical_axes, lora_rank
from selflengthen_jax.models.transformer import PROJECTIONS, Params, logical_axes
from selflengthen_jax.parallel.rules import Rules, strategy_rules, tree_shardings
from selflengthen_jax.training import checkpointing
from selflengthen_jax.training.data import (Batch, DataPosition, Example, Layout, SFTData,
                                            encode_dataset, read_records)
from selflengthen_jax.training.optimizer import make_optimizer, to_master
from selflengthen_jax.training.step import (StepSpec, TrainState, batch_shardings, fresh_state,
                                            init_state, make_train_step, state_shardings)


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
    """Windowed means of step metrics to metrics.jsonl and TensorBoard (process 0 only)."""

    def __init__(self, out_dir: Path, every: int, enabled: bool):
        self.every, self.enabled = every, enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = SummaryWriter(str(out_dir / "tensorboard")) if enabled else None
        self.window: list[tuple[dict[str, float], float]] = []

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
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_finite(metrics: dict[str, Any], step: int, ckpt_dir: Path, last_saved: int | None) -> None:
    for key in ("loss", "grad_norm"):
        if not np.isfinite(metrics[key]):
            kept = f"step {last_saved}" if last_saved is not None else "none yet"
            raise TrainingError(f"{key} is {float(metrics[key])} at step {step}: training stopped; "
                                f"last good checkpoint in {ckpt_dir}: {kept}")


def _trainable_source(cfg: Config, base_params: Params, model_cfg: ModelConfig,
                      init_adapters: Any) -> tuple[Any, Any]:
    """(what the trainable state starts from, its logical axes)."""
    if cfg.train.mode == "full":
        return base_params, logical_axes(model_cfg)
    if cfg.train.lora.dropout > 0:
        raise TrainingError("train.lora.dropout > 0 is not supported; set it to 0")
    adapters = init_adapters if init_adapters is not None else init_lora(
        model_cfg, cfg.train.lora.rank, cfg.seed)
    return adapters, lora_logical_axes(tuple(adapters))


def _save_artifact(cfg: Config, role: str, out_dir: Path, trainable: Any, model_cfg: ModelConfig,
                   steps: int) -> Path:
    if cfg.train.mode == "full":
        tok_dir = cfg.model.path if cfg.model.path and Path(cfg.model.path).is_dir() else None
        return save_params(out_dir / "model", trainable, model_cfg, tok_dir)
    rank = lora_rank(trainable)
    meta = {"role": role, "rank": rank, "alpha": cfg.train.lora.alpha,
            "scale": cfg.train.lora.alpha / rank, "targets": [p for p in PROJECTIONS if p in trainable],
            "base_model": cfg.model.path, "steps": steps}
    return checkpointing.save_adapter(out_dir / "adapter", trainable, meta)


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
    source, axes = _trainable_source(cfg, base_params, model_cfg, init_adapters)
    rules = strategy_rules(cfg.mesh.strategy, cfg.mesh.rules)
    model_cfg = dataclasses.replace(model_cfg, compute_dtype=tc.compute_dtype)
    layout = Layout(tc.grad_accum, tc.batch_size * batch_shards(mesh, rules),
                    jax.process_index(), jax.process_count())
    data = SFTData(examples, layout, cfg.seed, tc.cutoff_len, tc.packing)
    total = tc.max_steps if tc.max_steps > 0 else data.num_steps(tc.epochs)
    optimizer, schedule = make_optimizer(tc, total)
    shapes = jax.eval_shape(to_master, source)
    shardings = state_shardings(optimizer, tree_shardings(axes, shapes, mesh, rules), shapes, mesh)
    lora = tc.mode == "lora"
    base_sh = tree_shardings(logical_axes(model_cfg), base_params, mesh, rules) if lora else None
    spec = StepSpec(model_cfg, tc.lora.alpha / lora_rank(source) if lora else None, tc.remat,
                    cfg.model.attention_impl)
    batch_sh = batch_shardings(mesh, rules, (layout.accum, layout.global_rows, 1))
    return Run(data, total, make_train_step(spec, optimizer, schedule, shardings, base_sh, batch_sh),
               shardings, batch_sh, jax.device_put(base_params, base_sh) if lora else None,
               lambda: init_state(source, optimizer, shardings),
               jax.eval_shape(partial(fresh_state, optimizer=optimizer), source))


def run_steps(run: Run, state: TrainState, pos: DataPosition, out: Path, manager: Any,
              cfg: Config, role: str, restored: bool) -> TrainState:
    """Steps from state.step to run.total: log, check, save every `save_every` and at the end."""
    tc, ckpt_dir, start = cfg.train, Path(manager.directory), int(state.step)
    last_saved = start if restored else None
    log = MetricsLog(out, tc.log_every, jax.process_index() == 0)
    bar = tqdm(total=run.total, initial=start, desc=f"train {role}", disable=jax.process_index() != 0)
    try:
        host_batch = run.data.batch(pos)
        for step in range(start + 1, run.total + 1):
            t0 = time.perf_counter()
            batch = to_device(host_batch, run.batch_shardings, run.data.layout)
            state, metrics = run.step_fn(state, run.base, batch)
            faults.checkpoint("train_step")
            epoch, pos = pos.epoch, run.data.next(pos)
            if step < run.total:
                host_batch = run.data.batch(pos)  # built while the device runs the step
            metrics = jax.device_get(metrics)
            check_finite(metrics, step, ckpt_dir, last_saved)
            log.record(step, metrics, time.perf_counter() - t0, epoch, step == run.total)
            bar.update(1)
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
            if step % tc.save_every == 0 or step == run.total:
                checkpointing.save(manager, state, pos)
                last_saved = step
    finally:
        manager.wait_until_finished()
        bar.close()
        log.close()
    return state


def train(cfg: Config, role: str, data_path: str | Path, out_dir: str | Path,
          base_params: Params, model_cfg: ModelConfig,
          tokenizer: transformers.PreTrainedTokenizerBase, mesh: Mesh,
          init_adapters: Any = None, claim: Callable[[], Any] | None = None) -> Path:
    """Train `role` on the records in `data_path`; return the artifact's directory.

    The artifact is `out_dir/adapter` (LoRA: adapter weights + adapter_config.json) or
    `out_dir/model` (full: an Orbax params directory, see checkpoint/orbax_params.py).
    `init_adapters` continues from earlier adapters instead of fresh ones (LoRA).
    `claim` runs once the data and the step are ready, before anything is written to
    `out_dir`, so a run that fails its checks leaves the directory as it was.
    """
    out = Path(out_dir)
    examples = encode_dataset(read_records(data_path), tokenizer, cfg.train.cutoff_len)
    run = prepare(cfg, examples, base_params, model_cfg, mesh, init_adapters)
    if claim is not None:
        claim()
    out.mkdir(parents=True, exist_ok=True)
    manager = checkpointing.open_manager(out / "checkpoints", cfg.train.keep)
    try:
        restored = checkpointing.restore_latest(manager, run.abstract, run.shardings)
        state, pos = restored or (run.fresh(), DataPosition())
        state = run_steps(run, state, pos, out, manager, cfg, role, restored is not None)
    finally:
        manager.close()
    return _save_artifact(cfg, role, out, state.trainable, model_cfg, run.total)

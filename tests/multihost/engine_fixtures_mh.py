"""What both the 2-process run and the single-process reference compute."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.config import EngineSection, MeshSection, from_dict
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import Request, SamplingParams

PREEMPT_STEPS, PREEMPT_AT = 3, 2  # SIGTERM while step 2 runs; no periodic save before the end
PROMPTS = ["The quick brown fox", "Write a long essay about rivers.", "写一篇关于春天的长文章。", "A"]
MESH = MeshSection(data=2, fsdp=4, tensor=1, strategy="fsdp")


def run_generation(ckpt: str) -> list[list[int]]:
    """Greedy and sampled requests on a global 8-device fsdp mesh."""
    mesh = make_mesh(MESH)
    rules = strategy_rules(MESH.strategy)
    engine = Engine(load_model(ckpt, mesh, rules), EngineSection(slots=8, max_prefill_len=64,
                    max_new_tokens=32, decode_chunk=8), mesh, rules)
    reqs = [Request(id=str(i), prompt=p, params=SamplingParams(max_new_tokens=24, seed=i, stop=(),
                                                               greedy=i % 2 == 0))
            for i, p in enumerate(PROMPTS)]
    return [list(c.token_ids) for c in engine.generate(reqs)]


def _train_config(steps: int, save_every: int):
    return from_dict({"seed": 0, "mesh": dataclasses.asdict(MESH),
                      "train": {"mode": "lora", "epochs": 1, "batch_size": 1, "cutoff_len": 64,
                                "save_every": save_every, "log_every": 1, "max_steps": steps}})


def _write_data(out: str) -> Path:
    data = Path(out) / "data.jsonl"
    if jax.process_index() == 0:
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"prompt": p, "response": p + " and more."}) + "\n"
                                for p in PROMPTS))
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"data written {out}")
    return data


def _leaves(adapters) -> list[np.ndarray]:
    from jax.experimental import multihost_utils
    return [np.asarray(jax.device_get(x)) if x.is_fully_addressable else
            np.asarray(multihost_utils.process_allgather(x, tiled=True))
            for x in jax.tree.leaves(adapters)]


def run_training(ckpt: str, out: str) -> dict:
    """Three LoRA steps with an Orbax save after each, then a restore; returns the losses,
    a param checksum and the adapters (the uninterrupted run `run_preemption` compares with)."""
    from selflengthen_jax.training.checkpointing import load_adapter
    from selflengthen_jax.training.trainer import train

    data = _write_data(out)
    mesh = make_mesh(MESH)
    model = load_model(ckpt, mesh, strategy_rules(MESH.strategy))
    artifact = train(_train_config(PREEMPT_STEPS, 1), "gen", data, Path(out) / "gen", model.params, model.cfg,
                     model.tokenizer, mesh)
    leaves = _leaves(load_adapter(artifact)[0])
    metrics = [json.loads(line) for line in (Path(out) / "gen" / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [m["loss"] for m in metrics if "loss" in m],
            "checksum": float(sum(np.abs(x).sum() for x in leaves)), "adapters": leaves}


def run_preemption(ckpt: str, out: str, straight: list[np.ndarray]) -> dict:
    """The run of `run_training` (its adapters: `straight`) without periodic saves,
    stopped by a real SIGTERM delivered while step 2 runs, to both processes or to
    process 0 alone, each restarted once (Orbax's saves do not change the numbers).
    Returns, per case: every process's exit code and stop line (the launcher's
    `resumable`), the steps Orbax holds after the stop, the logged steps after the
    restart, and whether the final adapters equal the uninterrupted run's."""
    import contextlib
    import io
    import os
    import signal

    from launch import cli
    from selflengthen_jax.training import checkpointing, trainer

    data = _write_data(out)
    mesh = make_mesh(MESH)
    model = load_model(ckpt, mesh, strategy_rules(MESH.strategy))
    cfg = _train_config(PREEMPT_STEPS, 100)

    def train(to: Path):
        return trainer.train(cfg, "gen", data, to, model.params, model.cfg, model.tokenizer, mesh)

    real, result = trainer.make_train_step, {}
    for case, signalled in (("both", {0, 1}), ("one", {0})):
        to = Path(out) / case

        def patched(*args, **kwargs):
            step, calls = real(*args, **kwargs), [0]

            def preempted_at(*a):
                calls[0] += 1
                if calls[0] == PREEMPT_AT and jax.process_index() in signalled:
                    os.kill(os.getpid(), signal.SIGTERM)  # lands while the step is dispatched
                return step(*a)
            return preempted_at
        trainer.make_train_step, err, printed = patched, io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(printed), \
                    cli.resumable(to):
                train(to)
            code = 0
        except SystemExit as stop:
            code = stop.code
        finally:
            trainer.make_train_step = real
        manager = checkpointing.open_manager(to / "checkpoints", keep=2)
        saved = manager.all_steps()
        manager.close()
        resumed = _leaves(checkpointing.load_adapter(train(to))[0])
        logged = [json.loads(line)["step"] for line in (to / "metrics.jsonl").read_text().splitlines()]
        result[case] = {"code": code, "stderr": err.getvalue().strip(), "stdout": printed.getvalue(),
                        "saved": list(saved), "logged": logged,
                        "identical": all(np.array_equal(a, b) for a, b in zip(straight, resumed))}
    return result

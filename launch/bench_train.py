"""Training-step speed and memory: our JAX step vs transformers + torch, same model and data.

    python -m launch.bench_train [--steps 6] [--warmup 3] [--output runs/bench_train.json]
        [--config FILE] [--print-config] [key=value ...]

No argument is required. Its config is the workload, not a run config: the model shape,
sequence length, optimizer and LoRA sizes and the step counts are the keys listed at the
end of this help. Left at their defaults, results compare across machines and commits;
--config FILE (a YAML of these keys) and key=value overrides change single keys, and
--steps/--warmup are the keys steps/warmup. The older spelling --out still works, with a
hint.

By default the model is a ~40M-parameter Qwen2 shape (hidden 512, 8 layers, 8 heads / 2
KV heads, vocab 32000, tied embeddings, float32), built once with random weights by
transformers and loaded by both sides, trained on one 1024-token sequence per step with
AdamW (clipping at 1.0). Steps alternate between the two frameworks after a warm-up, so
machine noise hits both alike; the table reports medians, and minimums (the best
estimate of uncontended speed on a shared machine). Peak RSS is measured for each
(framework, mode) in its own subprocess. The last line is `ratio_vs_torch=<x>`: our
full fine-tuning tokens/s over torch's, from the medians.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: its idle worker threads otherwise spin after every step and
# take one of the two cores from our (interleaved) step; torch's own speed is unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import yaml  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from launch import cli  # noqa: E402
from selflengthen_jax.bench.generate import ModelShape, check_model_shape  # noqa: E402
from selflengthen_jax.checkpoint.hf_import import load_params, read_config  # noqa: E402
from selflengthen_jax.config import MeshSection, TrainSection, check_positive  # noqa: E402
from selflengthen_jax.models.lora import init_lora, lora_logical_axes  # noqa: E402
from selflengthen_jax.models.transformer import logical_axes  # noqa: E402
from selflengthen_jax.outputs import check_file  # noqa: E402
from selflengthen_jax.parallel.mesh import make_mesh  # noqa: E402
from selflengthen_jax.parallel.rules import strategy_rules, tree_shardings  # noqa: E402
from selflengthen_jax.training.data import Batch  # noqa: E402
from selflengthen_jax.training.optimizer import make_optimizer, to_master  # noqa: E402
from selflengthen_jax.training.step import (StepSpec, batch_shardings, init_state, make_train_step,  # noqa: E402
                                            state_shardings)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RUNNERS = ("ours:full", "torch:full", "ours:lora", "torch:lora")


@dataclasses.dataclass(frozen=True)
class TrainBench:
    """The workload: the model both sides train, one sequence per step, the optimizer."""

    model: ModelShape = ModelShape()
    seq_len: int = 1024            # tokens per step (one sequence)
    learning_rate: float = 1e-4    # AdamW, clipping at 1.0, no weight decay
    lora_rank: int = 8             # LoRA on all seven projections
    lora_alpha: float = 16.0
    steps: int = 6                 # timed steps per runner
    warmup: int = 3                # untimed steps per runner (compiles ours)


def check_bench(spec: TrainBench) -> TrainBench:
    """`spec` itself if it describes a trainable model and workload, else one ConfigError."""
    check_positive(spec, zero_ok=("warmup",))
    check_model_shape(spec.model)
    return spec


def hf_model(spec: TrainBench) -> dict:
    """The model as transformers' Qwen2Config keywords (positions cover the sequence)."""
    m = spec.model
    return dict(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.intermediate,
                num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
                tie_word_embeddings=True, max_position_embeddings=max(4096, spec.seq_len))


def build_checkpoint(path: Path, spec: TrainBench) -> Path:
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_model(spec)))
    model.save_pretrained(path, safe_serialization=True)
    return path


def sequence(spec: TrainBench, seed: int = 0) -> np.ndarray:
    """seq_len + 1 random token ids: seq_len inputs, each predicting the next."""
    return np.random.default_rng(seed).integers(0, spec.model.vocab, spec.seq_len + 1).astype(np.int32)


# -- ours ---------------------------------------------------------------------------------

def ours_step(path: Path, mode: str, bench: TrainBench) -> Callable[[], float]:
    """Our jitted step on one device (remat none, one logits chunk); returns the loss."""
    cfg = read_config(path)
    params = load_params(path, cfg)
    mesh = make_mesh(MeshSection(data=1), jax.devices()[:1])
    rules = strategy_rules("dp")
    tc = TrainSection(mode=mode, learning_rate=bench.learning_rate, warmup_ratio=0.0, max_grad_norm=1.0,
                      remat="none")
    optimizer, schedule = make_optimizer(tc, total_steps=1000)
    lora = mode == "lora"
    source = init_lora(cfg, bench.lora_rank, 0) if lora else params
    axes = lora_logical_axes() if lora else logical_axes(cfg)
    shapes = jax.eval_shape(to_master, source)
    shardings = state_shardings(optimizer, tree_shardings(axes, shapes, mesh, rules), shapes, mesh)
    base_sh = tree_shardings(logical_axes(cfg), params, mesh, rules) if lora else None
    seq = bench.seq_len
    spec = StepSpec(cfg, bench.lora_alpha / bench.lora_rank if lora else None, remat="none", loss_chunk=seq)
    batch_sh = batch_shardings(mesh, rules, (1, 1, seq))
    step = make_train_step(spec, optimizer, schedule, shardings, base_sh, batch_sh)
    tokens = sequence(bench)
    host = Batch(tokens[None, None, :-1], tokens[None, None, 1:], np.ones((1, 1, seq), np.float32),
                 np.arange(seq, dtype=np.int32)[None, None], np.ones((1, 1, seq), np.int32))
    batch = Batch(*(jax.device_put(x, s) for x, s in zip(host, batch_sh)))
    base = jax.device_put(params, base_sh) if lora else None
    state = init_state(source, optimizer, shardings)
    if not lora:
        del params

    def run() -> float:
        nonlocal state
        state, metrics = step(state, base, batch)
        return float(metrics["loss"])  # the one host sync: the step's end
    return run


# -- transformers + torch -------------------------------------------------------------------

class LoraLinear(torch.nn.Module):
    """y = W x + scale * B A x with W frozen; A as PEFT's kaiming-uniform, B = 0."""

    def __init__(self, base: torch.nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        bound = 1.0 / math.sqrt(base.in_features)
        self.a = torch.nn.Parameter(torch.empty(base.in_features, rank).uniform_(-bound, bound))
        self.b = torch.nn.Parameter(torch.zeros(rank, base.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.a) @ self.b)


def add_lora(model: torch.nn.Module, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                if hasattr(parent, name):
                    setattr(parent, name, LoraLinear(getattr(parent, name), rank, alpha / rank))
    return [p for p in model.parameters() if p.requires_grad]


def torch_step(path: Path, mode: str, bench: TrainBench) -> Callable[[], float]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    trainable = add_lora(model, bench.lora_rank, bench.lora_alpha) if mode == "lora" else list(model.parameters())
    opt = torch.optim.AdamW(trainable, lr=bench.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tokens = torch.tensor(sequence(bench), dtype=torch.long)
    inputs, targets = tokens[None, :-1], tokens[None, 1:]

    def run() -> float:
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return run


def make_runner(name: str, path: Path, bench: TrainBench) -> Callable[[], float]:
    framework, mode = name.split(":")
    return (ours_step if framework == "ours" else torch_step)(path, mode, bench)


# -- measurement ----------------------------------------------------------------------------

def timed(fn: Callable[[], float]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(runners: dict[str, Callable[[], float]], steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step for each runner, alternating runners within every round."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(steps):
        for name, fn in runners.items():
            times[name].append(timed(fn))
    return times


def peak_rss_mib(name: str, path: Path, workload: Path, steps: int) -> float:
    """Peak resident memory of a fresh process that builds `name` and runs `steps` steps
    of the workload in the YAML file `workload`."""
    out = subprocess.run([sys.executable, "-m", "launch.bench_train", "--rss-of", name,
                          "--checkpoint", str(path), "--config", str(workload), f"steps={steps}"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def rss_child(name: str, path: Path, bench: TrainBench) -> None:
    run = make_runner(name, path, bench)
    for _ in range(bench.steps):
        run()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def ratio(rows: dict, mode: str, key: str) -> float:
    """Our speed over torch's (> 1: ours is faster) by the given step-time statistic."""
    return rows[f"torch:{mode}"][key] / rows[f"ours:{mode}"][key]


def report(times: dict[str, list[float]], rss: dict[str, float], bench: TrainBench) -> dict:
    rows = {}
    for name, secs in times.items():
        median = statistics.median(secs)
        rows[name] = {"step_s_median": median, "step_s_min": min(secs), "step_s_max": max(secs),
                      "tokens_per_s": bench.seq_len / median, "peak_rss_mib": rss.get(name)}
    return {
        "model": hf_model(bench), "seq_len": bench.seq_len, "batch": 1, "dtype": "float32",
        "optimizer": f"AdamW lr {bench.learning_rate}, clip 1.0",
        "lora": {"rank": bench.lora_rank, "alpha": bench.lora_alpha, "targets": "all 7 projections"},
        "steps": bench.steps, "warmup": bench.warmup,
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "results": rows,
        "ratio_vs_torch": ratio(rows, "full", "step_s_median"),
        "ratio_vs_torch_min": ratio(rows, "full", "step_s_min"),
        "lora_ratio_vs_torch": ratio(rows, "lora", "step_s_median"),
        "lora_ratio_vs_torch_min": ratio(rows, "lora", "step_s_min"),
    }


def print_table(result: dict) -> None:
    print(f"{'runner':<12}{'median step s':>15}{'min step s':>12}{'tokens/s':>11}{'peak RSS MiB':>14}")
    for name, r in result["results"].items():
        rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:,.0f}"
        print(f"{name:<12}{r['step_s_median']:>15.3f}{r['step_s_min']:>12.3f}"
              f"{r['tokens_per_s']:>11,.0f}{rss:>14}")
    print(f"device: {result['device']}")
    print(f"ours/torch speed (median, min): full {result['ratio_vs_torch']:.2f}, "
          f"{result['ratio_vs_torch_min']:.2f}; LoRA {result['lora_ratio_vs_torch']:.2f}, "
          f"{result['lora_ratio_vs_torch_min']:.2f}")
    print(f"ratio_vs_torch={result['ratio_vs_torch']:.3f}")


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("launch.bench_train", __doc__, keys=TrainBench())
    p.add_argument("--steps", type=int, help="timed steps per runner (the key steps, default 6)")
    p.add_argument("--warmup", type=int, help="untimed steps per runner, which compile ours "
                                              "(the key warmup, default 3)")
    p.add_argument("--output", type=Path, default=Path("runs/bench_train.json"),
                   help="JSON file for the results (default runs/bench_train.json)")
    p.add_argument("--rss-of", choices=RUNNERS, help=argparse.SUPPRESS)  # child process mode
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = cli.parse(p, argv, old_flags={"--out": "--output"})
    with cli.user_errors():
        flags = [f"{key}={value}" for key, value in (("steps", args.steps), ("warmup", args.warmup))
                 if value is not None]
        bench = cli.own_config(args, TrainBench, extra=flags, check=check_bench)
        if args.rss_of:
            return rss_child(args.rss_of, args.checkpoint, bench)
        check_file(args.output, what="--output")  # before minutes of measuring
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp) / "qwen2-bench", bench)
        workload = Path(tmp) / "workload.yaml"
        workload.write_text(yaml.safe_dump(dataclasses.asdict(bench), sort_keys=False))
        rss = {name: peak_rss_mib(name, path, workload, bench.warmup + 1) for name in RUNNERS}
        times = {}
        for mode in ("full", "lora"):  # one mode's pair in memory at a time
            pair = {f"ours:{mode}": make_runner(f"ours:{mode}", path, bench),
                    f"torch:{mode}": make_runner(f"torch:{mode}", path, bench)}
            times.update(interleaved(pair, bench.steps, bench.warmup))
            del pair
    result = report(times, rss, bench)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print_table(result)


if __name__ == "__main__":
    cli.program(main)

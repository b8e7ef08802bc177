"""Benchmark sharding strategies on this machine's devices, or a pod slice (one process per host).

    python -m launch.bench_sharding [--config FILE] [--bench BENCH.yaml] [--model MODEL]
        [--strategies dp,fsdp,tp,fsdp_tp] [--random-init] [--distributed] [--output DIR]
        [--print-config] [key=value ...] [bench.key=value ...]

No argument is required: with none it measures the built-in tiny model on this
machine's devices. Prints a ranked markdown table and writes
bench_sharding.{md,csv,json,png} to --output (default: bench.output_dir, else
<output_dir>/bench_sharding). `bench.*` overrides go to the bench section (its keys:
README.md, "Benchmark on the devices you have"); the rest to the run config. --model
is bench.model: a preset (tiny, qwen2-7b, ...), a checkpoint directory or a hub id
(org/name) from the local Hugging Face cache, like model.path. --print-config prints
the run config, then `---` and the bench section. Exits 1 when strategies that must
agree (float32) do not. The older spelling --out still works, with a hint.

    python -m launch.bench_sharding --topology SLICE [--config FILE] [--model MODEL]
        [--strategies ...] [--output DIR] [key=value ...]

With `--topology` (a TPU slice: v5p-16, v5e:2x2, ...) nothing runs: each strategy's
executables are compiled for the slice with the TPU compiler (needs the `tpu` extra) and
ranked by per-chip memory, collective bytes per step and an estimated, lower-bound step
time; the table also goes to bench_sharding_topology.{md,csv,json} in --output. The
model is the run config's (--model sets model.preset for a preset name, else
model.path); the bench section is not read, so --bench and bench.* are refused.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

import jax

from launch import cli
from selflengthen_jax.bench import sharding_report as report
from selflengthen_jax.bench.sharding import load_bench, prepare, run
from selflengthen_jax.checkpoint.hub import resolve_model
from selflengthen_jax.models.presets import is_preset
from selflengthen_jax.outputs import check_dir
from selflengthen_jax.pipeline.start import model_config
from selflengthen_jax.plan import slices, strategies


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.bench_sharding", __doc__)
    p.add_argument("--bench", help="bench YAML: shapes to measure and custom layouts")
    p.add_argument("--model", help="preset, checkpoint directory or hub id to measure (bench.model; "
                                   "default: model.path, else model.preset, else tiny)")
    p.add_argument("--strategies", help="comma-separated: dp,fsdp,tp,fsdp_tp, config (the run "
                                        "config's mesh) or layouts named in the bench YAML")
    p.add_argument("--random-init", action="store_true",
                   help="random weights even when the model is a checkpoint directory")
    p.add_argument("--output", help="output directory for the table, CSV, JSON and chart")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: jax.distributed.initialize() first (auto-detected on TPU "
                        "pod slices, Slurm and Open MPI); run the same command on every host")
    p.add_argument("--topology", metavar="SLICE",
                   help="rank strategies by compiling for this TPU slice (no TPU needed)")
    args = cli.parse(p, argv, old_flags={"--out": "--output"})
    bench_overrides = [o.removeprefix("bench.") for o in args.overrides if o.startswith("bench.")]
    args.overrides = [o for o in args.overrides if not o.startswith("bench.")]
    if args.topology:
        return _topology(args, bench_overrides)
    cli.init_distributed(args.distributed)
    with cli.user_errors():
        flags = [f"{key}={json.dumps(value)}" for key, value in
                 (("model", args.model), ("strategies", _names(args.strategies))) if value is not None]
        bench = load_bench(args.bench, [*bench_overrides, *flags])
        bench = dataclasses.replace(bench, model=resolve_model(bench.model))  # a hub id: its snapshot
        cfg = cli.config(args, also=[dataclasses.asdict(bench)])
        chosen = args.output or bench.output_dir
        out = check_dir(chosen or Path(cfg.output_dir) / "bench_sharding",
                        [cfg.model.path] if cfg.model.path else [], what="--output",
                        own_run=None if chosen else cfg.output_dir)  # the default sits in the run's dir
        setup = prepare(cfg, bench, args.random_init)
    with cli.resumable(out, saved=False):
        result = run(setup)
    if jax.process_index() == 0:
        print(report.markdown(result))
        for path in report.write(result, out):
            print(f"wrote {path}", file=sys.stderr)
        if result.failures or result.warnings:
            print(report.numerics(result), file=sys.stderr)
    if result.failures:
        raise SystemExit(1)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",")]


def _topology(args, bench_overrides: Sequence[str]) -> None:
    with cli.user_errors():
        if args.bench or bench_overrides:
            raise ValueError("--topology compiles the run config's model and reads no bench section: "
                             "drop --bench and bench.* (use --model, model.path or model.preset)")
        model = [] if args.model is None else \
            [f"model.{'preset' if is_preset(args.model) else 'path'}={json.dumps(args.model)}"]
        cfg = cli.config(args, model)
        target = slices.parse_slice(args.topology)
        mcfg = model_config(cfg)
        out = check_dir(args.output or Path(cfg.output_dir) / "bench_sharding", [], what="--output")
        names = _names(args.strategies) or [*strategies.STRATEGIES, "config"]
        try:
            devices = slices.topology_devices(target)
        except slices.LibtpuMissing as e:
            cli.fail(str(e))
        ranked = strategies.rank(cfg, mcfg, target, devices, names,
                                 log=lambda m: print(m, file=sys.stderr))
    table = strategies.markdown(ranked)
    print(slices.describe(target, devices) + "\n\n" + table)
    for path in strategies.write(ranked, out):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    cli.program(main)

"""Run the Self-Lengthen loop, check it, or rehearse it for a TPU slice.

    python -m launch.iterate [--config FILE] [--model PATH] [--output DIR] [--dry-run]
        [--rehearse SLICE [--json FILE] [--only NAMES]] [--profile N] [--force]
        [--distributed] [--print-config] [key=value ...]

With no arguments it runs the embedded demo (configs/demo.yaml on the tiny model
shipped in the package). --model and --output are short for the config keys
model.path and output_dir. Killed at any point and started again with the same
command, it continues where it stopped; Ctrl-C or SIGTERM stops it with one line and a
resume hint. Training curves, generation metrics, length histograms and --profile
traces go to one TensorBoard run: `tensorboard --logdir OUTPUT_DIR/tensorboard`.

`--dry-run` runs every start-up check and prints the planned memory per device (instant).
`--rehearse SLICE` (e.g. v5p-16, v5e:2x2) compiles every executable of the run for that
TPU slice with XLA's TPU compiler on this host (needs the `tpu` extra, loads no
weights) and reports each one's per-chip memory, FLOPs and collective bytes. Exit code:
0 everything fits, 3 something does not (the last line names an override to try),
1 the compiler refused an executable, 2 bad input or no libtpu.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launch import cli
from selflengthen_jax.demo.shipped import with_demo_model
from selflengthen_jax.metrics.tensorboard import TB_DIR
from selflengthen_jax.pipeline import start
from selflengthen_jax.plan import checks
from selflengthen_jax.plan.rehearsal import CompileError, as_json
from selflengthen_jax.plan.slices import LibtpuMissing


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("launch.iterate", __doc__)
    p.add_argument("--model", help="base checkpoint directory (sets model.path)")
    p.add_argument("--output", help="the run's directory (sets output_dir)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every start-up check and print per-device memory; load no weights")
    cli.add_profile(p)
    p.add_argument("--rehearse", metavar="SLICE",
                   help="compile every executable for a TPU slice (v4-32, v5p-16, v5e:2x2, ...); no TPU needed")
    p.add_argument("--json", metavar="FILE", help="with --rehearse: also write the rows as JSON")
    p.add_argument("--only", metavar="NAMES", default="",
                   help="with --rehearse: compile only executables whose names start with these "
                        "(comma-separated, e.g. 'train step,decode chunk')")
    p.add_argument("--force", action="store_true", help="take over an output_dir of another run")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: every host runs this same command (jax.distributed.initialize)")
    args = cli.parse(p, argv)
    cli.init_distributed(args.distributed)
    if args.config is None:
        args.config = "demo"
    with cli.user_errors():
        flags = cli.flag_overrides({"model.path": args.model, "output_dir": args.output})
        cfg = cli.config(args, flags, complete=with_demo_model)
        if args.dry_run:
            print(checks.dry_run(cfg, force=args.force))
            return 0
        if args.rehearse:
            return _rehearse(cfg, args.rehearse, args.json, tuple(n for n in args.only.split(",") if n))
        out = start.prepare(cfg, force=args.force)
    with cli.resumable(cfg.output_dir):  # from here on, even while the model builds or loads
        with cli.user_errors():
            loop = start.start(cfg, out, force=args.force)
        with cli.profiling(args, Path(cfg.output_dir) / TB_DIR):
            loop.run()
    return 0


def _rehearse(cfg, slice_name: str, json_path: str | None, only: tuple[str, ...]) -> int:
    try:
        result = checks.rehearse(cfg, slice_name, log=lambda m: print(m, file=sys.stderr), only=only)
    except LibtpuMissing as e:
        cli.fail(str(e))
    except CompileError as e:
        print(f"error: the TPU compiler refused {e}", file=sys.stderr)
        return 1
    print(result.text)
    if json_path:
        Path(json_path).write_text(json.dumps(as_json(result.rows), indent=2) + "\n", encoding="utf-8")
    print(result.last_line)
    return 0 if result.fits else 3


if __name__ == "__main__":
    cli.program(main)

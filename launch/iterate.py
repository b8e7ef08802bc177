"""Run the Self-Lengthen loop.

    python -m launch.iterate [--config FILE] [--model PATH] [--output DIR] [--dry-run]
        [--profile N] [--force] [--distributed] [--print-config] [key=value ...]

With no arguments it runs the embedded demo (configs/demo.yaml on the tiny model
shipped in the package). --model and --output are short for the config keys
model.path and output_dir. Killed at any point and started again with the same
command, it continues where it stopped; Ctrl-C or SIGTERM stops it with one line and a
resume hint. Training curves, generation metrics, length histograms and --profile
traces go to one TensorBoard run: `tensorboard --logdir OUTPUT_DIR/tensorboard`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from launch import cli
from selflengthen_jax.demo.shipped import with_demo_model
from selflengthen_jax.metrics.tensorboard import TB_DIR
from selflengthen_jax.pipeline import start


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("launch.iterate", __doc__)
    p.add_argument("--model", help="base checkpoint directory (sets model.path)")
    p.add_argument("--output", help="the run's directory (sets output_dir)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every start-up check and print per-device memory; load no weights")
    cli.add_profile(p)
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
            print(start.dry_run(cfg, force=args.force))
            return 0
        out = start.prepare(cfg, force=args.force)
    with cli.resumable(cfg.output_dir):  # from here on, even while the model builds or loads
        with cli.user_errors():
            loop = start.start(cfg, out, force=args.force)
        with cli.profiling(args, Path(cfg.output_dir) / TB_DIR):
            loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

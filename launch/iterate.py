"""`python -m launch.iterate [--config FILE] [--dry-run] [--force] [key=value ...]`

Runs the Self-Lengthen loop. With no arguments it runs the embedded demo
(configs/demo.yaml on the tiny model shipped in the package). Killed at any point and
started again with the same command, it continues where it stopped; Ctrl-C or SIGTERM
stops it with one line and a resume hint.
"""

from __future__ import annotations

import sys

from launch import cli
from selflengthen_jax.demo.shipped import with_demo_model
from selflengthen_jax.pipeline import start


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("launch.iterate", __doc__.splitlines()[2])
    p.add_argument("--dry-run", action="store_true",
                   help="run every start-up check and print per-device memory; load no weights")
    p.add_argument("--force", action="store_true", help="take over an output_dir of another run")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: every host runs this same command (jax.distributed.initialize)")
    args = cli.parse(p, argv)
    cli.init_distributed(args.distributed)
    if args.config is None:
        args.config = "demo"
    with cli.user_errors():
        cfg = with_demo_model(cli.config(args))
        if args.dry_run:
            print(start.dry_run(cfg, force=args.force))
            return 0
        out = start.prepare(cfg, force=args.force)
    with cli.resumable(cfg.output_dir):  # from here on, even while the model builds or loads
        with cli.user_errors():
            loop = start.start(cfg, out, force=args.force)
        loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

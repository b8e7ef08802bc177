"""Assemble long.jsonl from finished iterations of a Self-Lengthen run.

    python -m launch.collect --input RUN_DIR --output long.jsonl [--iters 1,2]
        [--config FILE] [key=value ...]

Required: --output, and --input (the run's output_dir) unless the config gives
`output_dir` (the only config key this script reads).

Default: every iteration whose iter_k/ holds initial.jsonl and extended.jsonl, plus the
extra rounds in DIR/collect/round_r/ if the run made them; --iters takes only the listed iterations.
Records are deduplicated by (instruction, response); ids become iter_k/<file>/<id>.
The output must lie outside the run directory, and an existing file there must be one
this script wrote. The older spelling --run still works, with a hint.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from launch import cli
from selflengthen_jax.outputs import check_file
from selflengthen_jax.pipeline.collect import FIELDS, write_long
from selflengthen_jax.pipeline.store import check_rewritable


def iteration_list(text: str) -> list[int]:
    """"1,2" -> [1, 2]; argparse reports anything else as a usage error (exit 2)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated iteration numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected iteration numbers >= 1, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.collect", __doc__)
    p.add_argument("--input", help="the run's output_dir (default: output_dir from --config)")
    p.add_argument("--output", required=True, help="JSONL to write (atomically)")
    p.add_argument("--iters", type=iteration_list,
                   help="iterations to take, e.g. 1,2 (default: all finished + the extra round)")
    args = cli.parse(p, argv, old_flags={"--run": "--input"})
    with cli.user_errors():
        if not (args.input or args.config or args.overrides or args.print_config):
            raise ValueError("--input is required (or --config, whose output_dir is the run): "
                             "the run directory to collect from")
        run = cli.config(args, cli.flag_overrides({"output_dir": args.input})).output_dir
        check_file(args.output, [run])
        check_rewritable(args.output, (*FIELDS, "source"))
        written, dropped = write_long(run, args.output, args.iters)
    print(f"wrote {written} records to {args.output} ({dropped} duplicates dropped)")


if __name__ == "__main__":
    cli.program(main)

"""Generation benchmark: our engine vs transformers, the matmul floor, continuous vs
static batching, and decode cost up to 8k context.

    python -m launch.bench_generate [--output DIR] [--repeats N] [--quick]

No argument is required. Prints markdown tables, writes DIR/result.json (default
runs/bench_generate/), and ends with one line: ratio_vs_hf=<x>
ratio_continuous_vs_static=<y> fraction_of_floor=<z>. It takes no run config: its
models and workloads are fixed, so results compare across machines and commits. The
older spelling --out still works, with a hint.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: spinning barrier waits make torch pathologically slow when
# other jobs share the CPU, which would flatter our engine in the comparison.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses  # noqa: E402
import sys  # noqa: E402
from typing import Sequence  # noqa: E402

from launch import cli  # noqa: E402
from selflengthen_jax.bench import generate as bench  # noqa: E402
from selflengthen_jax.outputs import check_dir  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.bench_generate", __doc__, config=False)
    p.add_argument("--output", default="runs/bench_generate",
                   help="directory for result.json (default runs/bench_generate)")
    p.add_argument("--repeats", type=int, help="timed repeats of workload A (after a warm-up)")
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run with small workloads")
    args = cli.parse(p, argv, old_flags={"--out": "--output"})
    with cli.user_errors():
        check_dir(args.output, what="--output")  # before minutes of measuring
    spec = bench.QUICK if args.quick else bench.FULL
    if args.repeats is not None:
        spec = dataclasses.replace(spec, repeats=max(1, args.repeats))
    result = bench.run(spec, args.output, log=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    print(bench.markdown(result))
    print(bench.summary_line(result))


if __name__ == "__main__":
    cli.program(main)

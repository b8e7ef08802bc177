"""Generation benchmark: our engine vs transformers, the matmul floor, continuous vs
static batching, and decode cost up to 8k context.

    python -m launch.bench_generate [--out DIR] [--repeats N] [--quick]

Prints markdown tables, writes DIR/result.json (default runs/bench_generate/), and ends
with one line: ratio_vs_hf=<x> ratio_continuous_vs_static=<y> fraction_of_floor=<z>.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: spinning barrier waits make torch pathologically slow when
# other jobs share the CPU, which would flatter our engine in the comparison.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
from typing import Sequence  # noqa: E402

from launch import cli  # noqa: E402
from selflengthen_jax.bench import generate as bench  # noqa: E402
from selflengthen_jax.outputs import check_dir  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m launch.bench_generate", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench_generate", help="directory for result.json")
    p.add_argument("--repeats", type=int, help="timed repeats of workload A (after a warm-up)")
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run with small workloads")
    args = p.parse_args(argv)
    with cli.user_errors():
        check_dir(args.out, what="--out")  # before minutes of measuring
    spec = bench.QUICK if args.quick else bench.FULL
    if args.repeats is not None:
        spec = dataclasses.replace(spec, repeats=max(1, args.repeats))
    result = bench.run(spec, args.out, log=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    print(bench.markdown(result))
    print(bench.summary_line(result))


if __name__ == "__main__":
    main()

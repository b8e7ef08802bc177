"""Generation benchmark: our engine vs transformers, the matmul floor, continuous vs
static batching, and decode cost up to 8k context.

    python -m launch.bench_generate [--output DIR] [--quick] [--repeats N]
        [--config FILE] [--print-config] [key=value ...]

No argument is required. Prints markdown tables, writes DIR/result.json (default
runs/bench_generate/), and ends with one line: ratio_vs_hf=<x>
ratio_continuous_vs_static=<y> fraction_of_floor=<z>.

Its config is the workload, not a run config: the model shape and every workload size
are the keys listed at the end of this help, with the full benchmark's defaults, so
results compare across machines and commits when they are left alone. --quick starts
from a ~1 minute smoke workload instead; --config FILE (a YAML of these keys) and
key=value overrides then change single keys, e.g. repeats=5 or model.layers=4, and
--repeats N is repeats=N. The older spelling --out still works, with a hint.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: spinning barrier waits make torch pathologically slow when
# other jobs share the CPU, which would flatter our engine in the comparison.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
from typing import Sequence  # noqa: E402

from launch import cli  # noqa: E402
from selflengthen_jax.bench import generate as bench  # noqa: E402
from selflengthen_jax.outputs import check_dir  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.bench_generate", __doc__, keys=bench.FULL)
    p.add_argument("--output", default="runs/bench_generate",
                   help="directory for result.json (default runs/bench_generate)")
    p.add_argument("--repeats", type=int, help="timed repeats of workload A after a warm-up (the key repeats)")
    p.add_argument("--quick", action="store_true", help="start from a ~1 minute smoke workload")
    args = cli.parse(p, argv, old_flags={"--out": "--output"})
    with cli.user_errors():
        flags = [] if args.repeats is None else [f"repeats={args.repeats}"]
        spec = cli.own_config(args, bench.BenchSpec, bench.QUICK if args.quick else bench.FULL, flags,
                              check=bench.check_spec)
        check_dir(args.output, what="--output")  # before minutes of measuring
    result = bench.run(spec, args.output, log=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    print(bench.markdown(result))
    print(bench.summary_line(result))


if __name__ == "__main__":
    cli.program(main)

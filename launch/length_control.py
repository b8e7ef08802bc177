"""Build length-control SFT data: long pairs whose queries state their answer's length.

    python -m launch.length_control --input long.jsonl --output sft.jsonl
        [--model PATH] [--template-only] [--config FILE] [key=value ...]

Input lines: {"id", "instruction" | "prompt", "response", "language"?}. Pairs with
eval.min_words..eval.max_words words are kept; the model (greedy) rewrites each query to
include its demand, and a template is used where the rewrite is unusable or with
--template-only. The output is written atomically once all records exist; it must not
be the input, and an existing file there must be one this script wrote.
"""

from __future__ import annotations

import collections
from typing import Sequence

from launch import cli
from selflengthen_jax.eval import run
from selflengthen_jax.outputs import check_file
from selflengthen_jax.pipeline.store import check_rewritable
from selflengthen_jax.sampling.service import build_engine


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.length_control", __doc__)
    p.add_argument("--input", required=True, help="JSONL long pairs")
    p.add_argument("--output", required=True, help="JSONL SFT records (prompt, response, ...)")
    p.add_argument("--model", help="checkpoint that rewrites queries (default: model.path)")
    p.add_argument("--template-only", action="store_true", help="no model: template rewrites only")
    args = cli.parse(p, argv)
    with cli.user_errors():
        cfg = cli.config(args, cli.flag_overrides({"model.path": args.model}))
        run.word_bounds(cfg)
        check_file(args.output, [args.input, *filter(None, [cfg.model.path])])
        check_rewritable(args.output, run.LENGTH_CONTROL_FIELDS)
        pairs = run.read_pairs(args.input)
        rewrite = None
        if not args.template_only:
            params = run.rewrite_params(cfg)
            engine = build_engine(cfg, max_new_tokens=params.max_new_tokens)
            rewrite = run.engine_rewriter(engine, params)
    with cli.resumable(args.output, saved=False):
        records = run.length_control(pairs, cfg, rewrite)
        run.write_jsonl(args.output, records)
    sources = collections.Counter(r["rewrite"] for r in records)
    print(f"kept {len(records)} of {len(pairs)} pairs ({cfg.eval.min_words}-{cfg.eval.max_words} words); "
          f"rewrites: model {sources['model']}, template {sources['template']}; wrote {args.output}")


if __name__ == "__main__":
    cli.program(main)

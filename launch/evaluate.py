"""Evaluate length following on a LonGen-format benchmark (and optionally quality).

    python -m launch.evaluate --input BENCHMARK.jsonl --output DIR [--model PATH]
        [--responses-only] [--judge-model PATH | --judge-url URL --judge-name NAME]
        [--config FILE] [key=value ...]

Required: --input (a LonGen-format benchmark) and --output; the model is --model, else
`model.path` from the config (not needed with --responses-only).

Writes DIR/responses.jsonl (resumable), DIR/report.json, DIR/report.md, DIR/lengths.png
and with a judge DIR/judge.json. The last stdout line is `overall=<LonGen score in [0, 1]>`.
--responses-only scores the benchmark's own `response` fields without loading a model.
The judge endpoint's key, if it needs one, is read from $OPENAI_API_KEY; its answers are
kept in DIR/judge_answers.jsonl as they arrive, so a rerun asks only for the missing
ones. The older spelling --benchmark still works, with a hint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping, Sequence

from launch import cli
from selflengthen_jax.config import Config
from selflengthen_jax.eval import run
from selflengthen_jax.eval.judge import Ask
from selflengthen_jax.outputs import check_dir, check_file
from selflengthen_jax.pipeline.prompt_file import PromptItem


def _arguments() -> argparse.ArgumentParser:
    p = cli.parser("launch.evaluate", __doc__)
    p.add_argument("--input", required=True, help="LonGen-format benchmark JSONL")
    p.add_argument("--model", help="checkpoint to evaluate (default: model.path from the config)")
    p.add_argument("--output", required=True, help="directory for responses and reports")
    p.add_argument("--responses-only", action="store_true",
                   help="score the benchmark's own 'response' fields; load no model")
    p.add_argument("--judge-model", help="local checkpoint that rates quality")
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint (default: eval.judge_url)")
    p.add_argument("--judge-name", help="model name at --judge-url (default: eval.judge_model)")
    return p


def _judge(choice: run.JudgeChoice, url_ask: Ask | None, cfg: Config, rows: Sequence[Mapping],
           items: Sequence[PromptItem], out_dir: Path) -> dict:
    ask = url_ask
    if choice.model:
        with cli.user_errors():
            engine, ask = run.engine_judge(cfg, choice.model)
            run.check_judge_prompts(engine, rows, [item.where for item in items], choice.prompt)
    kept = out_dir / (run.JUDGE_ANSWERS if url_ask else "judge.json")  # a local judge saves at the end
    with cli.resumable(kept, saved=url_ask is not None):
        return run.write_judgement(rows, [item.id for item in items], ask, choice.label, out_dir,
                                   choice.prompt)


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(_arguments(), argv, old_flags={"--benchmark": "--input"})
    with cli.user_errors():
        cfg = cli.config(args, cli.flag_overrides({"model.path": args.model}))
        judge = run.judge_choice(cfg, args.judge_model, args.judge_url, args.judge_name)
        models = [m for m in (cfg.model.path, args.judge_model) if m]
        out_dir = check_dir(args.output, models)
        for name in run.WRITES:
            check_file(out_dir / name, [args.input])
        items = run.read_benchmark(args.input, with_responses=args.responses_only)
        url_ask = run.url_judge(judge, out_dir) if judge and judge.url else None  # reads saved answers
        generation = None if args.responses_only else run.prepare_generation(cfg, items, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    if generation is None:
        rows = [item.record for item in items]
    else:
        with cli.resumable(out_dir / run.RESPONSES):
            rows = run.generate_responses(generation, items)
    report = run.write_scores(rows, [item.id for item in items], out_dir)
    judged = _judge(judge, url_ask, cfg, rows, items, out_dir) if judge else None
    print("\n".join(run.summary(report, judged)))


if __name__ == "__main__":
    cli.program(main)

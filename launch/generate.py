"""Generate completions for a JSONL file of prompts, resumably.

    python -m launch.generate --model PATH --input prompts.jsonl --output out.jsonl
        [--config FILE] [--greedy] [--max-new-tokens N] [key=value ...]

Input lines: {"id"?, "prompt", "raw"?} or {"id"?, "messages": [...]}; output lines are the
input fields plus response, response_token_ids, prompt_tokens, completion_tokens and
finish_reason. Ids already in the output are skipped, so rerunning resumes. An existing
output that this script did not write is refused, never truncated. A `gs://` output is
kept as it grows in `OUTPUT.parts/` (batch objects, as the loop's stores) and, once
every prompt is answered, written whole as the one object OUTPUT.
"""

from __future__ import annotations

import json
from typing import Sequence

from launch import cli
from selflengthen_jax.outputs import check_file
from selflengthen_jax.pipeline.store import JsonlStore, atomic_write_text
from selflengthen_jax.pipeline.prompt_file import OUTPUT_FIELDS, check_prompt_lengths, generate_missing, read_prompts
from selflengthen_jax.sampling.service import build_engine, sampling_params


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.parser("launch.generate", __doc__)
    p.add_argument("--model", help="checkpoint directory (default: model.path from the config)")
    p.add_argument("--input", required=True, help="JSONL prompts")
    p.add_argument("--output", required=True, help="JSONL completions (appended; existing ids are skipped)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--max-new-tokens", type=int, help="override sampling.max_new_tokens")
    args = cli.parse(p, argv)
    with cli.user_errors():
        flags = [] if args.max_new_tokens is None else [f"sampling.max_new_tokens={args.max_new_tokens}"]
        cfg = cli.config(args, [*flags, *cli.flag_overrides({"model.path": args.model})])
        out = check_file(args.output, [args.input, *filter(None, [cfg.model.path])])
        items = read_prompts(args.input)
        store = JsonlStore.open(out, fields=OUTPUT_FIELDS)
        todo = [item for item in items if item.id not in store]
        params = sampling_params(cfg.sampling, seed=cfg.seed, greedy=args.greedy)
        if not todo:
            publish(store)
            print(f"all {len(items)} ids already in {args.output}; nothing to generate")
            return
        engine = build_engine(cfg, max_new_tokens=params.max_new_tokens)
        check_prompt_lengths(engine, todo)
    with cli.resumable(args.output):
        done = generate_missing(engine, todo, store, params)
    publish(store)
    print(f"generated {done}, skipped {len(items) - done} already in {args.output}")


def publish(store: JsonlStore) -> None:
    """A bucket output, complete: every record as the one object OUTPUT (local files
    already are that file)."""
    if store.remote:
        atomic_write_text(store.path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in store.records()))


if __name__ == "__main__":
    cli.program(main)

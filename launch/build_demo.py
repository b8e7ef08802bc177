"""Build the embedded demo model (tokenizer, random init, warm-up fine-tune).

    python -m launch.build_demo [--output DIR] [--languages en,zh] [--epochs N]
        [--config FILE] [--print-config] [key=value ...]

With no argument it rebuilds the model shipped in the package (selflengthen_jax/demo/model),
which `python -m launch.iterate` runs when model.path is empty. Same library versions,
same model: every step is seeded. Rebuild and commit it when the demo corpus, the prompt
templates or the seeds change (a test compares its recorded fingerprint). No argument
is required.

Its config is the build recipe, not a run config: the keys listed at the end of this
help, whose defaults build the shipped model (--config FILE is a YAML of them;
key=value overrides change single keys). --languages en,zh is languages=[en, zh] and
--epochs N is epochs=N. The recipe goes into the model's demo_build.json and its
fingerprint. The older spelling --out still works, with a hint.
"""

from __future__ import annotations

import json
from typing import Sequence

from launch import cli
from selflengthen_jax.demo.build import Recipe, build_demo_checkpoint, check_recipe
from selflengthen_jax.demo.shipped import SHIPPED_DIR


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser("launch.build_demo", __doc__, keys=Recipe())
    p.add_argument("--output", default=str(SHIPPED_DIR), help="where to write it (default: the shipped model)")
    p.add_argument("--languages", help="comma-separated, of en,zh (the key languages, default en)")
    p.add_argument("--epochs", type=int, help="warm-up epochs (the key epochs, default 60)")
    args = cli.parse(p, argv, old_flags={"--out": "--output"})
    with cli.user_errors():
        flags = [] if args.languages is None else \
            ["languages=" + json.dumps([lang.strip() for lang in args.languages.split(",")])]
        flags += [] if args.epochs is None else [f"epochs={args.epochs}"]
        recipe = cli.own_config(args, Recipe, extra=flags, check=check_recipe)
        out = build_demo_checkpoint(args.output, recipe)
    print(f"demo model written to {out}")
    return 0


if __name__ == "__main__":
    cli.program(main)

"""Build the embedded demo model (tokenizer, random init, warm-up fine-tune).

    python -m launch.build_demo [--output DIR] [--languages en,zh] [--epochs N]

With no flags it rebuilds the model shipped in the package (selflengthen_jax/demo/model),
which `python -m launch.iterate` runs when model.path is empty. Same library versions,
same model: every step is seeded. Rebuild and commit it when the demo corpus, the prompt
templates or the seeds change (a test compares its recorded fingerprint). No argument
is required, and it takes no run config: the recipe is fixed so the build is
reproducible. The older spelling --out still works, with a hint.
"""

from __future__ import annotations

from typing import Sequence

from launch import cli
from selflengthen_jax.demo import corpus
from selflengthen_jax.demo.build import build_demo_checkpoint
from selflengthen_jax.demo.shipped import SHIPPED_DIR


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser("launch.build_demo", __doc__, config=False)
    p.add_argument("--output", default=str(SHIPPED_DIR), help="where to write it (default: the shipped model)")
    p.add_argument("--languages", default="en", help="comma-separated, of en,zh (default en)")
    p.add_argument("--epochs", type=int, help="warm-up epochs (default: the recipe's)")
    args = cli.parse(p, argv, old_flags={"--out": "--output"})
    with cli.user_errors():
        languages = tuple(corpus.check_language(lang.strip()) for lang in args.languages.split(","))
        if args.epochs is not None and args.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
        out = build_demo_checkpoint(args.output, languages, epochs=args.epochs)
    print(f"demo model written to {out}")
    return 0


if __name__ == "__main__":
    cli.program(main)

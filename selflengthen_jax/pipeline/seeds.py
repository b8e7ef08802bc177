"""Seed instructions that prime self-instruct with examples of long-writing requests.

The package ships `seeds/{language}.jsonl` (one `{"prompt": ...}` per line); a user
can pass their own file in the same format instead.
"""

from __future__ import annotations

from pathlib import Path

from selflengthen_jax.pipeline.store import read_jsonl
from selflengthen_jax.pipeline.text import check_language

SEEDS_DIR = Path(__file__).parent / "seeds"


def load_seeds(language: str, path: str | Path | None = None) -> list[str]:
    """The seed instructions of `path` (default: the packaged ones for `language`),
    validated up front so a bad file fails before any generation."""
    check_language(language)
    path = Path(path) if path else SEEDS_DIR / f"{language}.jsonl"  # "" (unset config) too
    records = read_jsonl(path, required_fields=("prompt",))
    prompts = []
    for number, record in enumerate(records, start=1):
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"seeds file {path}: entry {number} has an empty or non-text 'prompt'")
        prompts.append(prompt.strip())
    if not prompts:
        raise ValueError(f"seeds file {path} holds no instructions")
    return prompts

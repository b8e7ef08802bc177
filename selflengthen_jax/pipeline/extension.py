"""String assembly of one Self-Lengthen extension round (the paper's two stages).

Stage 1 asks the Extender to enrich only the first half of the current text, and
the leading two thirds of that enriched half are kept. Stage 2 shows the Extender
the whole current text and pre-fills its answer with the kept part, so the raw
completion carries the enrichment on through the rest of the text in the same
style. Splitting the work keeps each generation within the model's output length.
The model calls themselves live elsewhere; this module only builds the strings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from selflengthen_jax.pipeline.prompts import Messages, extend_messages
from selflengthen_jax.pipeline.text import split_paragraphs

PARAGRAPH_BREAK = "\n\n"


def first_half(paragraphs: list[str]) -> str:
    """The first len//2 paragraphs (at least one), joined by blank lines."""
    if not paragraphs:
        raise ValueError("cannot take the first half of a text with no paragraphs")
    return PARAGRAPH_BREAK.join(paragraphs[: max(1, len(paragraphs) // 2)])


def keep_leading(text: str, fraction: float = 2 / 3) -> str:
    """The first floor(n * fraction) paragraphs (at least one) of the Extender's
    stage-1 output: its tail tends to wrap up early, so it is dropped."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    paragraphs = split_paragraphs(text)
    # The epsilon keeps e.g. 3 * (2/3) from flooring to 1 through rounding error.
    count = max(1, math.floor(len(paragraphs) * fraction + 1e-9))
    return PARAGRAPH_BREAK.join(paragraphs[:count])


def stage1_request_messages(
    language: str, instruction: str, current_text: str, *, templates_dir: str | Path | None = None
) -> Messages:
    """Stage 1: ask the Extender to enrich the first half of `current_text`."""
    half = first_half(split_paragraphs(current_text))
    return extend_messages(language, instruction, half, templates_dir=templates_dir)


def stage2_request_messages(
    language: str, instruction: str, current_text: str, *, templates_dir: str | Path | None = None
) -> Messages:
    """Stage 2's chat turn: the whole current text; the answer is pre-filled with
    `stage2_prefix` after the chat template's generation prompt."""
    return extend_messages(language, instruction, current_text.strip(), templates_dir=templates_dir)


def stage2_prefix(kept: str) -> str:
    """Assistant-turn prefix of stage 2: the kept text and a paragraph break, so the
    completion starts with the next enriched paragraph."""
    return kept.strip() + PARAGRAPH_BREAK


def join_stages(kept: str, continuation: str) -> str:
    """The extended text: kept stage-1 paragraphs followed by stage 2's completion."""
    parts = [part for part in (kept.strip(), continuation.strip()) if part]
    return PARAGRAPH_BREAK.join(parts)


def extender_training_prompt(
    language: str,
    instruction: str,
    initial_response: str,
    rng: np.random.Generator,
    keep_prob: float = 0.8,
    *,
    templates_dir: str | Path | None = None,
) -> Messages:
    """Extender training input: the initial response with each non-empty line kept
    with probability `keep_prob`, so the Extender learns to fill gaps and enrich
    rather than copy. At least one line always survives (an empty response would
    teach it to write from nothing)."""
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    lines = [line.strip() for line in initial_response.splitlines() if line.strip()]
    if not lines:
        raise ValueError("initial response has no text to build an Extender prompt from")
    draws = rng.random(len(lines))
    kept = [line for line, u in zip(lines, draws, strict=True) if u < keep_prob] or lines[:1]
    return extend_messages(
        language, instruction, PARAGRAPH_BREAK.join(kept), templates_dir=templates_dir
    )

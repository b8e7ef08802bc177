"""String assembly of one Self-Lengthen extension round (the paper's two stages).

Stage 1 asks the Extender to enrich only the first half of the current text, and
the leading two thirds of that enriched half are kept. Stage 2 shows the Extender
the whole current text and pre-fills its answer with the kept part, so the raw
completion carries the enrichment on through the rest of the text in the same
style. Splitting the work keeps each generation within the model's output length.
The model calls themselves live elsewhere; this module only builds the strings.

Every split and join is the reference's (QwenLM/Self-Lengthen `step2_ext_responses.py`
and `mk_data.py`), edge cases included: texts are split on the raw separators, nothing
is stripped, and a part that comes out empty stays empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selflengthen_jax.pipeline.prompts import Messages, extend_messages
from selflengthen_jax.pipeline.text import check_language

PARAGRAPH_BREAK = "\n\n"
# How the Extender's training input is re-joined after line dropout, per language.
TRAINING_JOIN = {"zh": "\n\n", "en": "\n"}


def first_half(text: str) -> str:
    """The first len//2 parts of `text`, joined by blank lines: parts are split on blank
    lines, or on single newlines when that gives at most 2. A one-part text has an
    empty first half."""
    parts = text.split(PARAGRAPH_BREAK)
    if len(parts) <= 2:
        parts = text.split("\n")
    return PARAGRAPH_BREAK.join(parts[: len(parts) // 2])


def keep_leading(stage1_output: str) -> str:
    """The first n*2//3 of the n blank-line-separated parts of stage 1's output (its
    tail tends to wrap up early, so it is dropped); none for a one-part output."""
    parts = stage1_output.split(PARAGRAPH_BREAK)
    return PARAGRAPH_BREAK.join(parts[: len(parts) * 2 // 3])


def stage1_request_messages(
    language: str, instruction: str, current_text: str, *, templates_dir: str | Path | None = None
) -> Messages:
    """Stage 1: ask the Extender to enrich the first half of `current_text`."""
    return extend_messages(language, instruction, first_half(current_text), templates_dir=templates_dir)


def stage2_request_messages(
    language: str, instruction: str, current_text: str, *, templates_dir: str | Path | None = None
) -> Messages:
    """Stage 2's chat turn: the whole current text; the answer is pre-filled with the
    kept stage-1 text, verbatim, after the chat template's generation prompt (nothing
    kept: the answer starts from nothing)."""
    return extend_messages(language, instruction, current_text, templates_dir=templates_dir)


def join_stages(kept: str, continuation: str) -> str:
    """The extended text: the kept stage-1 text immediately followed by stage 2's
    completion (the model writes its own paragraph break)."""
    return kept + continuation


def extender_training_prompt(
    language: str,
    instruction: str,
    initial_response: str,
    rng: np.random.Generator,
    keep_prob: float = 0.8,
    *,
    templates_dir: str | Path | None = None,
) -> Messages:
    """Extender training input: the initial response split on single newlines, each
    line (blank ones too) kept when a uniform draw is below `keep_prob`, re-joined by a
    blank line (zh) or a newline (en), so the Extender learns to fill gaps and enrich
    rather than copy."""
    check_language(language)
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    lines = initial_response.split("\n")
    draws = rng.random(len(lines))
    kept = [line for line, u in zip(lines, draws, strict=True) if u < keep_prob]
    return extend_messages(
        language, instruction, TRAINING_JOIN[language].join(kept), templates_dir=templates_dir
    )

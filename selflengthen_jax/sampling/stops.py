"""Stop strings, matched on decoded text (a stop may span several tokens)."""

from __future__ import annotations

from typing import Sequence


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index in `text` where the earliest stop string begins (searching from `start`)."""
    hits = [i for s in stops if s and (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one was found)."""
    i = first_stop(text, stops)
    return (text, False) if i is None else (text[:i], True)

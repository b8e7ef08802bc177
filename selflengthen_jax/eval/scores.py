"""Length-following scores and their LonGen-style breakdowns.

Two per-answer scores:
- LonGen (Self-Lengthen): 1 inside the band [a, b], falling linearly to 0 at
  L = a/2 below it and at L = 1.5b above it.
- LongBench-Write (LongWriter): S_l, 100 at the requested length x, decaying in the
  ratio, 3x slower for overshooting than for undershooting. Exactly as LongWriter
  defines it: x is the row's `length` field (LonGen rows, which have none, use the
  band centre) and the produced length y is counted as LongWriter counts words.

Rows in LongBench-Write's own format (a `length` and no `constraint`) get S_l only;
their LonGen score is None and is left out of the means.

Scores are averaged per constraint type, language, LonGen `range` bucket, per
(type, language, range) cell and overall; the report is plain JSON-able data so
the launch script only has to write it out.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Iterable, Mapping, Sequence

from selflengthen_jax.eval import constraints
from selflengthen_jax.pipeline.text import count_words

METRICS: tuple[str, ...] = ("longen", "longbench_write")
LONGBENCH_WRITE_TYPE = "length"  # the `type` of a LongBench-Write row: a required length
# LongBench-Write's length buckets, as LongWriter reports them: (upper bound, label).
LONGBENCH_WRITE_RANGES: tuple[tuple[float, str], ...] = (
    (500, "<500"), (2000, "500-2k"), (4000, "2k-4k"), (float("inf"), ">=4k"))
_LW_HAN = re.compile("[\u4e00-\u9fff]")
_LW_WORD = re.compile(r"\b[a-zA-Z]+\b")


def longwriter_words(text: str) -> int:
    """Length as LongWriter counts it for S_l: each CJK ideograph (U+4E00-U+9FFF) plus
    each run of ASCII letters between word boundaries (digits and punctuation count
    nothing, unlike the paper's count used for LonGen)."""
    return len(_LW_HAN.findall(text)) + len(_LW_WORD.findall(text))


def is_longbench_write_row(row: Mapping) -> bool:
    """A row in LongBench-Write's own format: a required `length`, no `constraint`."""
    return "length" in row and "constraint" not in row


def longbench_write_range(length: float) -> str:
    """The LongBench-Write bucket of a required length."""
    return next(label for bound, label in LONGBENCH_WRITE_RANGES if length < bound)


def longen_score(length: float, band: tuple[float, float]) -> float:
    """LonGen score of a length L against band [a, b]: 1 inside,
    max(2L/a - 1, 0) below, max(3 - 2L/b, 0) above."""
    low, high = band
    if length < low:
        return max(2.0 * length / low - 1.0, 0.0)
    if length > high:
        return max(3.0 - 2.0 * length / high, 0.0)
    return 1.0


def longbench_write_score(y: float, x: float) -> float:
    """LongBench-Write length score of produced length y for required length x (0-100)."""
    if y <= 0:
        return 0.0
    if y > x:
        return 100.0 * max(0.0, 1.0 - (y / x - 1.0) / 3.0)
    return 100.0 * max(0.0, 1.0 - (x / y - 1.0) / 2.0)


def score_record(record: Mapping, count: Callable[[str], int] = count_words) -> dict:
    """Both scores for one LonGen row plus its `response` (S_l alone for a
    LongBench-Write row).

    S_l's required length x is the row's `length`; a LonGen row has none, so we use
    the band centre (about N -> N, range N-M -> (N+M)/2, above N -> 1.25N, below N ->
    0.75N).
    """
    length = count(record["response"])
    produced = longwriter_words(record["response"])
    if is_longbench_write_row(record):
        longen = None
        low = high = target = float(record["length"])  # a point target: x itself
    else:
        low, high = constraints.band(constraints.constraint_from_row(record))
        target = float(record["length"]) if "length" in record else (low + high) / 2.0
        longen = longen_score(length, (low, high))
    return {
        "language": record["language"],
        "range": record["range"],
        "type": record["type"],
        "length": length,
        "longwriter_words": produced,
        "band_low": low,
        "band_high": high,
        "target": target,
        "longen": longen,
        "longbench_write": longbench_write_score(produced, target),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that exist (None: a metric the row has no score for)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _mean_block(rows: Sequence[Mapping], metrics: Sequence[str]) -> dict:
    return {"n": len(rows), **{m: _mean([r[m] for r in rows]) for m in metrics}}


def _ordered(values: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """Preferred keys first (e.g. the four types), then others in first-seen order."""
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def aggregate(scored: Sequence[Mapping], metrics: Sequence[str] = METRICS) -> dict:
    """Means of `metrics` overall, per type, language, range and (type, language, range).

    Works for any per-record numbers (e.g. judge dimensions merged into the rows), as
    long as each row has `type`, `language` and `range`.
    """
    if not scored:
        raise ValueError("nothing to aggregate")

    def group(*keys: str) -> dict:
        out: dict = {}
        for row in scored:
            out.setdefault(tuple(row[k] for k in keys), []).append(row)
        return out

    def by(key: str, preferred: Sequence[str] = ()) -> dict:
        groups = group(key)
        return {v: _mean_block(groups[(v,)], metrics)
                for v in _ordered((r[key] for r in scored), preferred)}

    cells = group("type", "language", "range")
    return {
        "overall": _mean_block(scored, metrics),
        "by_type": by("type", constraints.TYPES),
        "by_language": by("language"),
        "by_range": by("range"),
        "by_cell": {"/".join(k): _mean_block(v, metrics) for k, v in cells.items()},
    }


def score_records(records: Sequence[Mapping], count: Callable[[str], int] = count_words) -> dict:
    """The full report for LonGen rows with responses: aggregates plus per-record scores."""
    scored = [score_record(r, count) for r in records]
    return {**aggregate(scored), "records": scored}


def markdown_table(report: Mapping, metric: str = "longen") -> str:
    """Mean `metric` as a markdown table: rows are constraint types (+ "all"), columns
    are language x length range, a per-language "all", and a grand "all"."""
    rows = report["records"]
    types = _ordered((r["type"] for r in rows), constraints.TYPES)
    languages = _ordered(r["language"] for r in rows)
    ranges = _ordered(r["range"] for r in rows)
    columns: list[tuple[str, Callable[[Mapping], bool]]] = []
    for lang in languages:
        columns += [(f"{lang} {rng}", lambda r, l=lang, g=rng: r["language"] == l and r["range"] == g)
                    for rng in ranges]
        columns.append((f"{lang} all", lambda r, l=lang: r["language"] == l))
    columns.append(("all", lambda r: True))

    def cell(selected: list[Mapping]) -> str:
        mean = _mean([r[metric] for r in selected])
        return "-" if mean is None else f"{mean:.3f}"

    lines = ["| type | " + " | ".join(name for name, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for kind in [*types, "all"]:
        in_row = [r for r in rows if kind == "all" or r["type"] == kind]
        lines.append(f"| {kind} | " + " | ".join(cell([r for r in in_row if keep(r)])
                                                for _, keep in columns) + " |")
    return "\n".join(lines) + "\n"


def report_json(report: Mapping) -> str:
    """The report as readable JSON (Chinese kept as is)."""
    return json.dumps(report, ensure_ascii=False, indent=2)

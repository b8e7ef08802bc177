"""Length-following scores and their LonGen-style breakdowns.

Two per-answer scores:
- LonGen (Self-Lengthen): 1 inside the band [a, b], falling linearly to 0 at
  L = a/2 below it and at L = 1.5b above it.
- LongBench-Write (LongWriter): 100 at the requested length x, decaying in the
  ratio, 3x slower for overshooting than for undershooting.

Scores are averaged per constraint type, language, LonGen `range` bucket, per
(type, language, range) cell and overall; the report is plain JSON-able data so
the launch script only has to write it out.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Mapping, Sequence

from selflengthen_jax.eval import constraints
from selflengthen_jax.pipeline.text import count_words

METRICS: tuple[str, ...] = ("longen", "longbench_write")


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
    """Both scores for one LonGen row plus its `response`.

    LongBench-Write needs a single required length; we use the band centre
    (about N -> N, range N-M -> (N+M)/2, above N -> 1.25N, below N -> 0.75N).
    """
    low, high = constraints.band(constraints.constraint_from_row(record))
    length = count(record["response"])
    target = (low + high) / 2.0
    return {
        "language": record["language"],
        "range": record["range"],
        "type": record["type"],
        "length": length,
        "band_low": low,
        "band_high": high,
        "target": target,
        "longen": longen_score(length, (low, high)),
        "longbench_write": longbench_write_score(length, target),
    }


def _mean_block(rows: Sequence[Mapping], metrics: Sequence[str]) -> dict:
    return {"n": len(rows), **{m: sum(r[m] for r in rows) / len(rows) for m in metrics}}


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
        return f"{sum(r[metric] for r in selected) / len(selected):.3f}" if selected else "-"

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

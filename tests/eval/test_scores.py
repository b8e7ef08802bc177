"""LonGen and LongBench-Write length scores, and their per-type/language/range report."""

import json
from pathlib import Path

import pytest

from selflengthen_jax.eval.constraints import band, parse_constraint
from selflengthen_jax.eval.scores import (
    aggregate,
    longbench_write_score,
    longwriter_words,
    longen_score,
    markdown_table,
    report_json,
    score_records,
)

FIXTURE = Path(__file__).parent / "fixtures" / "longen_sample.jsonl"


@pytest.mark.parametrize("demand, length, score", [
    # about 2000 -> [1600, 2400]
    ("大约2000字", 1600, 1.0), ("大约2000字", 2400, 1.0), ("大约两千字", 2000, 1.0),
    ("大约2000字", 1599, 2 * 1599 / 1600 - 1), ("大约2000字", 1200, 0.5), ("大约2000字", 800, 0.0),
    ("大约2000字", 0, 0.0), ("around 2000 words", 2401, 3 - 2 * 2401 / 2400),
    ("around 2,000 words", 3000, 0.5), ("around 2000 words", 3600, 0.0), ("around 2000 words", 5000, 0.0),
    # range 2000-3000 -> [2000, 3000]
    ("2000字至3000字", 2000, 1.0), ("两千字至三千字", 3000, 1.0), ("2000-3000 words", 1500, 0.5),
    ("2000-3000 words", 1000, 0.0), ("2000-3000 words", 3750, 0.5), ("2000-3000 words", 4500, 0.0),
    # above 3000 -> [3000, 4500]
    ("大于三千字", 3000, 1.0), ("大于3000字", 4500, 1.0), ("more than 3000 words", 2999, 2 * 2999 / 3000 - 1),
    ("more than 3000 words", 5625, 0.5), ("more than 3000 words", 6750, 0.0),
    # below 2500 -> [1250, 2500]
    ("小于两千五百字", 1250, 1.0), ("小于2500字", 2500, 1.0), ("less than 2500 words", 937.5, 0.5),
    ("less than 2500 words", 625, 0.0), ("less than 2500 words", 2501, 3 - 2 * 2501 / 2500),
    ("less than 2500 words", 3125, 0.5),
])
def test_longen_score_at_and_around_band_edges(demand, length, score):
    assert longen_score(length, band(parse_constraint(demand))) == pytest.approx(score)


@pytest.mark.parametrize("y, x, score", [
    (2000, 2000, 100.0), (4000, 2000, 100 * (1 - 1 / 3)), (8000, 2000, 0.0), (10000, 2000, 0.0),
    (1000, 2000, 50.0), (500, 2000, 0.0), (0, 2000, 0.0), (2500, 2000, 100 * (1 - 0.25 / 3)),
    (1600, 2000, 100 * (1 - 0.25 / 2)),
])
def test_longbench_write_score(y, x, score):
    assert longbench_write_score(y, x) == pytest.approx(score)


def _rows_with_lengths(lengths):
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    for row, n in zip(rows, lengths):
        row["response"] = "字" * n if row["language"] == "zh" else "word " * n
    return rows


# zh: about 2000, range 2000-3000, above 4000, below 2500, about 7000
# en: about 2000, range 2000-3000, above 4000, below 8000
LENGTHS = [2000, 1500, 9000, 2000, 7000, 1200, 2500, 4000, 9000]
LONGEN = [1.0, 0.5, 0.0, 1.0, 1.0, 0.5, 1.0, 1.0, 0.75]


def test_score_records_per_record_and_groups():
    report = score_records(_rows_with_lengths(LENGTHS))
    assert [r["length"] for r in report["records"]] == LENGTHS
    assert [r["longen"] for r in report["records"]] == pytest.approx(LONGEN)
    assert report["records"][7]["target"] == pytest.approx(5000)  # above 4000 -> centre of [4000, 6000]
    assert report["overall"]["n"] == 9
    assert report["overall"]["longen"] == pytest.approx(sum(LONGEN) / 9)
    assert list(report["by_type"]) == ["about", "range", "above", "below"]
    assert report["by_type"]["about"]["longen"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert report["by_language"]["en"]["longen"] == pytest.approx((0.5 + 1.0 + 1.0 + 0.75) / 4)
    assert report["by_range"]["6-8k"]["n"] == 2
    assert report["by_range"]["6-8k"]["longen"] == pytest.approx((1.0 + 0.75) / 2)
    assert report["by_cell"]["below/zh/2-4k"]["longen"] == 1.0
    assert json.loads(report_json(report))["overall"]["n"] == 9


def test_aggregate_takes_any_metric():
    rows = [{"type": "about", "language": "zh", "range": "2-4k", "clarity": 6},
            {"type": "about", "language": "en", "range": "2-4k", "clarity": 8}]
    summary = aggregate(rows, metrics=("clarity",))
    assert summary["overall"] == {"n": 2, "clarity": 7.0}
    assert summary["by_language"]["en"]["clarity"] == 8


def test_markdown_table_layout():
    table = markdown_table(score_records(_rows_with_lengths(LENGTHS)))
    lines = table.strip().splitlines()
    assert lines[0] == ("| type | zh 2-4k | zh 4-6k | zh 6-8k | zh all | en 2-4k | en 4-6k | en 6-8k "
                        "| en all | all |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| about", "| range", "| above", "| below", "| all"]
    about = lines[2].split(" | ")
    assert about[1] == "1.000" and about[2] == "-" and about[4] == "1.000" and about[5] == "0.500"
    assert lines[-1].endswith(f"| {sum(LONGEN) / 9:.3f} |")


# --- S_l exactly as LongWriter defines it ----------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("字" * 10, 10),
    ("Hello, world! It's 2024.", 4),  # It / s are two runs of letters; digits count nothing
    ("中文English混排。", 4),  # no \b between 文 and E (both are \w): only the 4 ideographs
    ("中文 English 混排。", 5),
    ("，。「」ＡＢＣ", 0),  # CJK punctuation and full-width forms are not ideographs
    ("snake_case x2 e-mail", 2),  # "_" and "2" are \w, so only "e" and "mail" stand alone
])
def test_longwriter_word_count(text, words):
    assert longwriter_words(text) == words


def test_s_l_uses_the_rows_length_field_and_longwriters_count():
    row = {"language": "en", "range": "2-4k", "type": "about", "constraint": "around 2000 words",
           "length": 3000, "response": "word " * 2000 + "1 2 3 " * 500}
    scored = score_records([row])["records"][0]
    assert scored["target"] == 3000  # x is the row's length, not the band centre
    assert scored["longwriter_words"] == 2000 and scored["length"] == 3500
    assert scored["longbench_write"] == pytest.approx(longbench_write_score(2000, 3000))
    assert scored["longen"] == pytest.approx(3 - 2 * 3500 / 2400)  # LonGen: its own count and band


def test_longbench_write_rows_get_s_l_only():
    rows = [{"language": "zh", "range": "500-2k", "type": "length", "length": 1000, "response": "字" * 1000},
            {"language": "zh", "range": "2-4k", "type": "about", "constraint": "大约2000字",
             "response": "字" * 2000}]
    report = score_records(rows)
    first, second = report["records"]
    assert first["longen"] is None and first["longbench_write"] == pytest.approx(100.0)
    assert second["longen"] == pytest.approx(1.0)
    assert report["overall"]["longen"] == pytest.approx(1.0)  # the LonGen mean skips the S_l-only row
    assert report["overall"]["longbench_write"] == pytest.approx(100.0)
    assert "| length |" in markdown_table(report, "longen")

"""Reading LonGen length constraints: numbers in both languages, types, target bands."""

import json
from pathlib import Path

import pytest

from selflengthen_jax.eval.constraints import (
    Constraint,
    band,
    constraint_from_row,
    infer_type,
    parse_chinese_numeral,
    parse_constraint,
    parse_numbers,
    to_chinese_numeral,
)

FIXTURE = Path(__file__).parent / "fixtures" / "longen_sample.jsonl"


@pytest.mark.parametrize("text, value", [
    ("三千", 3000), ("两千五百", 2500), ("两千五", 2500), ("一万", 10000), ("十万", 100000),
    ("一万两千", 12000), ("三万五", 35000), ("一千零五", 1005), ("一万零五百", 10500),
    ("十五", 15), ("二十", 20), ("八千", 8000), ("零", 0),
])
def test_chinese_numerals_parse(text, value):
    assert parse_chinese_numeral(text) == value


@pytest.mark.parametrize("value, text", [
    (3000, "三千"), (2500, "两千五百"), (10000, "一万"), (12000, "一万两千"), (20000, "两万"),
    (1005, "一千零五"), (10050, "一万零五十"), (15, "十五"), (100000, "十万"), (7000, "七千"),
])
def test_chinese_numerals_write(value, text):
    assert to_chinese_numeral(value) == text


def test_chinese_numeral_round_trip():
    for n in [*range(0, 20000), *range(20000, 10**6, 97), 10**8 - 1]:
        assert parse_chinese_numeral(to_chinese_numeral(n)) == n


@pytest.mark.parametrize("text, numbers", [
    ("大约2000字", [2000]), ("around 2,000 words", [2000]), ("2000-3000 words", [2000, 3000]),
    ("两千字至三千字", [2000, 3000]), ("3千字", [3000]), ("1.5万字", [15000]), ("about 2k words", [2000]),
    ("between 2,500 and 3,500 words", [2500, 3500]),
])
def test_numbers_in_both_languages(text, numbers):
    assert parse_numbers(text) == numbers


@pytest.mark.parametrize("text, kind", [
    ("大约2000字", "about"), ("2000字至3000字", "range"), ("大于两千字", "above"), ("小于8000字", "below"),
    ("不超过三千字", "below"), ("不少于3000字", "above"), ("around 2000 words", "about"),
    ("2000-3000 words", "range"), ("more than 2000 words", "above"), ("no more than 2000 words", "below"),
    ("less than 2000 words", "below"), ("no less than 2000 words", "above"),
])
def test_type_from_wording(text, kind):
    assert infer_type(text) == kind


def test_fixture_rows_parse_with_their_type():
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    parsed = [constraint_from_row(r) for r in rows]
    assert [c.type for c in parsed] == [r["type"] for r in rows]
    assert parsed[3] == Constraint("below", 2500, 2500)  # 小于两千五百字
    assert parsed[5] == Constraint("about", 2000, 2000)  # around 2,000 words
    assert all(parse_constraint(r["constraint"]) == c for r, c in zip(rows, parsed))


@pytest.mark.parametrize("constraint, expected", [
    (Constraint("about", 2000, 2000), (1600, 2400)),
    (Constraint("range", 2000, 3000), (2000, 3000)),
    (Constraint("above", 3000, 3000), (3000, 4500)),
    (Constraint("below", 4000, 4000), (2000, 4000)),
])
def test_bands(constraint, expected):
    assert band(constraint) == pytest.approx(expected)


def test_bad_constraints_are_refused():
    with pytest.raises(ValueError):
        parse_constraint("2000 words", "range")
    with pytest.raises(ValueError):
        parse_constraint("as long as you like")
    with pytest.raises(ValueError):
        Constraint("roughly", 2000, 2000)
    with pytest.raises(ValueError):
        Constraint("about", 2000, 3000)

"""Length constraints as LonGen states them, and the band a response must land in.

LonGen rows carry a `type` (about/range/above/below) and a human `constraint`
("大约2000字", "2000-3000 words", "大于两千五百字"). Scoring needs numbers, so this
module reads numbers in both languages (Arabic with thousands separators or a
k/千/万 suffix, and Chinese numerals) and maps a constraint to the band [a, b] the
LonGen score treats as "on target". The int -> Chinese numeral writer lives here
too so the two directions are tested against each other.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Mapping

ConstraintType = Literal["about", "range", "above", "below"]
TYPES: tuple[str, ...] = ("about", "range", "above", "below")

_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4,
              "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_NUMERAL = "零〇一二两三四五六七八九十百千万"
_SUFFIX = {"k": 1000, "K": 1000, "千": 1000, "万": 10000}

# Arabic: "2,000" / "2000" / "2.5" with an optional k/千/万 multiplier.
# Chinese: must start with a digit or 十 so that a stray 千/万 is not read as a number.
_NUMBER = re.compile(
    r"(?P<arabic>\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?)\s*(?P<suffix>[kK](?![a-zA-Z])|千|万)?"
    r"|(?P<zh>[零〇一二两三四五六七八九十][" + _ZH_NUMERAL + r"]*)"
)

# Keywords that reveal the type when a caller has only the text (e.g. a generated
# demand). Look-behinds keep "不超过"/"no more than" from reading as "超过"/"more than".
_TYPE_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("range", re.compile(
        r"between|[\d零一二两三四五六七八九十百千万kK]\s*(?:个?字|words?)?\s*"
        r"(?:-|–|—|~|～|至|到|to|and)\s*[\d一二两三四五六七八九十]", re.I)),
    ("above", re.compile(
        r"大于|(?<!不)多于|(?<!不)超过|不少于|不低于|至少|以上"
        r"|\b(?:(?<!no )more than|over|at least|no (?:less|fewer) than)\b", re.I)),
    ("below", re.compile(
        r"小于|(?<!不)少于|不超过|不多于|至多|最多|以内|以下"
        r"|\b(?:(?<!no )(?:less|fewer) than|under|at most|up to|no more than)\b", re.I)),
)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A stated length demand: `low` and `high` are the numbers as written.

    Single-number types (about/above/below) have low == high == N.
    """

    type: str
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown constraint type {self.type!r}; expected one of {TYPES}")
        if not 0 < self.low <= self.high:
            raise ValueError(f"bad constraint numbers low={self.low} high={self.high}")
        if self.type != "range" and self.low != self.high:
            raise ValueError(f"{self.type!r} takes one number, got {self.low} and {self.high}")


def band(constraint: Constraint) -> tuple[float, float]:
    """The LonGen target band [a, b] (inclusive) for a constraint.

    about N -> [0.8N, 1.2N]; range N-M -> [N, M]; above N -> [N, 1.5N];
    below N -> [0.5N, N]. above/below get a finite far edge so that wildly
    overshooting "more than N" (or a near-empty answer to "less than N") is penalised.
    """
    n, m = constraint.low, constraint.high
    return {
        "about": (0.8 * n, 1.2 * n),
        "range": (float(n), float(m)),
        "above": (float(n), 1.5 * n),
        "below": (0.5 * n, float(n)),
    }[constraint.type]


def parse_chinese_numeral(text: str) -> int:
    """Value of a Chinese numeral such as 三千, 两千五百, 一万零五百, 十万.

    A trailing digit right after a unit is the colloquial short form and takes the
    next lower unit (两千五 = 2500, 三万五 = 35000) unless a 零 came in between
    (一千零五 = 1005).
    """
    total, section, digit, last_unit, after_zero = 0, 0, None, 0, False
    for ch in text:
        if ch in _ZH_DIGITS:
            value = _ZH_DIGITS[ch]
            after_zero = after_zero or value == 0
            digit = value or None
        elif ch in _ZH_SMALL_UNITS:
            last_unit = _ZH_SMALL_UNITS[ch]
            section += (1 if digit is None else digit) * last_unit
            digit, after_zero = None, False
        elif ch == "万":
            total += (section + (digit or 0)) * 10000
            section, digit, last_unit, after_zero = 0, None, 10000, False
        else:
            raise ValueError(f"not a Chinese numeral: {text!r}")
    if digit is not None:
        section += digit * last_unit // 10 if last_unit and not after_zero else digit
    return total + section


def _section_to_chinese(n: int) -> str:
    """0 < n < 10000 as 千/百/十 digits, with 零 for inner gaps and 两 before 千."""
    out: list[str] = []
    pending_zero = False
    for unit, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // unit % 10
        if d == 0:
            pending_zero = bool(out)
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(("两" if d == 2 and unit == 1000 else "零一二三四五六七八九"[d]) + name)
    return "".join(out)


def to_chinese_numeral(n: int) -> str:
    """Write 0 <= n < 10**8 as a Chinese numeral: 3000 -> 三千, 2500 -> 两千五百,
    10000 -> 一万, 12000 -> 一万两千, 1005 -> 一千零五, 15 -> 十五."""
    if not 0 <= n < 10**8:
        raise ValueError(f"out of range for a Chinese numeral: {n}")
    if n == 0:
        return "零"
    high, low = divmod(n, 10000)
    text = ""
    if high:
        text = ("两" if high == 2 else _section_to_chinese(high)) + "万"
        if 0 < low < 1000:
            text += "零"
    if low:
        text += _section_to_chinese(low)
    return text[1:] if text.startswith("一十") else text


def parse_numbers(text: str) -> list[int]:
    """Every number in `text`, in order: "2,000" / "2k" / "1.5万" / "两千五百" / "3千"."""
    numbers = []
    for match in _NUMBER.finditer(text):
        if match.group("zh"):
            numbers.append(parse_chinese_numeral(match.group("zh")))
        else:
            value = float(match.group("arabic").replace(",", ""))
            numbers.append(round(value * _SUFFIX.get(match.group("suffix") or "", 1)))
    return numbers


def infer_type(text: str) -> str:
    """Constraint type from wording alone; "about" when no range/above/below cue."""
    for name, cue in _TYPE_CUES:
        if cue.search(text):
            return name
    return "about"


def parse_constraint(text: str, kind: str | None = None) -> Constraint:
    """A `Constraint` from its wording; `kind` (the row's type) wins over the wording."""
    kind = kind or infer_type(text)
    numbers = [n for n in parse_numbers(text) if n > 0]
    if kind == "range":
        if len(numbers) < 2:
            raise ValueError(f"range constraint needs two numbers: {text!r}")
        return Constraint(kind, min(numbers[:2]), max(numbers[:2]))
    if not numbers:
        raise ValueError(f"no number in constraint: {text!r}")
    return Constraint(kind, numbers[0], numbers[0])


def constraint_from_row(row: Mapping[str, str]) -> Constraint:
    """The constraint of a LonGen row (fields `type` and `constraint`)."""
    return parse_constraint(row["constraint"], row.get("type"))

"""Length-control data: give long (instruction, response) pairs an explicit length demand.

Self-Lengthen's outputs follow length demands better when training instructions
say how long the answer should be. For each pair whose response is within
[min_words, max_words] we state its actual length as a demand of a random type,
phrase it in the response's language, and work it into the instruction (by the
model via `rewrite_messages`, or by `template_rewrite` when that fails).

Every demand is built so the true response length lies inside its LonGen band
(see `constraints.band`), so the data never teaches a demand the answer breaks.

Rounding: lengths >= 1,000 round to multiples of 1,000 (2,000 with probability
0.2); shorter ones use 100 (200), under 100 use 10 (20), under 10 use 1 (2), i.e.
always the leading decimal place, doubled for the coarse draw. When the drawn
unit would make the demand inconsistent (e.g. "about 2000" for 2,450 words, whose
band ends at 2,400), finer units 1/2, 1/10 of the base unit, then 1, are tried in
turn; so the realised share of coarse numbers is a bit under the drawn 0.2.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from selflengthen_jax.eval.constraints import (
    TYPES,
    Constraint,
    band,
    parse_numbers,
    to_chinese_numeral,
)
from selflengthen_jax.pipeline.text import check_language, count_words, language_of

TYPE_PROBS: dict[str, float] = {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}
COARSE_PROB = 0.2
ZH_NUMERAL_PROB = 0.5
PLACEMENTS: tuple[str, ...] = ("start", "middle", "end")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One kept pair with its drawn demand, waiting for its rewritten prompt."""

    source_id: str
    query: str
    response: str
    language: str
    words: int
    constraint: Constraint
    demand: str
    placement: str


def base_unit(words: int) -> int:
    """The leading decimal place of `words`, capped at 1,000 (1 for words < 10)."""
    return 10 ** min(3, len(str(max(words, 1))) - 1)


def draw_unit(words: int, rng: np.random.Generator, coarse_prob: float = COARSE_PROB) -> int:
    """Rounding unit: the base unit, doubled with probability `coarse_prob`."""
    unit = base_unit(words)
    return 2 * unit if rng.random() < coarse_prob else unit


def draw_type(rng: np.random.Generator, probs: Mapping[str, float] = TYPE_PROBS) -> str:
    """A constraint type drawn with the given probabilities."""
    p = np.array([probs[t] for t in TYPES], dtype=float)
    return TYPES[int(rng.choice(len(TYPES), p=p / p.sum()))]


def fit_constraint(kind: str, words: int, unit: int, min_words: int, max_words: int) -> Constraint | None:
    """The `kind` demand for `words` at rounding `unit`, or None if its band would miss `words`.

    about: nearest multiple; range: the multiples just below and above (one unit
    wide when `words` is a multiple); above: the multiple at or below; below: the
    multiple at or above. Numbers are clipped to [min_words, max_words].
    """
    def clip(n: int) -> int:
        return min(max(n, min_words), max_words)

    down, up = words // unit * unit, -(-words // unit) * unit
    if kind == "about":
        nearest = clip((2 * words + unit) // (2 * unit) * unit)
        constraint = Constraint(kind, nearest, nearest)
    elif kind in ("range", "above") and down == 0:
        return None
    elif kind == "range":
        if down == up:
            down, up = (down, up + unit) if up + unit <= max_words else (down - unit, up)
        constraint = Constraint(kind, clip(down), clip(up))
    else:
        n = clip(down if kind == "above" else up)
        constraint = Constraint(kind, n, n)
    low, high = band(constraint)
    return constraint if low <= words <= high else None


def make_constraint(kind: str, words: int, unit: int, min_words: int, max_words: int) -> Constraint:
    """`fit_constraint` at `unit`, else at finer units until the band holds `words`."""
    base = base_unit(words)
    for candidate in dict.fromkeys([unit, base, base // 2, base // 10, 1]):
        if candidate > 0 and (found := fit_constraint(kind, words, candidate, min_words, max_words)):
            return found
    raise ValueError(f"no {kind!r} demand fits {words} words within [{min_words}, {max_words}]")


def format_demand(constraint: Constraint, language: str, chinese_numerals: bool = False) -> str:
    """The demand as LonGen words it: 大约N字 / N字至M字 / 大于N字 / 小于N字, or
    around N words / N-M words / more than N words / less than N words."""
    low, high = constraint.low, constraint.high
    if check_language(language) == "zh":
        a, b = (to_chinese_numeral(low), to_chinese_numeral(high)) if chinese_numerals else (low, high)
        return {"about": f"大约{a}字", "range": f"{a}字至{b}字",
                "above": f"大于{a}字", "below": f"小于{a}字"}[constraint.type]
    return {"about": f"around {low} words", "range": f"{low}-{high} words",
            "above": f"more than {low} words", "below": f"less than {low} words"}[constraint.type]


def plan_length_control(
    pairs: Iterable[Mapping],
    rng: np.random.Generator,
    min_words: int = 2000,
    max_words: int = 8000,
    count: Callable[[str], int] = count_words,
) -> list[Plan]:
    """Keep pairs with min_words <= words <= max_words and draw a demand for each.

    A pair is a mapping with `instruction` and `response`, optionally `id` (default:
    its position) and `language` (default: detected from the response).
    """
    if min_words < 1 or min_words > max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    plans = []
    for index, pair in enumerate(pairs):
        words = count(pair["response"])
        if not min_words <= words <= max_words:
            continue
        language = check_language(pair.get("language") or language_of(pair["response"]))
        kind = draw_type(rng)
        constraint = make_constraint(kind, words, draw_unit(words, rng), min_words, max_words)
        numerals = language == "zh" and rng.random() < ZH_NUMERAL_PROB
        plans.append(Plan(
            source_id=str(pair.get("id", index)),
            query=pair["instruction"],
            response=pair["response"],
            language=language,
            words=words,
            constraint=constraint,
            demand=format_demand(constraint, language, numerals),
            placement=PLACEMENTS[int(rng.integers(len(PLACEMENTS)))],
        ))
    return plans


_PLACEMENT_HINTS = {
    "zh": {"start": "把篇幅要求放在指令的开头部分。",
           "middle": "把篇幅要求融入指令的中间部分。",
           "end": "把篇幅要求放在指令的结尾部分。",
           None: "篇幅要求放在读起来最自然的位置即可，不必总是放在末尾。"},
    "en": {"start": "Place the length requirement near the beginning of the instruction.",
           "middle": "Weave the length requirement into the middle of the instruction.",
           "end": "Place the length requirement at the end of the instruction.",
           None: "Place the length requirement wherever it reads most naturally; it need not go at the end."},
}


def rewrite_messages(language: str, query: str, demand: str, placement: str | None = None) -> list[dict]:
    """Chat prompt asking the model to restate `query` with `demand` built in.

    `placement` ("start"/"middle"/"end") spreads where demands sit across the data,
    so the trained model does not only look for them at the end.
    """
    hint = _PLACEMENT_HINTS[check_language(language)][placement]
    if language == "zh":
        return [
            {"role": "system", "content": "你是一名细致的编辑，负责改写写作指令。"},
            {"role": "user", "content": (
                f"请改写下面这条写作指令，让它自然地包含篇幅要求“{demand}”。\n"
                "规则：\n"
                "1. 原指令中的任务、主题和所有细节都要保留，不要增加新任务。\n"
                "2. 如果原指令里已经有字数或篇幅方面的要求，把它去掉，只保留新的篇幅要求。\n"
                f"3. 要求中的数字必须和给定的完全一致。{hint}\n"
                "4. 只输出改写后的指令本身，不要解释，不要加引号或任何前缀。\n\n"
                f"原指令：\n{query}")},
        ]
    return [
        {"role": "system", "content": "You are a careful editor who rewrites writing instructions."},
        {"role": "user", "content": (
            f'Rewrite the writing instruction below so that it naturally states the length requirement "{demand}".\n'
            "Rules:\n"
            "1. Keep the task, topic and every detail of the original; do not add new tasks.\n"
            "2. If the original already asks for a length or word count, drop that so only the new requirement remains.\n"
            f"3. Keep the number(s) of the requirement exactly as given. {hint}\n"
            "4. Output only the rewritten instruction: no explanation, no quotes, no prefix.\n\n"
            f"Instruction:\n{query}")},
    ]


# An existing length demand: optional lead-in words, a qualifier, number(s), the unit.
_ZH_NUM = r"(?:\d[\d,]*(?:\.\d+)?\s*[千万]?|[零〇一二两三四五六七八九十百千万]+)"
_EN_NUM = r"\d[\d,]*(?:\.\d+)?\s*k?"
_ZH_LEAD = (  # words that only serve the demand: "请将全文字数控制在", "需超过", "约为"
    "请|建议|尽量|需要|需|要求|务必|必须|应该|应当|应|能|不能|确保|保证|将|把|用|总|整个|整篇|全文|文章"
    "|字数|篇幅|长度|文字|答案|回答|回复|内容|描述|控制|保持|限制|在|为|的|：|:|\\s"
    "|大约|大概|约|至少|最多|超过|大于|小于|少于|多于|不少于|不低于|不超过|不多于")
_EN_LEAD = r"""
    ,?\s*\b(?:and\s+)?(?:please\s+)?
    (?:(?:keep|limit|make|ensure|ensuring|make\s+sure|making\s+sure|be\s+sure)\s+(?:that\s+)?
         (?:it|(?:the|your|this|these)(?:\s+\w+){1,3}?)
         (?:\s+(?:is|are|be|stays|extends|exceeds?))?(?:\s+(?:to|at|within|beyond))?\s+
     | (?:aiming\s+for|aim\s+for|targeting)(?:\s+a\s+(?:total|length)\s+of)?\s+
     | (?:should\s+be|must\s+be|in|of|with|within|using|use|write)\s+)?
    \b(?:about|around|approximately|roughly|at\s+least|at\s+most|more\s+than|less\s+than|fewer\s+than
       |no\s+more\s+than|no\s+less\s+than|over|under|up\s+to|between|exceeds?|an?)?\s*"""
_DEMAND = {
    "zh": re.compile(
        r"[，,]?(?:并且|并|且)?(?:" + _ZH_LEAD + r")*"
        + _ZH_NUM + r"\s*(?:个?字)?\s*(?:(?:-|–|~|～|至|到)\s*" + _ZH_NUM + r"\s*)?"
        r"(?:个?字数?(?:左右|以上|以内|以下|上下|之间)?|左右|以上|以内|以下|上下)(?:的)?"),
    "en": re.compile(
        _EN_LEAD + _EN_NUM + r"(?:\s*(?:-|–|to|and)\s*" + _EN_NUM + r")?\s*-?\s*words?\b"
        r"(?:\s+(?:long|in\s+length|limit|count))?", re.I | re.X),
}
# Numbers below this in a matched span are not length demands ("每一个字").
_MIN_DEMAND_NUMBER = 100
# A sentence: anything up to a sentence end (a "." inside a number like 2.5 is not one).
_SENTENCE = re.compile(r"(?:[^。！？!?.\n]|\.(?=\d))*(?:[。！？!?.\n]+|$)")
# A sentence left with fewer content words than this after removing a demand was only the demand.
_MIN_LEFT = {"zh": 5, "en": 4}
# "a 2000-word essay": the number is an adjective; drop it and fix the article.
_EN_ADJECTIVE = re.compile(
    r"\ban?\s+" + _EN_NUM + r"(?:\s*(?:-|–|to)\s*" + _EN_NUM + r")?-words?\s+(?=(?!limit|count)(\w))", re.I)
_ENDINGS = "。！？!?.…)）\"”'’"


def _tidy(text: str) -> str:
    """Repair spacing and punctuation around a removed span (leading whitespace kept,
    so sentences still join as they did)."""
    lead = text[: len(text) - len(text.lstrip())]
    text = re.sub(r"[（(]\s*[）)]", "", text.lstrip())
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"[ \t]+([,.;:!?，。；：！？])", r"\1", text)
    text = re.sub(r"[，,；;、：:]+([。！？!?.])", r"\1", text)
    text = re.sub(r"([。！？!?.])[，,；;。.]+", r"\1", text)
    return lead + re.sub(r"^[，,；;。.：:]+\s*", "", text).rstrip()


def strip_length_demand(query: str, language: str) -> str:
    """`query` without its length demand; a sentence that was nothing but the demand goes."""
    pattern = _DEMAND[check_language(language)]
    if language == "en":
        query = _EN_ADJECTIVE.sub(lambda m: ("an " if m.group(1).lower() in "aeiou" else "a "), query)

    def drop(match: re.Match[str]) -> str:
        is_length = max(parse_numbers(match.group(0)), default=0) >= _MIN_DEMAND_NUMBER
        return "" if is_length else match.group(0)

    kept = []
    for sentence in filter(None, _SENTENCE.findall(query)):
        rest = pattern.sub(drop, sentence)
        if rest != sentence:
            rest = _tidy(rest)
            if count_words(re.sub(r"[\W_]", " ", rest)) < _MIN_LEFT[language]:
                continue
            trailing = sentence[len(sentence.rstrip()):]
            sentence = rest + trailing
        kept.append(sentence)
    # A query that was one short sentence keeps what is left of it.
    return "".join(kept).strip() or _tidy(pattern.sub(drop, query)).strip()


_TEMPLATES = {
    "zh": ("{q}\n\n篇幅要求：{d}。", "{q}（全文{d}）", "{q}请确保回答{d}。",
           "请完成下面的写作任务，篇幅{d}：\n{q}", "字数：{d}。\n{q}"),
    "en": ("{q}\n\nLength: {d}.", "{q} Your response should be {d}.", "{q} (Please write {d}.)",
           "Write {d} for the task below.\n{q}", "({d}) {q}"),
}


def template_rewrite(query: str, demand: str, language: str, rng: np.random.Generator) -> str:
    """Fallback rewrite: drop any existing demand, then add `demand` with a random
    phrasing, at the start or the end."""
    q = strip_length_demand(query, language)
    if q and q[-1] not in _ENDINGS:
        q += "。" if language == "zh" else "."
    templates = _TEMPLATES[language]
    return templates[int(rng.integers(len(templates)))].format(q=q, d=demand)


def accept_rewrite(text: str | None, plan: Plan) -> str | None:
    """The model's rewrite, cleaned, if it kept every number of the demand; else None."""
    cleaned = (text or "").strip().strip("\"'“”「」『』").strip()
    found = set(parse_numbers(cleaned))
    wanted = {plan.constraint.low, plan.constraint.high}
    return cleaned if cleaned and wanted <= found else None


def finalize_record(plan: Plan, rewritten: str | None, rng: np.random.Generator) -> dict:
    """The training record; the template fallback is used when the rewrite is unusable.

    `rewrite` says which one made the prompt ("model" or "template"), for auditing.
    """
    prompt = accept_rewrite(rewritten, plan)
    source = "model" if prompt else "template"
    if prompt is None:
        prompt = template_rewrite(plan.query, plan.demand, plan.language, rng)
    return {
        "prompt": prompt,
        "response": plan.response,
        "constraint_type": plan.constraint.type,
        "low": plan.constraint.low,
        "high": plan.constraint.high,
        "demand": plan.demand,
        "words": plan.words,
        "language": plan.language,
        "source_id": plan.source_id,
        "rewrite": source,
    }

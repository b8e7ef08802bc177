"""Length-control data: demand types and rounding drawn at the intended rates, every
demand consistent with its response, phrased in the response's language."""

import collections

import numpy as np
import pytest

from selflengthen_jax.eval.constraints import Constraint, band, parse_constraint
from selflengthen_jax.eval.length_control import (
    accept_rewrite,
    base_unit,
    draw_type,
    draw_unit,
    finalize_record,
    fit_constraint,
    format_demand,
    make_constraint,
    plan_length_control,
    rewrite_messages,
    strip_length_demand,
    template_rewrite,
)

N_DRAWS = 20000
TOL = 0.015


def _pairs(n, seed=0):
    """Pairs whose response "is" its length: the test counts words with int()."""
    rng = np.random.default_rng(seed)
    return [{"id": f"p{i}", "instruction": f"task {i}", "response": str(int(rng.integers(2000, 8001))),
             "language": "zh" if i % 2 else "en"} for i in range(n)]


def test_type_draw_rates():
    rng = np.random.default_rng(0)
    counts = collections.Counter(draw_type(rng) for _ in range(N_DRAWS))
    for kind, p in {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}.items():
        assert counts[kind] / N_DRAWS == pytest.approx(p, abs=TOL)


def test_coarse_rounding_rate():
    rng = np.random.default_rng(1)
    units = collections.Counter(draw_unit(4321, rng) for _ in range(N_DRAWS))
    assert set(units) == {1000, 2000}
    assert units[2000] / N_DRAWS == pytest.approx(0.2, abs=TOL)


def test_base_unit_is_leading_place_capped_at_thousands():
    assert [base_unit(n) for n in (7, 42, 640, 1000, 7999, 25000)] == [1, 10, 100, 1000, 1000, 1000]


@pytest.mark.parametrize("kind, words, unit, expected", [
    ("about", 2300, 1000, Constraint("about", 2000, 2000)),
    ("about", 6999, 2000, Constraint("about", 6000, 6000)),
    ("about", 2450, 1000, None),                        # 2450 > 1.2 * 2000
    ("range", 2300, 1000, Constraint("range", 2000, 3000)),
    ("range", 3000, 1000, Constraint("range", 3000, 4000)),  # exact multiple: one unit up
    ("range", 8000, 1000, Constraint("range", 7000, 8000)),  # ...or down at max_words
    ("range", 5300, 2000, Constraint("range", 4000, 6000)),
    ("above", 3900, 1000, Constraint("above", 3000, 3000)),
    ("above", 3900, 2000, None),                        # 3900 > 1.5 * 2000
    ("below", 2100, 2000, Constraint("below", 4000, 4000)),
    ("below", 7600, 1000, Constraint("below", 8000, 8000)),
    ("below", 7600, 2000, Constraint("below", 8000, 8000)),
])
def test_fit_constraint(kind, words, unit, expected):
    assert fit_constraint(kind, words, unit, 2000, 8000) == expected


def test_numbers_are_clipped_to_the_kept_length_range():
    assert fit_constraint("range", 2600, 1000, 2500, 8000) == Constraint("range", 2500, 3000)
    assert fit_constraint("below", 7100, 2000, 2000, 7500) == Constraint("below", 7500, 7500)


def test_finer_units_rescue_inconsistent_rounding():
    assert make_constraint("about", 2450, 1000, 2000, 8000) == Constraint("about", 2500, 2500)
    assert make_constraint("above", 3900, 2000, 2000, 8000) == Constraint("above", 3000, 3000)


@pytest.mark.parametrize("constraint, language, numerals, text", [
    (Constraint("about", 3000, 3000), "zh", False, "大约3000字"),
    (Constraint("about", 2500, 2500), "zh", True, "大约两千五百字"),
    (Constraint("range", 2000, 3000), "zh", True, "两千字至三千字"),
    (Constraint("above", 4000, 4000), "zh", False, "大于4000字"),
    (Constraint("below", 10000, 10000), "zh", True, "小于一万字"),
    (Constraint("about", 3000, 3000), "en", False, "around 3000 words"),
    (Constraint("range", 2000, 3000), "en", False, "2000-3000 words"),
    (Constraint("above", 4000, 4000), "en", False, "more than 4000 words"),
    (Constraint("below", 5000, 5000), "en", False, "less than 5000 words"),
])
def test_demand_wording(constraint, language, numerals, text):
    assert format_demand(constraint, language, numerals) == text


def test_plans_are_consistent_and_drawn_at_the_intended_rates():
    pairs = _pairs(6000)
    plans = plan_length_control(pairs, np.random.default_rng(2), count=int)
    assert len(plans) == len(pairs)
    types = collections.Counter(p.constraint.type for p in plans)
    for kind, p in {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}.items():
        assert types[kind] / len(plans) == pytest.approx(p, abs=0.02)
    for plan in plans:
        low, high = band(plan.constraint)
        assert low <= plan.words <= high, plan
        assert 2000 <= plan.constraint.low <= plan.constraint.high <= 8000
        assert parse_constraint(plan.demand) == plan.constraint  # the wording says what was meant
    zh = [p for p in plans if p.language == "zh"]
    numerals = sum(not any(c.isdigit() for c in p.demand) for p in zh) / len(zh)
    assert numerals == pytest.approx(0.5, abs=0.03)
    assert all(any(c.isdigit() for c in p.demand) for p in plans if p.language == "en")
    assert {p.placement for p in plans} == {"start", "middle", "end"}


def test_plans_keep_only_lengths_in_range_and_are_reproducible():
    pairs = [{"instruction": "q", "response": n, "language": "en"} for n in ("1999", "2000", "8000", "8001")]
    plans = plan_length_control(pairs, np.random.default_rng(3), count=int)
    assert [(p.source_id, p.words) for p in plans] == [("1", 2000), ("2", 8000)]
    again = plan_length_control(pairs, np.random.default_rng(3), count=int)
    assert again == plans


def test_plan_detects_language_and_counts_words_by_default():
    pairs = [{"id": "a", "instruction": "写作", "response": "字" * 2100},
             {"id": "b", "instruction": "write", "response": "word " * 2100}]
    plans = plan_length_control(pairs, np.random.default_rng(4))
    assert [(p.language, p.words) for p in plans] == [("zh", 2100), ("en", 2100)]


@pytest.mark.parametrize("query, language, expected", [
    ("请写一篇介绍家乡春节习俗的散文，篇幅大约2000字。", "zh", "请写一篇介绍家乡春节习俗的散文。"),
    ("创作一篇大约七千字的科幻短篇小说。", "zh", "创作一篇科幻短篇小说。"),
    ("分析短视频的影响。字数在2000字至3000字之间。", "zh", "分析短视频的影响。"),
    ("写一篇游记（不少于3000字），描写沿途风景。", "zh", "写一篇游记，描写沿途风景。"),
    ("每一个字都要认真推敲。请写一首长诗。", "zh", "每一个字都要认真推敲。请写一首长诗。"),
    ("Write a 5000-word essay on urban beekeeping.", "en", "Write an essay on urban beekeeping."),
    ("Describe the printing press. Keep it under 3,000 words.", "en", "Describe the printing press."),
    ("Write a travel guide to a coastal town, more than 4000 words.", "en", "Write a travel guide to a coastal town."),
    ("Tell a mystery story. The story should be between 6000 and 8000 words long.", "en", "Tell a mystery story."),
    ("Describe the city within 3000 words.", "en", "Describe the city."),
])
def test_existing_demands_are_stripped(query, language, expected):
    assert strip_length_demand(query, language) == expected


def test_template_rewrite_replaces_the_old_demand():
    query = "Write an essay on urban beekeeping of around 2,000 words."
    outputs = {template_rewrite(query, "more than 5000 words", "en", np.random.default_rng(s)) for s in range(40)}
    assert len(outputs) > 2  # several phrasings / placements
    for text in outputs:
        assert "more than 5000 words" in text and "2,000" not in text and "urban beekeeping" in text
    zh = template_rewrite("写一篇散文，大约2000字。", "大约三千字", "zh", np.random.default_rng(0))
    assert "大约三千字" in zh and "2000" not in zh and "写一篇散文" in zh


def test_rewrite_prompt_carries_query_demand_and_placement():
    en = rewrite_messages("en", "Write a story.", "around 3000 words", placement="start")
    assert [m["role"] for m in en] == ["system", "user"]
    assert "Write a story." in en[-1]["content"] and '"around 3000 words"' in en[-1]["content"]
    assert "beginning" in en[-1]["content"]
    zh = rewrite_messages("zh", "写一个故事。", "大约三千字")
    assert "写一个故事。" in zh[-1]["content"] and "大约三千字" in zh[-1]["content"]
    with pytest.raises(ValueError):
        rewrite_messages("fr", "x", "y")


def test_records_use_the_model_rewrite_only_when_it_kept_the_numbers():
    [plan] = plan_length_control([{"id": "s1", "instruction": "Write a story.", "response": "3000",
                                   "language": "en"}], np.random.default_rng(5), count=int)
    numbers = " to ".join(str(n) for n in {plan.constraint.low, plan.constraint.high})
    good = f'"Write a story of {numbers} words."'
    assert accept_rewrite(good, plan) == good.strip('"')
    record = finalize_record(plan, good, np.random.default_rng(0))
    assert record["rewrite"] == "model" and record["prompt"] == good.strip('"')
    fallback = finalize_record(plan, "Write a long story.", np.random.default_rng(0))
    assert fallback["rewrite"] == "template" and plan.demand in fallback["prompt"]
    assert set(fallback) == {"prompt", "response", "constraint_type", "low", "high", "demand", "words",
                             "language", "source_id", "rewrite"}
    assert (fallback["source_id"], fallback["words"], fallback["response"]) == ("s1", 3000, "3000")
    assert finalize_record(plan, None, np.random.default_rng(0))["rewrite"] == "template"


# --- where we deliberately differ from the reference's add_length_control.py ----------------


def test_zh_above_and_below_are_worded_the_right_way_round():
    # The reference's zh list is ['大约{}字', '{}字至{}字', '小于{}字', '大于{}字'] against the
    # en ['around', 'N-M', 'more than', 'less than']: its zh "above" demand (the lower
    # bound) says 小于 ("less than") and its "below" says 大于. Ours match the meaning.
    above, below = Constraint("above", 3000, 3000), Constraint("below", 5000, 5000)
    assert format_demand(above, "zh", False) == "大于3000字"
    assert format_demand(below, "zh", False) == "小于5000字"
    assert band(above)[0] == 3000 and band(below)[1] == 5000


@pytest.mark.parametrize("kind, words", [("about", 3100), ("about", 2450), ("range", 2000),
                                         ("above", 3900), ("below", 7990)])
def test_demands_always_contain_the_true_length_unlike_the_references_rounding(kind, words):
    # The reference rounds 3,100 words with its coarse 2,000 unit to "around 4000"
    # (LonGen band 3200-4800) and 2,000 words to the range "2000-2000"; ours refine the
    # unit until the demand's band holds the true length.
    c = make_constraint(kind, words, 2000, 2000, 8000)
    low, high = band(c)
    assert low <= words <= high
    assert c.type != "range" or c.low < c.high

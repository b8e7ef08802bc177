"""Each phase's decisions, on a deterministic fake engine."""

import random

import pytest

from fake_engine import FakeEngine, prose
from selflengthen_jax.config import from_dict
from selflengthen_jax.pipeline import phases
from selflengthen_jax.pipeline.cached import CachedGenerator, derive_seed
from selflengthen_jax.pipeline.text import count_words


def make_phase(tmp_path, engine=None, **pipeline):
    cfg = from_dict({"language": "en", "seed": 7, "pipeline": {"instruct_count": 6, **pipeline}})
    engine = engine or FakeEngine()
    gen = CachedGenerator(engine, tmp_path / "cache.jsonl", progress=False)
    return phases.Phase(cfg, 1, gen, engine.tok, phases.Roles())


SEEDS = ["Write a 3,000-word story about a lighthouse keeper.",
         "Write a detailed report of at least 4,000 words on city parks."]


def test_self_instruct_accepts_judged_novel_instructions(tmp_path):
    ph = make_phase(tmp_path)
    recs = phases.self_instruct(ph, SEEDS, 6, "i1", "base")
    assert len(recs) == 6
    assert [r["id"] for r in recs] == [f"i1-{s:05d}" for s in range(6)]
    assert all("lantern" not in r["instruction"] for r in recs)  # the judge said no to those
    assert len({r["instruction"] for r in recs}) == 6


def test_self_instruct_replay_from_cache_generates_nothing_and_gives_same_records(tmp_path):
    first = phases.self_instruct(make_phase(tmp_path), SEEDS, 6, "i1", "base")
    engine = FakeEngine()
    again = phases.self_instruct(make_phase(tmp_path, engine), SEEDS, 6, "i1", "base")
    assert again == first
    assert engine.calls == []


def test_initial_responses_are_resampled_until_they_pass_quality(tmp_path):
    ph = make_phase(tmp_path)
    ins = [{"id": f"i1-{s:05d}", "instruction": f"Write a long essay number {s}."} for s in range(10)]
    records = phases.initial_responses(ph, ins)
    assert ph.counts["initial_rejected_quality"] > 0
    assert ph.counts["initial_before_downsample"] == 20  # every task succeeded within 20 tries
    assert 0 < len(records) < 20  # length-biased down-sampling dropped some
    assert all(r["response"].endswith(".") for r in records)


def test_extension_is_longer_by_the_ratio_and_keeps_the_initial(tmp_path):
    ph = make_phase(tmp_path)
    initial = [{"id": f"a{i}", "instruction": "Write a long story.", "response": prose(random.Random(i), 4),
                "words": 120} for i in range(6)]
    out = phases.extend(ph, initial)
    assert out, ph.counts
    for r in out:
        assert r["words"] > 1.2 * r["initial_words"]
        assert r["initial"] in {i["response"] for i in initial}
        assert count_words(r["response"]) == r["words"]


def test_sft_data_pairs(tmp_path):
    ph = make_phase(tmp_path)
    ext = [{"id": "x", "instruction": "Write.", "initial": "a\nb\nc\nd", "response": "long."}]
    gen, extd = phases.sft_data(ph, ext)
    assert gen == [{"id": "x", "prompt": "Write.", "response": "long."}]
    assert extd[0]["response"] == "long." and extd[0]["messages"][0]["role"] == "user"


def test_seeds_derive_from_run_seed_and_record_id():
    assert derive_seed(0, "a") == derive_seed(0, "a") != derive_seed(1, "a")
    assert 0 <= derive_seed(0, "a") < 2 ** 31


@pytest.mark.parametrize("fraction,expect", [(1.0, 6), (0.5, 3)])
def test_finish_fraction_cuts_the_phase(tmp_path, fraction, expect):
    ph = make_phase(tmp_path, finish_fraction=fraction)
    assert len(phases.self_instruct(ph, SEEDS, 6, "i1", "base")) == expect

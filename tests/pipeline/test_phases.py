"""Each phase's decisions, on a deterministic fake engine."""

import random

import numpy as np
import pytest

from fake_engine import FakeEngine, prose
from selflengthen_jax.config import from_dict
from selflengthen_jax.pipeline import phases
from selflengthen_jax.pipeline.cached import CachedGenerator, derive_seed
from selflengthen_jax.pipeline.text import count_words, length_biased_keep


def make_phase(tmp_path, engine=None, language="en", **pipeline):
    cfg = from_dict({"language": language, "seed": 7, "pipeline": {"instruct_count": 6, **pipeline}})
    engine = engine or FakeEngine()
    gen = CachedGenerator(engine, tmp_path / "cache.jsonl", progress=False)
    return phases.Phase(cfg, 1, gen, engine.tok, phases.Roles())


SEEDS = ["Write a 3,000-word story about a lighthouse keeper.",
         "Write a detailed report of at least 4,000 words on city parks."]
ZH_SEEDS = ["写一篇三千字的灯塔看守人的故事。", "写一篇不少于四千字的城市公园调研报告。"]


def self_instruct_requests(engine):
    return [r for r in engine.requests.values() if r.prompt is not None and r.id.startswith("i1-")]


# --- self-instruct ---------------------------------------------------------------------------


def test_self_instruct_accepts_judged_novel_instructions(tmp_path):
    ph = make_phase(tmp_path)
    recs = phases.self_instruct(ph, SEEDS, SEEDS, 6, "i1", "base")
    assert len(recs) == 6
    assert [r["id"] for r in recs] == [f"i1-{s:05d}" for s in range(6)]
    assert all("lantern" not in r["instruction"] for r in recs)  # the judge said no to those
    assert len({r["instruction"] for r in recs}) == 6


def test_self_instruct_prompt_is_chat_formatted_with_a_prefilled_answer(tmp_path):
    engine = FakeEngine()
    phases.self_instruct(make_phase(tmp_path, engine), SEEDS, SEEDS, 2, "i1", "base")
    request = self_instruct_requests(engine)[0]
    user, answer = request.prompt.split("<assistant>")
    assert user.startswith("<user>Please write requests") and user.endswith("</user>")
    assert answer.startswith("Instruction 1: ") and answer.endswith("\nInstruction 3:")
    assert set(answer.split("\n")[:2]) == {f"Instruction 1: {SEEDS[0]}", f"Instruction 2: {SEEDS[1]}"} \
        or set(answer.split("\n")[:2]) == {f"Instruction 1: {SEEDS[1]}", f"Instruction 2: {SEEDS[0]}"}
    assert request.params.stop == ("\n\n---", "\n\n\n", "\n---", "---", "\nInstruction 4")
    assert request.params.max_new_tokens == 16384


class FirstTryShort(FakeEngine):
    """Odd slots' first self-instruct try is too short, so a second round runs."""

    def _answer(self, req):
        if req.prompt is not None and req.id.endswith("-t0") and int(req.id.split("-")[1]) % 2:
            return " Hi."
        return super()._answer(req)


def examples(request):
    answer = request.prompt.split("<assistant>")[1]
    return [line.split("：", 1)[1] if "：" in line else line.split(": ", 1)[1]
            for line in answer.split("\n")[:2]]


def test_en_few_shot_examples_are_always_seeds(tmp_path):
    engine = FirstTryShort()
    recs = phases.self_instruct(make_phase(tmp_path, engine), SEEDS, SEEDS, 8, "i1", "base")
    assert len(recs) == 8
    retries = [r for r in self_instruct_requests(engine) if r.id.endswith("-t1")]
    assert retries
    assert all(set(examples(r)) <= set(SEEDS) for r in self_instruct_requests(engine))


def test_zh_few_shot_pool_grows_within_a_batch_and_restarts_from_the_seeds(tmp_path):
    engine = FirstTryShort()
    ph = make_phase(tmp_path, engine, language="zh", instruct_batch=4)
    recs = phases.self_instruct(ph, ZH_SEEDS, ZH_SEEDS, 8, "i1", "base")
    assert len(recs) == 8
    batch_of = {r["instruction"]: int(r["id"].split("-")[1]) // 4 for r in recs}
    shown = []
    for request in self_instruct_requests(engine):
        batch = int(request.id.split("-")[1]) // 4
        for example in examples(request):
            assert example in ZH_SEEDS or batch_of[example] == batch  # never another batch's
            shown.append(example)
        if request.id.endswith("-t0"):
            assert set(examples(request)) <= set(ZH_SEEDS)  # nothing accepted yet
    assert set(shown) - set(ZH_SEEDS)  # the retries did draw accepted instructions


def test_self_instruct_skips_what_was_seen_before(tmp_path):
    first = phases.self_instruct(make_phase(tmp_path / "a"), SEEDS, SEEDS, 3, "i1", "base")
    seen = SEEDS + [r["instruction"] for r in first]
    again = phases.self_instruct(make_phase(tmp_path / "b"), SEEDS, seen, 3, "i1", "base")
    assert not {r["instruction"] for r in again} & {r["instruction"] for r in first}


def test_self_instruct_replay_from_cache_generates_nothing_and_gives_same_records(tmp_path):
    first = phases.self_instruct(make_phase(tmp_path), SEEDS, SEEDS, 6, "i1", "base")
    engine = FakeEngine()
    again = phases.self_instruct(make_phase(tmp_path, engine), SEEDS, SEEDS, 6, "i1", "base")
    assert again == first
    assert engine.calls == []


def test_self_instruct_takes_every_accepted_instruction_whatever_the_finish_fraction(tmp_path):
    # The reference's step0 has no 95% cut: it retries every slot.
    ph = make_phase(tmp_path, finish_fraction=0.5)
    assert len(phases.self_instruct(ph, SEEDS, SEEDS, 6, "i1", "base")) == 6


# --- the judge -------------------------------------------------------------------------------


def test_the_sampled_judge_is_the_default_and_reads_yes_as_the_reference(tmp_path):
    engine = FakeEngine()
    ph = make_phase(tmp_path, engine)
    verdicts = phases.judge(ph, ["Write a long lantern saga.", "Write a long river saga."], "base")
    assert verdicts == [False, True]  # the fake answers "No" / "Yes", capitalised
    judged = [r for r in engine.requests.values() if r.id.startswith("judge-")]
    assert len(judged) == 2 and not any(r.params.greedy for r in judged)
    assert all(r.params.max_new_tokens == phases.JUDGE_MAX_NEW_TOKENS for r in judged)


def test_the_zh_judge_accepts_only_shi(tmp_path):
    ph = make_phase(tmp_path, language="zh")
    assert phases.judge(ph, ["写一篇lantern长篇故事。", "写一篇河流长篇故事。"], "base") == [False, True]


def test_the_likelihood_judge_stays_an_option(tmp_path):
    engine = FakeEngine()
    ph = make_phase(tmp_path, engine, judge="likelihood")
    assert phases.judge(ph, ["Write a long lantern saga.", "Write a long river saga."], "base") == [False, True]
    assert engine.calls == []  # no sampling


# --- initial responses, extension, SFT data ---------------------------------------------------


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


# --- finish fraction: completed tasks, failures included --------------------------------------


@pytest.mark.parametrize(("fraction", "total", "count"),
                         [(0.95, 20, 20), (0.95, 100, 96), (0.95, 1000, 951), (0.5, 20, 11),
                          (1.0, 7, 7), (0.0, 5, 1), (0.95, 0, 0)])
def test_finish_count_is_the_first_count_above_the_fraction(fraction, total, count):
    # step1/step2: `if count / len(futures) > 0.95` ends the phase.
    assert phases.finish_count(fraction, total) == count


def essays(n):
    return [{"id": f"i1-{s:05d}", "instruction": f"Write a long essay number {s}."} for s in range(n)]


def test_finish_fraction_stops_the_phase_once_enough_tasks_completed(tmp_path):
    ph = make_phase(tmp_path, finish_fraction=0.5)
    phases.initial_responses(ph, essays(10))  # 20 tasks: stop after 11 completions
    kept, cut, unfinished = (ph.counts["initial_before_downsample"], ph.counts["cut_by_finish_fraction"],
                             ph.counts["unfinished_at_cut"])
    assert kept == 11
    assert kept + cut + unfinished == 20  # every task accepted in round 0 (the rest unfinished)
    assert ph.counts["attempts"] == 20  # one round sufficed


def test_failed_tasks_count_as_completed(tmp_path):
    # One try each: every task completes in round 0, failures too, so the first 11 tasks
    # (in task order) are the finished ones, and only their successes are kept.
    engine = FakeEngine()
    ph = make_phase(tmp_path, engine, finish_fraction=0.5, response_tries=1)
    phases.initial_responses(ph, essays(10))
    tasks = [f"i1-{s:05d}-r{j}" for s in range(10) for j in range(2)]
    good = [t for t in tasks[:11] if engine.requests[f"{t}-t0"].params.seed % 3 != 0]
    assert ph.counts["initial_before_downsample"] == len(good) < 11
    assert ph.counts["unfinished_at_cut"] == 0


def test_no_cut_is_counted_with_the_whole_fraction(tmp_path):
    ph = make_phase(tmp_path)
    phases.initial_responses(ph, essays(3))
    assert "cut_by_finish_fraction" not in ph.counts


# --- down-sampling ---------------------------------------------------------------------------


RECORDS = [{"id": str(i), "response": text, "words": count_words(text)}
           for i, text in enumerate(["a " * 40, "longword " * 10, "mid text " * 8, "x " * 25,
                                     "word " * 30, "tiny.", "a b c d e f g h", "p " * 60])]


@pytest.mark.parametrize(("by", "lengths", "ties"),
                         [("chars", [len(r["response"]) for r in RECORDS], "shared"),
                          ("words", [r["words"] for r in RECORDS], "ordered")])
def test_downsampling_ranks_by_characters_by_default_or_by_words(tmp_path, by, lengths, ties):
    ph = make_phase(tmp_path, downsample_by=by)
    rng = np.random.default_rng(derive_seed(7, 1, "", "initial", "downsample"))
    expected = [r for r, k in zip(RECORDS, length_biased_keep(lengths, rng, ties=ties)) if k]
    assert phases.downsample(ph, RECORDS, "initial") == expected


def test_the_default_is_chars():
    assert from_dict({}).pipeline.downsample_by == "chars"

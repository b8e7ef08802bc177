"""Which weights play which role, iteration by iteration, through the whole loop on the
deterministic fake engine (training stubbed out): as in the reference, the base model
writes and judges every new instruction; the trained adapters answer and extend."""

import json
import types

import pytest

from fake_engine import FakeEngine
from selflengthen_jax.config import from_dict
from selflengthen_jax.pipeline import loop as loop_module
from selflengthen_jax.pipeline.loop import Loop


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    trained = []

    def fake_train(cfg, role, data, out, *args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        trained.append((role, kwargs.get("init_adapters")))
        return out

    monkeypatch.setattr(loop_module, "train", fake_train)
    monkeypatch.setattr(loop_module, "load_adapter", lambda path: ({"path": str(path)},
                                                                   {"alpha": 16, "rank": 8}))
    cfg = from_dict({"language": "en", "seed": 3, "output_dir": str(tmp_path),
                     "pipeline": {"max_iter": 2, "instruct_count": 3, "extension_rounds": 1,
                                  "collect_count": 3, "collect_round": 2}})
    engine = FakeEngine()
    engine.model = types.SimpleNamespace(params=None, cfg=None, tokenizer=None)
    summaries = Loop(cfg, engine, tmp_path, log=lambda _: None).run()
    return tmp_path, engine, summaries, trained


def adapters(engine, prefix, kind):
    """The adapters used by the requests of ids starting with `prefix`, of one kind."""
    picks = {"self_instruct": lambda r: r.prompt is not None and r.prompt.endswith("Instruction 3:"),
             "judge": lambda r: r.id.startswith("judge-"),
             "answer": lambda r: r.messages is not None and "-r" in r.id and "-e" not in r.id,
             "extend": lambda r: "-e" in r.id}
    return {r.adapter for i, r in engine.requests.items()
            if picks[kind](r) and (kind == "judge" or i.startswith(prefix))}


def test_iteration_2_self_instructs_with_the_base_model_and_answers_with_the_trained_roles(finished_run):
    out, engine, summaries, trained = finished_run
    assert [s["iteration"] for s in summaries] == [1, 2]
    assert adapters(engine, "i1-", "self_instruct") == {"base"}
    assert adapters(engine, "i2-", "self_instruct") == {"base"}
    assert adapters(engine, "i1-", "answer") == {"base"}
    assert adapters(engine, "i2-", "answer") == {"generator"}
    assert adapters(engine, "i2-", "extend") == {"extender"}
    assert adapters(engine, "", "judge") == {"base"}  # every judge call, collect rounds too
    # Iteration 2 registered iteration 1's adapters; the collect rounds the final ones.
    assert [sorted(s) for s in engine.adapter_sets] == [["extender", "generator"]] * 2
    assert [role for role, _ in trained] == ["generator", "extender"] * 2


def test_the_extra_rounds_ask_the_base_model_and_answer_with_the_final_generator(finished_run):
    out, engine, _, _ = finished_run
    assert adapters(engine, "c0-", "self_instruct") == adapters(engine, "c1-", "self_instruct") == {"base"}
    assert adapters(engine, "c0-", "answer") == adapters(engine, "c1-", "answer") == {"generator"}
    rounds = [json.loads(line) for r in (0, 1)
              for line in (out / "collect" / f"round_{r}" / "instructions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rounds] == ["c0-00000", "c0-00001", "c1-00000"]  # 3 in rounds of 2
    long = [json.loads(line) for line in (out / "long.jsonl").read_text().splitlines()]
    assert any(r["id"].startswith("collect/round_1/initial/") for r in long)


def test_the_summary_reports_the_finish_cut(finished_run):
    _, _, summaries, _ = finished_run
    assert summaries[0]["finish_cut"] == {"initial": {"cut": 0, "unfinished": 0},
                                          "extended": {"cut": 0, "unfinished": 0}}

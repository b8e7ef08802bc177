"""launch.length_control: long pairs in, SFT records whose prompts state the answer's
length out; model rewrites when usable, templates otherwise or with --template-only."""

import pytest

from cli_fixtures import ENGINE, read_jsonl, run_main, shared_chat_checkpoint, write_jsonl
from launch.length_control import main
from selflengthen_jax.config import load_config
from selflengthen_jax.eval.constraints import Constraint, band, parse_numbers
from selflengthen_jax.eval.run import engine_rewriter, length_control, read_pairs, rewrite_params
from selflengthen_jax.pipeline.text import count_words
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.service import build_engine

BOUNDS = ["eval.min_words=10", "eval.max_words=100"]
PAIRS = [
    {"id": "river", "instruction": "Write an essay about rivers.", "response": " ".join(["flow"] * 42)},
    {"id": "short", "instruction": "Say hi.", "response": "Hi there."},              # under min_words
    {"id": "spring", "prompt": "写一篇关于春天的文章。", "response": "春" * 57},
    {"id": "sea", "instruction": "Describe the sea in 200 words.", "response": " ".join(["wave"] * 88),
     "language": "en"},
]


def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "long.jsonl", PAIRS)


def check_records(records):
    """Every kept pair becomes one record whose prompt states a demand its response meets."""
    assert [r["id"] for r in records] == ["river", "spring", "sea"]
    for record in records:
        low, high = band(Constraint(record["constraint_type"], record["low"], record["high"]))
        assert record["words"] == count_words(record["response"]) and low <= record["words"] <= high
        assert {record["low"], record["high"]} <= set(parse_numbers(record["prompt"]))
        assert record["rewrite"] in {"model", "template"}


def test_template_only_is_deterministic_and_needs_no_model(tmp_path, capsys):
    outputs = []
    for name in ("a.jsonl", "b.jsonl"):
        code, stdout, _ = run_main(main, ["--input", pairs_file(tmp_path), "--output", tmp_path / name,
                                          "--template-only", *BOUNDS], capsys)
        assert code == 0 and "kept 3 of 4 pairs" in stdout and "model 0, template 3" in stdout
        outputs.append((tmp_path / name).read_text())
    assert outputs[0] == outputs[1]
    records = read_jsonl(tmp_path / "a.jsonl")
    check_records(records)
    assert all(r["rewrite"] == "template" for r in records)
    sea = records[-1]
    assert "200 words" not in sea["prompt"]               # the old demand is replaced


def test_model_rewrites_fall_back_to_templates_when_unusable(tmp_path, tmp_path_factory, capsys, monkeypatch):
    checkpoint = shared_chat_checkpoint(tmp_path_factory)
    asked, generate = [], Engine.generate
    monkeypatch.setattr(Engine, "generate", lambda self, requests, **kw: asked.append(requests)
                        or generate(self, requests, **kw))
    out = tmp_path / "sft.jsonl"
    code, stdout, _ = run_main(main, ["--input", pairs_file(tmp_path), "--output", out, "--model", checkpoint,
                                      *BOUNDS, *ENGINE, "engine.max_prefill_len=600",
                                      "pipeline.instruct_max_new_tokens=8"], capsys)
    assert code == 0 and "kept 3 of 4 pairs" in stdout
    [requests] = asked                                    # one greedy chat request per kept pair
    assert [r.id for r in requests] == ["river", "spring", "sea"]
    assert all(r.params.greedy and r.params.max_new_tokens == 8 and r.messages for r in requests)
    check_records(read_jsonl(out))                        # a random model's text is never accepted


def test_a_rewrite_keeping_the_demand_numbers_is_used(tmp_path):
    cfg = load_config(None, BOUNDS)
    seen = []

    def rewrite(plans):
        seen.extend(plans)
        return [f"{p.query} Write {p.demand}." if p.source_id != "river" else "no numbers here"
                for p in plans]

    records = length_control(read_pairs(pairs_file(tmp_path)), cfg, rewrite)
    assert [p.source_id for p in seen] == ["river", "spring", "sea"]
    assert [r["rewrite"] for r in records] == ["template", "model", "model"]
    assert records[1]["prompt"].startswith("写一篇关于春天的文章。 Write ")


@pytest.mark.parametrize("line,flags,message", [
    ({"id": "x", "response": "text"}, [], ":2: give exactly one of 'instruction' or 'prompt'"),
    ({"id": "x", "instruction": "q"}, [], ":2: missing or non-string field 'response'"),
    ({"id": "x", "instruction": "q", "response": "r", "language": "de"}, [], ":2: language 'de'"),
    ({"id": "river", "instruction": "q", "response": "r"}, [], ":2: duplicate id 'river'"),
    ({"id": "y", "instruction": "q", "response": "r"}, ["eval.min_words=500"],
     "eval.min_words <= eval.max_words"),
])
def test_bad_input_exits_2_before_any_model_load(tmp_path, capsys, line, flags, message):
    path = write_jsonl(tmp_path / "long.jsonl", [PAIRS[0], line])
    code, _, stderr = run_main(main, ["--input", path, "--output", tmp_path / "o.jsonl",
                                      "--model", tmp_path / "no-such-model", *BOUNDS, *flags], capsys)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_read_pairs_defaults_ids_to_line_numbers(tmp_path):
    lines = [{"prompt": "q", "response": "r"}, "", {"instruction": "q2", "response": "r2"}]
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    assert read_pairs(path) == [{"id": "1", "instruction": "q", "response": "r"},
                                {"id": "3", "instruction": "q2", "response": "r2"}]


def test_queries_too_long_for_the_rewrite_engine_get_the_template(tmp_path, tmp_path_factory):
    cfg = load_config(None, [*BOUNDS, "engine.max_prefill_len=64"])
    engine = build_engine(cfg, str(shared_chat_checkpoint(tmp_path_factory)))
    rewrite = engine_rewriter(engine, rewrite_params(cfg))
    records = length_control(read_pairs(pairs_file(tmp_path)), cfg, rewrite)
    assert [r["rewrite"] for r in records] == ["template"] * 3

"""launch.evaluate: generate (resumably) then score a LonGen-format benchmark, or score
given responses; reports on disk, `overall=<score>` as the last stdout line, optional
quality judging through an OpenAI-compatible server."""

import json
import re
from pathlib import Path

import pytest

from cli_fixtures import ENGINE, read_jsonl, run_main, shared_chat_checkpoint, write_jsonl
from launch.evaluate import main
from selflengthen_jax.eval.constraints import band, constraint_from_row
from test_judge import GOOD, fake_openai_server

BENCHMARK = Path(__file__).parent / "fixtures" / "longen_sample.jsonl"
OVERALL = re.compile(r"overall=(\d\.\d{4})")


def rows() -> list[dict]:
    return read_jsonl(BENCHMARK)


def answer(row: dict, words: float) -> str:
    """A response of `words` words in the row's language (one CJK character = one word)."""
    return "字" * round(words) if row["language"] == "zh" else " ".join(["word"] * round(words))


def with_responses(tmp_path: Path, scale: float = 1.0) -> Path:
    """The benchmark with responses at `scale` x the centre of each row's band."""
    answered = [{**r, "response": answer(r, scale * sum(band(constraint_from_row(r))) / 2)} for r in rows()]
    return write_jsonl(tmp_path / "answered.jsonl", answered)


def last_score(stdout: str) -> float:
    last = stdout.strip().splitlines()[-1]
    match = OVERALL.fullmatch(last)
    assert match, f"last line is {last!r}"
    return float(match.group(1))


def test_generates_missing_responses_then_scores(tmp_path, tmp_path_factory, capsys):
    checkpoint = shared_chat_checkpoint(tmp_path_factory)
    out = tmp_path / "eval"
    out.mkdir()
    kept = [{**r, "id": str(k), "response": "kept"} for k, r in enumerate(rows(), start=1)][:-1]
    write_jsonl(out / "responses.jsonl", kept)           # all but the last row already answered

    code, stdout, _ = run_main(main, ["--model", checkpoint, "--input", BENCHMARK, "--output", out,
                                      "eval.max_new_tokens=6", "sampling.temperature=0", *ENGINE], capsys)

    assert code == 0
    assert 0.0 <= last_score(stdout) <= 1.0
    responses = read_jsonl(out / "responses.jsonl")
    assert [r["id"] for r in responses] == [str(k) for k in range(1, 10)]
    assert [r["response"] for r in responses[:-1]] == ["kept"] * 8
    assert responses[-1]["query"] == rows()[-1]["query"] and 0 < responses[-1]["completion_tokens"] <= 6
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["n"] == 9 and report["records"][0]["id"] == "1"
    assert (out / "report.md").read_text().startswith("# LonGen")
    assert (out / "lengths.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "judge.json").exists()


@pytest.mark.parametrize("scale,expected", [(1.0, 1.0), (0.0, 0.0)])
def test_responses_only_scores_the_given_answers_without_a_model(tmp_path, capsys, scale, expected):
    out = tmp_path / "eval"
    code, stdout, _ = run_main(main, ["--input", with_responses(tmp_path, scale), "--output", out,
                                      "--responses-only", "--model", tmp_path / "no-such-model"], capsys)
    assert code == 0 and last_score(stdout) == expected
    assert "| about |" in stdout                         # the table is printed above the score
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["longen"] == expected and set(report["by_language"]) == {"zh", "en"}
    assert not (out / "responses.jsonl").exists()


def test_a_longbench_write_file_is_scored_by_s_l(tmp_path, capsys):
    # LongBench-Write's own rows: prompt, a category as type, a required length; no constraint.
    rows_ = [{"prompt": "写一篇关于春天的散文。", "type": "Literature", "length": 1000, "response": "春" * 1000},
             {"prompt": "Write a blog post about rivers.", "type": "Blog", "length": 500,
              "response": "river " * 1000}]
    out = tmp_path / "eval"
    code, stdout, _ = run_main(main, ["--benchmark", write_jsonl(tmp_path / "lbw.jsonl", rows_),
                                      "--output", out, "--responses-only"], capsys)
    assert code == 0 and stdout.strip().splitlines()[-1] == "overall=n/a"  # no LonGen bands
    report = json.loads((out / "report.json").read_text())
    zh, en = report["records"]
    assert (zh["language"], zh["range"], zh["longbench_write"]) == ("zh", "500-2k", 100.0)
    assert (en["language"], en["range"], en["target"]) == ("en", "500-2k", 500.0)
    assert en["longbench_write"] == pytest.approx(100 * (1 - (1000 / 500 - 1) / 3))
    assert "longbench_write=83.33 n=2" in stdout


def test_a_longbench_write_row_needs_a_positive_length(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "lbw.jsonl", [{"prompt": "Write.", "length": "many"}])
    code, _, stderr = run_main(main, ["--benchmark", bad, "--output", tmp_path / "out", "--responses-only"],
                               capsys)
    assert code == 2 and ":1: 'length' must be a positive number" in stderr


def test_judge_through_an_openai_compatible_server(tmp_path, capsys):
    reply = lambda body: (200, {"choices": [{"message": {"role": "assistant", "content": json.dumps(GOOD)}}]})
    with fake_openai_server(reply) as (url, received):
        code, stdout, _ = run_main(main, ["--input", with_responses(tmp_path), "--output", tmp_path,
                                          "--responses-only", "--judge-url", url, "--judge-name", "judge"],
                                   capsys)
    assert code == 0 and last_score(stdout) == 1.0
    assert len(received) == 9 and received[0][2]["model"] == "judge"
    judged = json.loads((tmp_path / "judge.json").read_text())
    assert judged["mean"]["overall"] == pytest.approx(sum(GOOD.values()) / len(GOOD))
    assert judged["stats"]["scored"] == 9 and judged["scores"][0] == {"id": "1", "scores": GOOD}
    assert "judge=7.43 scored=9/9" in stdout


@pytest.mark.parametrize("edit,flags,message", [
    (lambda r: {k: v for k, v in r.items() if k != "constraint"}, [],
     ":4: missing or non-string field 'constraint'"),
    (lambda r: {**r, "language": "fr"}, [], ":4: language 'fr'"),
    (lambda r: {**r, "constraint": "long"}, [], ":4: bad constraint"),
    (lambda r: r, ["--responses-only"], ":1: missing or non-string field 'response'"),
    (lambda r: r, ["--judge-url", "http://127.0.0.1:9"], "--judge-url needs --judge-name"),
    (lambda r: r, ["--judge-url", "http://x", "--judge-name", "j", "--judge-model", "m"], "choose one judge"),
])
def test_bad_input_exits_2_naming_the_line_before_any_model_load(tmp_path, capsys, edit, flags, message):
    bad = [edit(r) if k == 3 else r for k, r in enumerate(rows())]
    benchmark = write_jsonl(tmp_path / "bench.jsonl", bad)
    code, _, stderr = run_main(main, ["--input", benchmark, "--output", tmp_path / "out",
                                      "--model", tmp_path / "no-such-model", *flags], capsys)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_a_missing_judge_model_fails_before_generation(tmp_path, capsys):
    code, _, stderr = run_main(main, ["--input", with_responses(tmp_path), "--output", tmp_path,
                                      "--responses-only", "--judge-model", tmp_path / "no-judge"], capsys)
    assert code == 2 and "no-judge does not exist" in stderr
    assert not (tmp_path / "report.json").exists()


def test_resuming_needs_the_same_queries_and_loads_no_model_when_all_are_answered(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    answered = [{**r, "id": str(k), "response": "kept"} for k, r in enumerate(rows(), start=1)]
    write_jsonl(out / "responses.jsonl", answered)
    argv = ["--model", tmp_path / "no-such-model", "--input", BENCHMARK, "--output", out]
    code, stdout, _ = run_main(main, argv, capsys)
    assert code == 0 and last_score(stdout) == 0.0

    write_jsonl(out / "responses.jsonl", [{**answered[0], "query": "an older question"}])
    code, _, stderr = run_main(main, argv, capsys)
    assert code == 2 and "id '1' answers a different query than" in stderr and f"{BENCHMARK}:1" in stderr

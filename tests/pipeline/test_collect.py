"""Collecting long.jsonl: any set of finished iterations, stable ids, exact-text dedup."""

import pytest

from cli_fixtures import read_jsonl, run_main, write_jsonl
from launch.collect import main
from selflengthen_jax.pipeline.collect import collect_long, finished_iterations, write_long


def pair(rid, instruction, response, **extra):
    return {"id": rid, "instruction": instruction, "response": response, **extra}


@pytest.fixture
def run_dir(tmp_path):
    """iter_1 and iter_2 finished; iter_3 still generating (no extended.jsonl yet); an
    extra data rounds (collect/round_r/) after the last iteration."""
    run = tmp_path / "run"
    files = {
        "iter_1/initial.jsonl": [pair("a", "Q1", "short 1", language="en"), pair("b", "Q2", "short 2")],
        "iter_1/extended.jsonl": [pair("a", "Q1", "long 1"), pair("b", "Q2", "short 2")],   # b not extended
        "iter_2/initial.jsonl": [pair("a", "Q1", "long 1"), pair("c", "Q3", "short 3")],    # repeats iter 1
        "iter_2/extended.jsonl": [pair("a", "Q1", "longer 1"), pair("c", "Q3", "long 3")],
        "iter_3/initial.jsonl": [pair("a", "Q1", "new")],
        "collect/round_0/initial.jsonl": [pair("d", "Q4", "final 4"), pair("e", "Q1", "longer 1")],
        "collect/round_1/instructions.jsonl": [pair("g", "Q6", "")],  # round 1 still answering
        "collect/round_10/initial.jsonl": [pair("f", "Q5", "final 5")],  # rounds in number order
    }
    for name, records in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(run / name, records)
    (run / "iter_notes").mkdir()
    return run


def test_only_iterations_with_both_files_count_as_finished(run_dir):
    assert finished_iterations(run_dir) == [1, 2]


def test_default_collects_every_finished_iteration_and_the_extra_round_without_exact_repeats(run_dir):
    records, dropped = collect_long(run_dir)
    assert [(r["id"], r["response"]) for r in records] == [
        ("iter_1/initial/a", "short 1"), ("iter_1/initial/b", "short 2"), ("iter_1/extended/a", "long 1"),
        ("iter_2/initial/c", "short 3"), ("iter_2/extended/a", "longer 1"), ("iter_2/extended/c", "long 3"),
        ("collect/round_0/initial/d", "final 4"), ("collect/round_10/initial/f", "final 5")]
    assert dropped == 3
    assert records[-1]["iteration"] is None and records[-1]["source"] == "initial"
    assert records[0] == {"id": "iter_1/initial/a", "instruction": "Q1", "response": "short 1",
                          "language": "en", "iteration": 1, "source": "initial"}


def test_ids_do_not_depend_on_which_iterations_are_picked(run_dir):
    both = {r["id"]: r for r in collect_long(run_dir, [1, 2])[0]}
    assert not any(rid.startswith("collect/") for rid in both)   # explicit picks: iterations only
    second = collect_long(run_dir, [2])[0]
    assert [r["id"] for r in second] == ["iter_2/initial/a", "iter_2/initial/c",
                                         "iter_2/extended/a", "iter_2/extended/c"]
    assert all(both[r["id"]] == r for r in second if r["id"] in both)


def test_an_unfinished_or_malformed_iteration_is_named(run_dir):
    with pytest.raises(ValueError, match=r"iteration 3 is not finished: .*iter_3/extended.jsonl"):
        collect_long(run_dir, [3])
    write_jsonl(run_dir / "iter_2/extended.jsonl", [pair("a", "Q1", "x"), {"id": "c", "instruction": "Q3"}])
    with pytest.raises(ValueError, match=r"extended.jsonl:2: missing or non-string field\(s\) response"):
        collect_long(run_dir)
    write_jsonl(run_dir / "iter_2/extended.jsonl", [pair(7, "Q1", "x")])
    with pytest.raises(ValueError, match=r"iter_2/extended.jsonl:1: missing or non-string field\(s\) id"):
        collect_long(run_dir)
    with pytest.raises(ValueError, match="has no finished iteration"):
        collect_long(run_dir / "iter_3")


def test_cli_writes_the_file_and_reports_counts(run_dir, tmp_path, capsys):
    out = tmp_path / "long.jsonl"
    code, stdout, _ = run_main(main, ["--input", run_dir, "--output", out], capsys)
    assert code == 0 and "wrote 8 records" in stdout and "3 duplicates dropped" in stdout
    assert read_jsonl(out) == collect_long(run_dir)[0]
    assert write_long(run_dir, out, [1]) == (3, 1)


@pytest.mark.parametrize("argv,message", [
    (["--iters", "one"], "expected comma-separated iteration numbers"),
    (["--iters", "0"], "iteration numbers >= 1"),
    (["--iters", "3"], "iteration 3 is not finished"),
])
def test_cli_bad_input_exits_2(run_dir, tmp_path, capsys, argv, message):
    code, _, stderr = run_main(main, ["--input", run_dir, *argv, "--output", tmp_path / "o.jsonl"], capsys)
    assert code == 2 and message in stderr
    assert not (tmp_path / "o.jsonl").exists()

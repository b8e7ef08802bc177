"""A bad-input and fault battery over every launcher: each case fails before compute
with exit code and one `error:` line naming the problem, and leaves every file it was
not asked to write exactly as it was (the tree is hashed before and after).

The four data-loss cases of issue 14 are here: export deleting the directory around its
source, generate truncating an unrelated file, length_control erasing its own input,
collect overwriting a run's own file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from cli_fixtures import ENGINE, run_main, shared_chat_checkpoint, write_jsonl
from launch import bench_sharding, collect, evaluate, export, generate, iterate, length_control, train

FIXTURES = Path(__file__).resolve().parents[1] / "eval" / "fixtures"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_chat_checkpoint(tmp_path_factory)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory (relative defaults such as runs/ land here)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under `roots` with its kind, mode and (for files) content hash."""
    out = {}
    for root in roots:
        for p in [root, *sorted(root.rglob("*"))]:
            mode = oct(p.lstat().st_mode)
            out[str(p)] = mode if p.is_dir() else f"{mode} {hashlib.sha256(p.read_bytes()).hexdigest()}"
    return out


def refused(capsys, main, argv, needles, roots, code=2):
    """Run `main(argv)`: it must exit `code` with one error line holding every needle,
    and change nothing under `roots`."""
    before = snapshot(*roots)
    got, _, err = run_main(main, argv, capsys)
    assert got == code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert snapshot(*roots) == before
    return err


def run_dir(root: Path) -> Path:
    """A finished one-iteration run of launch.iterate (run_config.json + iter_1 files)."""
    run = root / "R"
    (run / "iter_1").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"seed": 0}))
    rec = {"id": "1", "instruction": "Write about rivers.", "response": "Rivers run."}
    write_jsonl(run / "iter_1" / "initial.jsonl", [rec])
    write_jsonl(run / "iter_1" / "extended.jsonl", [{**rec, "response": "Rivers run far."}])
    return run


def truncated(ckpt: Path, root: Path) -> Path:
    """A copy of the checkpoint whose safetensors file was cut short."""
    bad = root / "truncated"
    shutil.copytree(ckpt, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:6])
    return bad


# -- config values: load_config refuses them for every launcher ---------------------------------
BAD_VALUES = [
    ("sampling.temperature=.nan", "sampling.temperature=nan must be a finite number"),
    ("train.learning_rate=.nan", "train.learning_rate=nan must be a finite number"),
    ("sampling.repetition_penalty=.inf", "sampling.repetition_penalty=inf must be a finite number"),
    ("train.max_grad_norm=-1", "train.max_grad_norm=-1.0 must be >= 0"),
    ("train.lora.alpha=0", "train.lora.alpha=0.0 must be > 0"),
    ("train.log_every=0", "train.log_every=0 must be a positive integer"),
    ("pipeline.instruct_tries=0", "pipeline.instruct_tries=0 must be a positive integer"),
    ("pipeline.responses_per_instruction=-2", "pipeline.responses_per_instruction=-2 must be a positive"),
    ("pipeline.ngram_en=0", "pipeline.ngram_en=0 must be a positive integer"),
    ("train.max_steps=0", "train.max_steps=0 must be a positive integer or -1"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
    ("pipeline.min_extension_ratio=.nan", "pipeline.min_extension_ratio=nan must be a finite number"),
    ("plan.num_devices=-4", "plan.num_devices=-4 must be >= 0"),
    ("mesh.rules.vocabb=tensor", "mesh.rules.vocabb is not a logical axis; known: batch, layers, embed, vocab"),
    ("mesh.rules.vocab=bogus", "mesh.rules.vocab='bogus' is not allowed; choose a mesh axis (data, fsdp, tensor)"),
    ("mesh.rules.heads=[tensor, bogus]", "mesh.rules.heads=['tensor', 'bogus'] is not allowed"),
    ("mesh.rules.mlp=[tensor, tensor]", "a list of distinct ones, or null"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES)
def test_iterate_dry_run_refuses_a_bad_value(work, capsys, override, message):
    refused(capsys, iterate.main, ["--dry-run", override], [message], [work])


def test_iterate_dry_run_needs_two_seed_instructions(work, capsys):
    seeds = write_jsonl(work / "seeds.jsonl", [{"prompt": "Write a long story."}])
    refused(capsys, iterate.main, ["--dry-run", f"pipeline.seeds_path={seeds}"],
            ["at least 2 instructions"], [work])


def test_iterate_dry_run_refuses_full_training_in_the_loop(work, capsys):
    refused(capsys, iterate.main, ["--dry-run", "train.mode=full"], ["set train.mode=lora"], [work])


def test_iterate_dry_run_checks_the_weights_the_real_run_needs(ckpt, work, capsys):
    bare = work / "no-weights"
    shutil.copytree(ckpt, bare)
    (bare / "model.safetensors").unlink()
    refused(capsys, iterate.main, ["--dry-run", f"model.path={bare}"], ["has no weights"], [work])


def test_iterate_refuses_an_output_dir_that_is_a_file(work, capsys):
    (work / "out").write_text("not a directory")
    refused(capsys, iterate.main, ["output_dir=out"], ["output_dir out is a file"], [work])


def test_iterate_refuses_an_output_dir_inside_another_run(work, capsys):
    run = run_dir(work)
    refused(capsys, iterate.main, [f"output_dir={run / 'sub'}"], ["inside the run directory"], [work])


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_iterate_refuses_another_runs_output_dir(work, capsys, dry):
    run = run_dir(work)
    refused(capsys, iterate.main, [*dry, f"output_dir={run}"], ["holds another run", "--force"], [work])


def test_iterate_truncated_weights_are_one_line_and_leave_output_dir_unclaimed(ckpt, work, capsys):
    bad = truncated(ckpt, work)
    refused(capsys, iterate.main, [f"model.path={bad}", "output_dir=run", *ENGINE],
            [f"{bad / 'model.safetensors'}", "corrupt safetensors"], [work, ckpt])
    assert not (work / "run").exists()


def test_iterate_refuses_an_engine_larger_than_the_device_before_loading(ckpt, work, capsys):
    refused(capsys, iterate.main, [f"model.path={ckpt}", "output_dir=run", "engine.slots=100000000"],
            ["engine.slots=100000000", "lower engine.slots"], [work, ckpt])
    assert not (work / "run").exists()


def test_iterate_ctrl_c_saves_progress_with_a_resume_hint_and_exit_130(ckpt, work, capsys, monkeypatch):
    from selflengthen_jax.pipeline import start

    class Loop:
        def run(self):
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(start, "start", lambda cfg, out, force=False: Loop())
    code, _, err = run_main(iterate.main, [f"model.path={ckpt}", "output_dir=run"], capsys)
    assert code == 130
    assert err.strip().splitlines() == [
        "stopped by signal SIGINT: progress is saved in run; rerun the same command to resume"]


# -- generate ------------------------------------------------------------------------------
@pytest.fixture
def prompts(work):
    return write_jsonl(work / "prompts.jsonl", [{"id": "a", "prompt": "Write about rivers."}])


def test_generate_never_truncates_an_unrelated_file(work, prompts, capsys):
    notes = work / "notes.txt"
    notes.write_text("my notes, no newline")
    refused(capsys, generate.main, ["--model", work / "no-model", "--input", prompts, "--output", notes],
            ["notes.txt:1", "not a record this command wrote"], [work])


def test_generate_refuses_output_equal_to_input(work, prompts, capsys):
    refused(capsys, generate.main, ["--model", work / "m", "--input", prompts, "--output", prompts],
            ["is also an input"], [work])


def test_generate_refuses_a_jsonl_file_of_other_records(work, prompts, capsys):
    other = write_jsonl(work / "other.jsonl", [{"id": "x", "prompt": "not an answer"}])
    refused(capsys, generate.main, ["--model", work / "m", "--input", prompts, "--output", other],
            ["other.jsonl:1", "no response"], [work])


def test_generate_refuses_a_bad_middle_line_in_its_own_output(work, prompts, capsys):
    out = work / "out.jsonl"
    out.write_text('{"id": "a", "response": "x"}\nnot json\n{"id": "b", "response": "y"}\n')
    refused(capsys, generate.main, ["--model", work / "m", "--input", prompts, "--output", out],
            ["out.jsonl:2"], [work])


def test_generate_refuses_a_directory_as_output(work, prompts, capsys):
    (work / "outdir").mkdir()
    refused(capsys, generate.main, ["--model", work / "m", "--input", prompts, "--output", work / "outdir"],
            ["is a directory"], [work])


def test_generate_refuses_an_output_under_a_file(work, prompts, capsys):
    refused(capsys, generate.main, ["--model", work / "m", "--input", prompts,
                                    "--output", prompts / "out.jsonl"], ["is a file, not a directory"], [work])


def test_generate_refuses_an_output_inside_a_run(work, prompts, capsys):
    run = run_dir(work)
    refused(capsys, generate.main, ["--model", work / "m", "--input", prompts,
                                    "--output", run / "iter_1" / "more.jsonl"], ["inside the run directory"], [work])


def test_generate_truncated_weights_are_one_line(ckpt, work, prompts, capsys):
    bad = truncated(ckpt, work)
    refused(capsys, generate.main, ["--model", bad, "--input", prompts, "--output", work / "o.jsonl", *ENGINE],
            ["corrupt safetensors"], [work])


def test_generate_refuses_an_engine_larger_than_the_device(ckpt, work, prompts, capsys):
    refused(capsys, generate.main, ["--model", ckpt, "--input", prompts, "--output", work / "o.jsonl",
                                    "engine.slots=100000000"],
            ["(engine.slots=100000000,", "lower engine.slots"], [work, ckpt])


def test_generate_ctrl_c_exits_130_with_a_resume_hint(ckpt, work, prompts, capsys, monkeypatch):
    monkeypatch.setattr(generate, "build_engine", lambda *a, **k: object())
    monkeypatch.setattr(generate, "check_prompt_lengths", lambda engine, todo: None)
    monkeypatch.setattr(generate, "generate_missing", lambda *a: os.kill(os.getpid(), signal.SIGINT))
    code, _, err = run_main(generate.main, ["--model", ckpt, "--input", prompts, "--output", "o.jsonl"], capsys)
    assert code == 130
    assert "progress is saved in o.jsonl; rerun the same command to resume" in err


# -- train ---------------------------------------------------------------------------------
@pytest.fixture
def data(work):
    return write_jsonl(work / "data.jsonl", [{"prompt": "Say hi.", "response": "Hi."}])


def test_train_refuses_an_unknown_role(ckpt, work, data, capsys):
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "banana", "--input", data, "--output", "o"],
            ["--role banana is not a role", "gen, ext"], [work])


def test_train_refuses_an_out_inside_a_run(ckpt, work, data, capsys):
    run = run_dir(work)
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", data, "--output", run],
            ["inside the run directory"], [work])


def test_train_refuses_another_commands_out(ckpt, work, data, capsys):
    theirs = work / "theirs"
    theirs.mkdir()
    (theirs / "train_config.json").write_text(json.dumps({"role": "ext"}))
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", data, "--output", theirs],
            ["holds another run", "role", "--force"], [work])


def test_train_refuses_an_out_that_is_a_file(ckpt, work, data, capsys):
    (work / "o").write_text("x")
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", data, "--output", "o"],
            ["--output o is a file"], [work])


def test_train_names_the_line_of_a_non_string_response(ckpt, work, capsys):
    bad = write_jsonl(work / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": 7}])
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", bad, "--output", "o"],
            [f"{bad}:2: 'response' must be a string"], [work])
    assert not (work / "o").exists()


def test_train_names_the_line_of_invalid_json(ckpt, work, capsys):
    bad = write_jsonl(work / "d.jsonl", [{"prompt": "a", "response": "b"}, "", '{"prompt": oops}'])
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", bad, "--output", "o"],
            [f"{bad}:3: invalid JSON"], [work])


def test_train_refuses_an_out_around_its_data(ckpt, work, data, capsys):
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", data, "--output", work],
            ["overlaps the input"], [work])


@pytest.mark.parametrize("override,message", BAD_VALUES[-4:])
def test_train_refuses_bad_mesh_rules_before_loading(ckpt, work, data, capsys, override, message):
    refused(capsys, train.main, ["--model", ckpt, "--role", "gen", "--input", data, "--output", "o", override],
            [message], [work])
    assert not (work / "o").exists()


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_train_refuses_a_profile_that_is_not_a_positive_count(ckpt, work, data, capsys, value):
    code, _, err = run_main(train.main, ["--model", ckpt, "--role", "gen", "--input", data, "--output", "o",
                                         "--profile", value], capsys)
    assert code == 2 and f"argument --profile: expected a whole number >= 1, got '{value}'" in err
    assert not (work / "o").exists()


def test_train_refuses_a_nan_value(ckpt, work, data, capsys):
    refused(capsys, train.main, [f"model.path={ckpt}", "--role", "gen", "--input", data, "--output", "o",
                                 "train.lora.alpha=.nan"], ["train.lora.alpha=nan must be a finite"], [work])


# -- export --------------------------------------------------------------------------------
def test_export_never_removes_the_directory_around_its_source(ckpt, work, capsys):
    parent = work / "parent"
    shutil.copytree(ckpt, parent / "src")
    (parent / "notes.txt").write_text("unrelated")
    refused(capsys, export.main, ["--model", parent / "src", "--output", parent], ["overlaps the input"], [work])


def test_export_refuses_to_equal_from(ckpt, work, capsys):
    refused(capsys, export.main, ["--model", ckpt, "--output", ckpt], ["overlaps the input"], [work, ckpt])


def test_export_refuses_a_to_inside_from(ckpt, work, capsys):
    refused(capsys, export.main, ["--model", ckpt, "--output", ckpt / "out"], ["overlaps the input"], [work, ckpt])


def test_export_refuses_to_replace_a_directory_it_did_not_write(ckpt, work, capsys):
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("years of work")
    refused(capsys, export.main, ["--model", ckpt, "--output", work / "mine"],
            ["did not write (thesis.tex)"], [work, ckpt])


def test_export_refuses_a_to_that_is_a_file(ckpt, work, capsys):
    (work / "f").write_text("x")
    refused(capsys, export.main, ["--model", ckpt, "--output", work / "f"], ["is a file"], [work, ckpt])


def test_export_names_a_missing_source(work, capsys):
    refused(capsys, export.main, ["--model", work / "nope", "--output", work / "out"], ["does not exist"], [work])


# -- evaluate ------------------------------------------------------------------------------
@pytest.fixture
def benchmark(work):
    return Path(shutil.copy(FIXTURES / "longen_sample.jsonl", work / "bench.jsonl"))


def test_evaluate_refuses_an_output_that_is_a_file(work, benchmark, capsys):
    (work / "out").write_text("x")
    refused(capsys, evaluate.main, ["--input", benchmark, "--output", "out", "--responses-only"],
            ["is a file"], [work])


def test_evaluate_refuses_a_benchmark_among_its_outputs(work, capsys):
    (work / "out").mkdir()
    bench = Path(shutil.copy(FIXTURES / "longen_sample.jsonl", work / "out" / "responses.jsonl"))
    refused(capsys, evaluate.main, ["--input", bench, "--output", work / "out", "--model", "m"],
            ["is also an input"], [work])


def test_evaluate_refuses_a_responses_file_it_did_not_write(ckpt, work, benchmark, capsys):
    (work / "out").mkdir()
    (work / "out" / "responses.jsonl").write_text("draft answers\n")
    refused(capsys, evaluate.main, ["--input", benchmark, "--output", work / "out", "--model", ckpt],
            ["responses.jsonl:1", "not a file this command wrote"], [work, ckpt])


def test_evaluate_refuses_judge_answers_it_did_not_write_before_generating(work, benchmark, capsys):
    (work / "out").mkdir()
    (work / "out" / "judge_answers.jsonl").write_text("my notes\n")
    refused(capsys, evaluate.main, ["--input", benchmark, "--output", work / "out", "--model", work / "m",
                                    "--judge-url", "http://127.0.0.1:9/v1", "--judge-name", "m"],
            ["judge_answers.jsonl:1", "not a file this command wrote"], [work])


def test_evaluate_refuses_an_output_inside_a_run(work, benchmark, capsys):
    run = run_dir(work)
    refused(capsys, evaluate.main, ["--input", benchmark, "--output", run / "eval", "--responses-only"],
            ["inside the run directory"], [work])


# -- length_control --------------------------------------------------------------------------
@pytest.fixture
def pairs(work):
    return write_jsonl(work / "p.jsonl", [{"id": "a", "instruction": "Write.", "response": "word " * 50}])


def test_length_control_never_erases_its_input(work, pairs, capsys):
    refused(capsys, length_control.main, ["--input", pairs, "--output", pairs, "--template-only"],
            ["is also an input"], [work])


def test_length_control_refuses_to_replace_a_file_it_did_not_write(work, pairs, capsys):
    notes = work / "notes.jsonl"
    notes.write_text('{"id": "n", "text": "mine"}\n')
    refused(capsys, length_control.main, ["--input", pairs, "--output", notes, "--template-only"],
            ["missing field(s)", "not a file this command wrote"], [work])


def test_length_control_refuses_a_directory_as_output(work, pairs, capsys):
    (work / "d").mkdir()
    refused(capsys, length_control.main, ["--input", pairs, "--output", work / "d", "--template-only"],
            ["is a directory"], [work])


def test_length_control_ctrl_c_exits_130_and_writes_nothing(work, pairs, capsys, monkeypatch):
    monkeypatch.setattr(length_control.run, "length_control",
                        lambda *a: os.kill(os.getpid(), signal.SIGINT))
    before = snapshot(work)
    code, _, err = run_main(length_control.main, ["--input", pairs, "--output", "o.jsonl", "--template-only"],
                            capsys)
    assert code == 130
    assert err.strip().splitlines() == ["stopped by signal SIGINT: o.jsonl was not written (it is written "
                                        "whole at the end); rerun the same command"]
    assert snapshot(work) == before


def test_length_control_refuses_a_nan_top_p(work, pairs, capsys):
    refused(capsys, length_control.main, ["--input", pairs, "--output", "o.jsonl", "sampling.top_p=.nan"],
            ["sampling.top_p=nan must be a finite number"], [work])


# -- collect -------------------------------------------------------------------------------
def test_collect_never_overwrites_a_runs_own_file(work, capsys):
    run = run_dir(work)
    refused(capsys, collect.main, ["--input", run, "--output", run / "iter_1" / "initial.jsonl"],
            ["lies inside the input directory"], [work])


def test_collect_refuses_an_output_inside_an_unmarked_run(work, capsys):
    run = run_dir(work)
    (run / "run_config.json").unlink()
    refused(capsys, collect.main, ["--input", run, "--output", run / "long.jsonl"],
            ["lies inside the input directory"], [work])


def test_collect_refuses_to_replace_a_file_it_did_not_write(work, capsys):
    run = run_dir(work)
    other = work / "other.jsonl"
    other.write_text("plain text\n")
    refused(capsys, collect.main, ["--input", run, "--output", other], ["not a file this command wrote"], [work])


def test_collect_refuses_a_directory_as_output(work, capsys):
    run = run_dir(work)
    (work / "d").mkdir()
    refused(capsys, collect.main, ["--input", run, "--output", work / "d"], ["is a directory"], [work])


def test_collect_writes_with_the_process_umask(work, capsys):
    run = run_dir(work)
    old = os.umask(0o022)
    try:
        code, _, err = run_main(collect.main, ["--input", run, "--output", work / "long.jsonl"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (work / "long.jsonl").stat().st_mode & 0o777 == 0o644


# -- bench_sharding ------------------------------------------------------------------------
def test_bench_sharding_refuses_an_out_that_is_a_file_before_measuring(work, capsys):
    (work / "report").write_text("x")
    refused(capsys, bench_sharding.main, ["--output", "report"], ["--output report is a file"], [work])


def test_bench_sharding_refuses_an_out_under_a_file(work, capsys):
    (work / "report").write_text("x")
    refused(capsys, bench_sharding.main, ["--output", "report/sub"], ["is a file, not a directory"], [work])


def test_bench_sharding_refuses_an_out_inside_another_run(work, capsys):
    run = run_dir(work)
    refused(capsys, bench_sharding.main, ["--output", run / "bench"], ["inside the run directory"], [work])


def test_bench_sharding_refuses_a_nan_value(work, capsys):
    refused(capsys, bench_sharding.main, ["train.learning_rate=.nan"], ["finite number"], [work])


# -- bench_generate, bench_train -------------------------------------------------------------
def test_bench_generate_refuses_an_out_that_is_a_file_before_measuring(work, capsys):
    from launch import bench_generate
    (work / "result").write_text("x")
    refused(capsys, bench_generate.main, ["--output", "result", "--quick"], ["--output result is a file"], [work])


def test_bench_train_refuses_an_out_that_is_a_directory_before_measuring(work, capsys):
    from launch import bench_train
    (work / "result.json").mkdir()
    refused(capsys, bench_train.main, ["--output", "result.json"], ["--output result.json is a directory"], [work])


def test_iterate_sigterm_while_the_model_loads_stops_cleanly(ckpt, work, capsys, monkeypatch):
    from selflengthen_jax.pipeline import start

    def loading(cfg, out, force=False):
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(start, "start", loading)
    code, _, err = run_main(iterate.main, [f"model.path={ckpt}", "output_dir=run"], capsys)
    assert code == 143 and "stopped by signal SIGTERM" in err
    assert not (work / "run").exists()

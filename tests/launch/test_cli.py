"""The one CLI convention: every launcher's --help is its whole docstring and names its
required arguments; config launchers take --config, key=value and --print-config; the
old spellings of inputs and outputs still work, each with one deprecation line."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cli_fixtures import run_main, write_jsonl
from launch import cli
from selflengthen_jax.config import from_dict

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = sorted(p.stem for p in (ROOT / "launch").glob("*.py") if p.stem not in ("__init__", "cli"))
NO_CONFIG = {"bench_generate", "bench_train", "build_demo"}  # fixed workloads: no run config
REQUIRED = {"train": ["--role", "--input", "--output"], "generate": ["--input", "--output"],
            "evaluate": ["--input", "--output"], "export": ["--output"], "collect": ["--output"],
            "length_control": ["--input", "--output"]}
FIXTURES = Path(__file__).resolve().parents[1] / "eval" / "fixtures"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def help_text(name: str, capsys) -> str:
    code, out, err = run_main(importlib.import_module(f"launch.{name}").main, ["--help"], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", LAUNCHERS)
def test_help_is_complete(name, capsys):
    text = help_text(name, capsys)
    usage, _, rest = text.partition("\n\n")
    for flag in REQUIRED.get(name, []):  # required flags appear without brackets in the usage
        assert re.search(rf"(?<!\[){re.escape(flag)}\s+[A-Z]", usage), (flag, usage)
    description = rest.split("\noptions:")[0].split("\npositional arguments:")[0].strip()
    assert description.endswith("."), description  # no paragraph stops mid-sentence
    for paragraph in description.split("\n\n"):
        if not paragraph.startswith("    "):  # usage examples aside, prose ends its sentence
            assert paragraph.rstrip().endswith((".", ":", ")")), paragraph
    for doc in re.findall(r"docs/[\w./-]+", text):
        assert (ROOT / doc).exists(), f"--help of {name} points to {doc}, which does not exist"
    assert ("--config" in text) == (name not in NO_CONFIG)
    assert ("--print-config" in text) == (name not in NO_CONFIG)
    for old in ("--out ", "--from ", "--to ", "--run ", "--benchmark ", "out=DIR", "data=PATH"):
        assert old not in usage


@pytest.mark.parametrize("name", sorted(set(LAUNCHERS) - NO_CONFIG))
def test_print_config_prints_the_effective_yaml_and_exits(name, work, capsys):
    main = importlib.import_module(f"launch.{name}").main
    argv = ["--print-config", "--config", "demo", "train.lora.rank=4", "mesh.rules.vocab=[fsdp, tensor]"]
    argv += {"train": ["--role", "gen", "--input", "x", "--output", "y"], "generate": ["--input", "x",
             "--output", "y"], "evaluate": ["--input", "x", "--output", "y"], "export": ["--output", "y"],
             "collect": ["--output", "y"], "length_control": ["--input", "x", "--output", "y"]}.get(name, [])
    code, out, err = run_main(main, argv, capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["train"]["lora"]["rank"] == 4 and printed["mesh"]["rules"] == {"vocab": ["fsdp", "tensor"]}
    assert printed["language"] == "en"  # from configs/demo.yaml
    assert from_dict(printed).to_dict() == printed  # it loads back as the same config
    assert not any(work.iterdir())  # nothing was written


def test_renamed_rewrites_old_spellings_with_one_hint_each(capsys):
    argv = cli.renamed(["--out", "a", "--from=b", "out=c", "x.out=d", "--output", "e"],
                       {"--out": "--output", "--from": "--model"}, {"out": "--output"})
    assert argv == ["--output", "a", "--model=b", "--output", "c", "x.out=d", "--output", "e"]
    assert capsys.readouterr().err.splitlines() == ["warning: --out is deprecated; use --output",
                                                    "warning: --from is deprecated; use --model",
                                                    "warning: out= is deprecated; use --output"]


def old_spelling_refused(capsys, main, argv, old, new, needle):
    """A deprecated spelling reaches the same check as the new one: one hint line, then
    the check's one error line."""
    code, _, err = run_main(main, argv, capsys)
    assert code == 2
    assert err.splitlines() == [f"warning: {old} is deprecated; use {new}", *[l for l in err.splitlines()[1:]]]
    assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("error: ") and needle in err, err


def test_export_from_and_to_still_work(work, capsys):
    from launch import export
    code, _, err = run_main(export.main, ["--from", work / "nope", "--to", work / "out"], capsys)
    assert code == 2
    assert err.splitlines() == ["warning: --from is deprecated; use --model",
                                "warning: --to is deprecated; use --output",
                                f"error: model directory {work / 'nope'} does not exist"]


def test_export_uses_model_path_from_the_config_and_refuses_no_model(work, capsys):
    from launch import export
    code, _, err = run_main(export.main, ["--output", work / "out", f"model.path={work / 'nope'}"], capsys)
    assert code == 2 and err.strip() == f"error: model directory {work / 'nope'} does not exist"
    code, _, err = run_main(export.main, ["--output", work / "out"], capsys)
    assert code == 2 and err.strip().startswith("error: --model is required (or model.path in --config)")


@pytest.mark.parametrize("module,old", [("bench_generate", "--out"), ("bench_train", "--out")])
def test_bench_out_still_works(work, capsys, module, old):
    main = importlib.import_module(f"launch.{module}").main
    (work / "result").mkdir() if module == "bench_train" else (work / "result").write_text("x")
    extra = ["--quick"] if module == "bench_generate" else []
    old_spelling_refused(capsys, main, [old, "result", *extra], old, "--output", "--output result is a")


def test_bench_sharding_out_still_works(work, capsys):
    from launch import bench_sharding
    (work / "report").write_text("x")
    old_spelling_refused(capsys, bench_sharding.main, ["--out", "report"], "--out", "--output",
                         "--output report is a file")


def test_build_demo_out_still_works(work, capsys):
    from launch import build_demo
    (work / "mine").mkdir()
    (work / "mine" / "keep.txt").write_text("mine")
    old_spelling_refused(capsys, build_demo.main, ["--out", work / "mine", "--epochs", "1"], "--out",
                         "--output", "is not a demo model built here")


def test_collect_run_still_works(work, capsys):
    from launch import collect
    old_spelling_refused(capsys, collect.main, ["--run", work / "nowhere", "--output", work / "o.jsonl"],
                         "--run", "--input", "nowhere")


def test_collect_takes_the_run_from_the_config(work, capsys):
    from launch import collect
    run = work / "R"
    (run / "iter_1").mkdir(parents=True)
    rec = {"id": "1", "instruction": "Write about rivers.", "response": "Rivers run."}
    write_jsonl(run / "iter_1" / "initial.jsonl", [rec])
    write_jsonl(run / "iter_1" / "extended.jsonl", [rec])
    code, out, err = run_main(collect.main, [f"output_dir={run}", "--output", work / "long.jsonl"], capsys)
    assert code == 0, err
    assert "wrote 1 records" in out
    code, _, err = run_main(collect.main, ["--output", work / "long2.jsonl"], capsys)
    assert code == 2 and err.startswith("error: --input is required")


def test_evaluate_benchmark_still_works(work, capsys):
    from launch import evaluate
    bench = Path(shutil.copy(FIXTURES / "longen_sample.jsonl", work / "bench.jsonl"))
    (work / "out").write_text("x")
    old_spelling_refused(capsys, evaluate.main, ["--benchmark", bench, "--output", "out", "--responses-only"],
                         "--benchmark", "--input", "is a file")

"""The one CLI convention: every launcher's --help is its whole docstring and names its
required arguments; every launcher takes --config, key=value and --print-config (the
run config, or for a benchmark or the demo build its own workload keys, listed in its
--help); the old spellings of inputs and outputs still work, each with one deprecation
line."""

from __future__ import annotations

import dataclasses
import importlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cli_fixtures import run_main, write_jsonl
from launch import bench_train, build_demo, cli
from selflengthen_jax.bench import generate as bench_gen
from selflengthen_jax.bench.sharding import load_bench
from selflengthen_jax.config import from_dict, load_section
from selflengthen_jax.demo import shipped
from selflengthen_jax.demo.build import Recipe

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = sorted(p.stem for p in (ROOT / "launch").glob("*.py") if p.stem not in ("__init__", "cli"))
# Launchers whose config is their own workload (not a run): module -> (section, defaults).
OWN_CONFIG = {"bench_generate": (bench_gen.BenchSpec, bench_gen.FULL),
              "bench_train": (bench_train.TrainBench, bench_train.TrainBench()),
              "build_demo": (Recipe, Recipe())}
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
    assert "--config" in usage and "--print-config" in usage and "key=value" in usage
    for old in ("--out ", "--from ", "--to ", "--run ", "--benchmark ", "out=DIR", "data=PATH"):
        assert old not in usage


@pytest.mark.parametrize("name", sorted(OWN_CONFIG))
def test_own_config_keys_are_all_listed_in_help_with_their_defaults(name, capsys):
    cls, defaults = OWN_CONFIG[name]
    listed = help_text(name, capsys).split("with their defaults:\n")[1]
    overrides = [line.strip() for line in listed.strip().splitlines()]
    leaves = [f.name for f in dataclasses.fields(cls)]
    assert {o.split("=")[0].split(".")[0] for o in overrides} == set(leaves)  # every key, no other
    assert load_section(cls, overrides=overrides, base=cls()) == defaults  # at the listed defaults


@pytest.mark.parametrize("name,argv,expect", [
    ("bench_generate", ["--quick", "--repeats", "4", "model.layers=2", "depths=[256]"],
     {"repeats": 4, "new_tokens": bench_gen.QUICK.new_tokens, "depths": [256], "seed": 5}),
    ("bench_train", ["--steps", "2", "seq_len=64", "model.kv_heads=4"],
     {"steps": 2, "warmup": 3, "seq_len": 64, "lora_rank": 5}),
    ("build_demo", ["--languages", "en,zh", "--epochs", "3", "learning_rate=1e-3"],
     {"languages": ["en", "zh"], "epochs": 3, "learning_rate": 0.001, "batch_size": 5}),
])
def test_own_config_prints_file_then_overrides_then_flags_and_exits(name, argv, expect, work, capsys):
    """The last key in `expect` comes from the --config file alone; the first is set in the
    file too, and the flag (given last) wins."""
    main = importlib.import_module(f"launch.{name}").main
    first, from_file = next(iter(expect)), list(expect)[-1]
    (work / "w.yaml").write_text(yaml.safe_dump({first: 1, from_file: 5}))
    code, out, err = run_main(main, ["--print-config", "--config", "w.yaml", *argv], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert {k: printed[k] for k in expect} == expect
    (work / "w.yaml").write_text(out)  # what it prints is a --config that gives the same
    code, again, err = run_main(main, ["--print-config", "--config", "w.yaml"], capsys)
    assert code == 0 and again == out, err
    assert sorted(p.name for p in work.iterdir()) == ["w.yaml"]  # nothing was written


@pytest.mark.parametrize("name,argv,needle", [
    ("bench_generate", ["model.bogus=1"], "unknown config key 'model.bogus'; allowed here: vocab, hidden"),
    ("bench_generate", ["--config", "demo"], "unknown config key 'model.path'"),
    ("bench_generate", ["batch=two"], "batch must be of type int, got 'two'"),
    ("bench_generate", ["depths=[512, 0]"], "depths=[512, 0] must be a positive integer"),
    ("bench_generate", ["ragged_min=600"], "ragged_min=600 exceeds ragged_max=512"),
    ("bench_generate", ["--repeats", "0"], "repeats=0 must be a positive integer"),
    ("bench_train", ["model.heads=3"], "model.heads=3 does not divide model.hidden=512"),
    ("bench_train", ["learning_rate=0"], "learning_rate=0.0 must be > 0"),
    ("bench_train", ["--warmup", "-1"], "warmup=-1 must be >= 0"),
    ("build_demo", ["--languages", "en,fr"], "no language 'fr'; choose from en, zh"),
    ("build_demo", ["languages=[]"], "languages is empty"),
    ("build_demo", ["--epochs", "0"], "epochs=0 must be a positive integer"),
    ("build_demo", ["--config", "nowhere.yaml"], "config file nowhere.yaml not found"),
])
def test_own_config_mistakes_are_one_line_naming_the_key(name, argv, needle, work, capsys):
    code, out, err = run_main(importlib.import_module(f"launch.{name}").main, [*argv, "--print-config"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    if "unknown config key" in needle:
        assert "it reads no run config" in err
    assert not any(work.iterdir())


def test_build_demo_defaults_are_the_shipped_models_recipe(work, capsys):
    code, out, err = run_main(build_demo.main, ["--print-config"], capsys)
    assert code == 0, err
    printed = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in yaml.safe_load(out).items()})
    info = shipped.build_info()
    assert printed.warmup() == info["warmup"] and list(printed.languages) == info["languages"]


@pytest.mark.parametrize("name", sorted(set(LAUNCHERS) - set(OWN_CONFIG)))
def test_print_config_prints_the_effective_yaml_and_exits(name, work, capsys):
    main = importlib.import_module(f"launch.{name}").main
    argv = ["--print-config", "--config", "demo", "train.lora.rank=4", "mesh.rules.vocab=[fsdp, tensor]"]
    argv += {"train": ["--role", "gen", "--input", "x", "--output", "y"], "generate": ["--input", "x",
             "--output", "y"], "evaluate": ["--input", "x", "--output", "y"], "export": ["--output", "y"],
             "collect": ["--output", "y"], "length_control": ["--input", "x", "--output", "y"]}.get(name, [])
    code, out, err = run_main(main, argv, capsys)
    assert code == 0, err
    printed, *others = yaml.safe_load_all(out)
    if name == "bench_sharding":  # then its bench section, as --bench would read it
        (bench,) = others
        (work / "b.yaml").write_text(yaml.safe_dump(bench))
        assert bench == dataclasses.asdict(load_bench(str(work / "b.yaml")))
        (work / "b.yaml").unlink()
    else:
        assert others == []
    assert printed["train"]["lora"]["rank"] == 4 and printed["mesh"]["rules"] == {"vocab": ["fsdp", "tensor"]}
    assert printed["language"] == "en"  # from configs/demo.yaml
    assert from_dict(printed).to_dict() == printed  # it loads back as the same config
    assert not any(work.iterdir())  # nothing was written


FLAG_KEYS = {  # launcher -> (its flags, the config key they set, the value)
    "iterate": (["--model", "M", "--output", "O"], "output_dir", "O"),
    "train": (["--role", "gen", "--input", "x", "--output", "y", "--model", "M"], "model.path", "M"),
    "generate": (["--input", "x", "--output", "y", "--model", "M"], "model.path", "M"),
    "length_control": (["--input", "x", "--output", "y", "--model", "M"], "model.path", "M"),
    "evaluate": (["--input", "x", "--output", "y", "--model", "M"], "model.path", "M"),
    "export": (["--output", "y", "--model", "M"], "model.path", "M"),
    "collect": (["--input", "R", "--output", "y"], "output_dir", "R"),
    "bench_sharding": (["--model", "M"], "model.path", ""),  # --model is bench.model: the run's stays
}


@pytest.mark.parametrize("name", sorted(FLAG_KEYS))
def test_print_config_shows_what_the_flags_set_and_the_config_is_always_checked(name, work, capsys):
    """--model/--input/--output given as flags are in the printed config, and with them
    given a bad override is still refused (no launcher skips loading its config)."""
    main = importlib.import_module(f"launch.{name}").main
    flags, key, value = FLAG_KEYS[name]
    code, out, err = run_main(main, [*flags, "--print-config"], capsys)
    assert code == 0, err
    printed = next(yaml.safe_load_all(out))
    for part in key.split("."):
        printed = printed[part]
    assert printed == value
    code, out, err = run_main(main, [*flags, "engine.slotz=4"], capsys)
    assert code == 2 and out == "" and err.startswith("error: unknown config key 'engine.slotz'"), err
    assert not any(work.iterdir())


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

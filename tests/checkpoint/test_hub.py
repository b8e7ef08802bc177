"""Hub ids (`org/name`) resolve to their snapshot in the local Hugging Face cache, wherever
HF_HUB_CACHE or HF_HOME put it; one neither cached nor reachable fails in one line."""

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest

from cli_fixtures import run_main
from hf_fixtures import add_tokenizer, make_checkpoint
from launch import cli, export
from selflengthen_jax.checkpoint import hub
from selflengthen_jax.checkpoint.hf_import import CheckpointError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = "import sys; from selflengthen_jax.checkpoint.hub import resolve_model; print(resolve_model(sys.argv[1]))"
ROOT = Path(__file__).parents[2]


def hub_cache(cache: Path, repo: str, files: Path) -> Path:
    """`files` laid out as huggingface_hub caches a download: blobs/<sha256>, a snapshot of
    relative symlinks named by commit, and refs/main naming that commit."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for f in files.iterdir():
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return add_tokenizer(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "llama"))


def resolve_in_process_with(env: dict[str, str], name: str) -> subprocess.CompletedProcess:
    """resolve_model in a fresh interpreter, so huggingface_hub reads these variables at import."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    return subprocess.run([sys.executable, "-c", RESOLVE, name], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9", **env},
                          timeout=120)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_cached_hub_id_resolves_to_its_snapshot_without_the_network(variable, checkpoint, tmp_path):
    cache = tmp_path / "hf" if variable == "HF_HUB_CACHE" else tmp_path / "hf" / "hub"
    snapshot = hub_cache(cache, "org/tiny", checkpoint)
    run = resolve_in_process_with({variable: str(tmp_path / "hf")}, "org/tiny")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(snapshot)


def test_an_uncached_unreachable_hub_id_is_one_line_naming_the_cache(tmp_path):
    run = resolve_in_process_with({"HF_HUB_CACHE": str(tmp_path / "empty")}, "org/absent")
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert "org/absent is not a local directory, and as a Hugging Face hub id it is not in the cache" in last
    assert str(tmp_path / "empty") in last and "downloading it failed" in last and "ConnectError" in last


def test_offline_an_uncached_hub_id_is_refused_without_trying(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the cache .*HF_HUB_OFFLINE is set"):
        hub.resolve_model("org/absent")


def test_an_uncached_hub_id_is_downloaded_without_pickles(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo_id, local_files_only=False, allow_patterns=None):
        calls.append((repo_id, local_files_only, allow_patterns))
        if local_files_only:
            raise hub.LocalEntryNotFoundError("not cached")
        return str(tmp_path / "downloaded")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    assert hub.resolve_model("org/new") == str(tmp_path / "downloaded")
    assert [c[:2] for c in calls] == [("org/new", True), ("org/new", False)]
    assert "*.safetensors" in calls[1][2] and not any("bin" in p or "pt" in p for p in calls[1][2])


def test_local_paths_are_never_looked_up(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("looked up a local path"))
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for name in ("org/model", str(tmp_path / "x"), "./org/y", "", "a/b/c"):
        assert hub.resolve_model(name) == name


def test_launchers_take_a_hub_id_for_model_path_and_export_from(checkpoint, tmp_path, monkeypatch, capsys):
    snapshot = hub_cache(tmp_path / "cache", "org/tiny", checkpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    cfg = cli.config(argparse.Namespace(config=None, overrides=["model.path=org/tiny"]))
    assert cfg.model.path == str(snapshot)
    code, out, err = run_main(export.main, ["--model", "org/tiny", "--output", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "config.json").is_file()


def test_bench_sharding_takes_a_hub_id_for_model_and_model_path(checkpoint, tmp_path, monkeypatch, capsys):
    """--model (bench.model) and model.path both resolve through the cache, and the
    measurement's setup reads the snapshot's architecture."""
    from launch import bench_sharding
    from selflengthen_jax.bench.sharding import load_bench, prepare
    import yaml

    snapshot = hub_cache(tmp_path / "cache", "org/tiny", checkpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the cache or nothing
    code, out, err = run_main(bench_sharding.main, ["--model", "org/tiny", "--print-config"], capsys)
    assert code == 0, err
    _, bench = yaml.safe_load_all(out)
    assert bench["model"] == str(snapshot)
    code, out, err = run_main(bench_sharding.main, ["model.path=org/tiny", "--print-config"], capsys)
    assert code == 0, err
    assert next(yaml.safe_load_all(out))["model"]["path"] == str(snapshot)
    cfg = cli.config(argparse.Namespace(config=None, overrides=["model.path=org/tiny"]))
    setup = prepare(cfg, load_bench(None, ["strategies=[dp]"]))
    assert setup.checkpoint == str(snapshot) and setup.model_cfg.num_layers == 2
    code, _, err = run_main(bench_sharding.main, ["--model", "org/absent"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: org/absent is not a local directory") and "HF_HUB_OFFLINE" in err


def test_evaluate_takes_a_hub_id_for_its_judge_model(checkpoint, tmp_path, monkeypatch):
    """--judge-model is checked at start-up in the cache's snapshot, like --model."""
    from selflengthen_jax.config import load_config
    from selflengthen_jax.eval.run import judge_choice

    hub_cache(tmp_path / "cache", "org/tiny", checkpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert judge_choice(load_config(), "org/tiny", None, None).model == "org/tiny"
    with pytest.raises(CheckpointError, match="org/absent is not a local directory"):
        judge_choice(load_config(), "org/absent", None, None)

"""A non-editable install works from any directory: configs, templates, seeds, the
demo corpus and the shipped demo model are package data, and `--config NAME`
resolves inside the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the built wheel; the dependencies come from this
    environment's site-packages, added as a plain path (so no editable finder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ in the tree it builds from.
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".v", "runs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("selflengthen_jax-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_package_comes_from_the_wheel_not_the_source_tree(installed, tmp_path):
    done = run(installed, tmp_path, "-c", "import selflengthen_jax, launch; "
               "print(selflengthen_jax.__file__); print(launch.__file__)")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        assert str(ROOT) not in line and "site-packages" in line


def test_demo_dry_run_from_another_directory(installed, tmp_path):
    done = run(installed, tmp_path, "-m", "launch.iterate", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fits" in done.stdout or "yes" in done.stdout
    assert not (tmp_path / "runs").exists()  # a dry run claims no output_dir


def test_shipped_configs_resolve_by_name(installed, tmp_path):
    done = run(installed, tmp_path, "-m", "launch.iterate", "--config", "qwen2-7b-instruct",
               "--dry-run", "plan.device=v5p", "plan.num_devices=8")
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_wheel_holds_the_demo_model_and_every_data_file(installed):
    done = run(installed, Path("/"), "-c", "\n".join([
        "from importlib.resources import files",
        "root = files('selflengthen_jax')",
        "for rel in ('configs/demo.yaml', 'pipeline/templates/en/extend.txt',",
        "            'pipeline/seeds/zh.jsonl', 'demo/corpus/en.jsonl',",
        "            'demo/model/model.safetensors.index.json', 'demo/model/tokenizer.json',",
        "            'demo/model/demo_build.json'):",
        "    assert root.joinpath(rel).is_file(), rel",
    ]))
    assert done.returncode == 0, done.stderr

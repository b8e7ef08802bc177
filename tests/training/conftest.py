"""Shared fixtures for training tests: one tiny Qwen2 checkpoint with a ChatML tokenizer.

The model (hidden 64, 2 layers, vocab 128) and its word-level tokenizer ("w0", "w1", ...)
are built once per session; records are random word sequences.
"""

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from hf_fixtures import add_tokenizer, make_checkpoint
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import MeshSection, load_config
from selflengthen_jax.parallel.mesh import make_mesh


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """Reuse compiled steps across tests that build the same step (e.g. resumed runs)."""
    settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {k: getattr(jax.config, k) for k in settings}
    for k, v in settings.items():
        jax.config.update(k, v)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    path = make_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2", vocab_size=128)
    return add_tokenizer(path, 128)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """The tiny model loaded once: path, cfg, params (single device), tokenizer."""
    cfg = read_config(tiny_dir)
    return types.SimpleNamespace(path=tiny_dir, cfg=cfg, params=load_params(tiny_dir, cfg),
                                 tok=load_tokenizer(tiny_dir))


def words(rng: np.random.Generator, n: int, vocab: int = 100) -> str:
    return " ".join(f"w{i}" for i in rng.integers(0, vocab, n))


@pytest.fixture
def records():
    """records(n, seed, response_words=(lo, hi)) -> random prompt/response records."""
    def make(n: int, seed: int = 0, response_words: tuple[int, int] = (5, 40)):
        rng = np.random.default_rng(seed)
        return [{"prompt": words(rng, int(rng.integers(2, 8))),
                 "response": words(rng, int(rng.integers(*response_words)))} for _ in range(n)]
    return make


@pytest.fixture
def write_jsonl():
    def write(path: Path, recs) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        return path
    return write


@pytest.fixture
def config(tiny_dir):
    """config("train.mode=full", ...) -> a Config for the tiny model with those overrides.

    remat is off (it only trades memory for compute, and compiles slower); launch.train's
    test runs the default (full remat).
    """
    def make(*overrides: str):
        base = [f"model.path={tiny_dir}", "train.cutoff_len=128", "train.log_every=1",
                "train.warmup_ratio=0.0", "train.remat=none"]
        return load_config(None, base + list(overrides))
    return make


@pytest.fixture(scope="session")
def one_device():
    return make_mesh(MeshSection(data=1), jax.devices()[:1])

"""The persistent compilation cache: on by default under the user's cache directory,
moved or turned off by one config key."""

from pathlib import Path

import jax
import pytest

from selflengthen_jax import compile_cache
from selflengthen_jax.config import ConfigError, load_config


def test_auto_lives_under_the_cache_directory_and_off_turns_it_off(monkeypatch, tmp_path):
    assert load_config().compilation_cache == "auto"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.resolve("auto") == tmp_path / "selflengthen_jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.resolve("auto") == Path.home() / ".cache" / "selflengthen_jax" / "xla"
    assert compile_cache.resolve("off") is None
    assert compile_cache.resolve("~/elsewhere") == Path.home() / "elsewhere"
    with pytest.raises(ConfigError, match="compilation_cache is empty"):
        load_config(None, ["compilation_cache="])


def test_enable_points_jax_at_the_directory(tmp_path):
    old = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert compile_cache.enable("off") is None and jax.config.jax_compilation_cache_dir is None
        target = tmp_path / "xla"
        assert compile_cache.enable(str(target)) == target and target.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(target)
        compile_cache.enable(str(tmp_path / "other"))  # one cache per process
        assert jax.config.jax_compilation_cache_dir == str(target)
    finally:
        jax.config.update("jax_compilation_cache_dir", old)

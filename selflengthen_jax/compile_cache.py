"""JAX's persistent compilation cache: compiled kernels kept on disk across runs.

A resumed or repeated run (the next iteration's process, a rerun after a crash, another
evaluation) then loads its prefill, decode and train-step executables instead of
compiling them again: minutes per kernel for a 7B model on a TPU slice. On by default
under the user's cache directory; `compilation_cache` in the run config moves it (a
path) or turns it off (`off`).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_dir() -> Path:
    """$XDG_CACHE_HOME/selflengthen_jax/xla, else ~/.cache/selflengthen_jax/xla."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "selflengthen_jax" / "xla"


def resolve(setting: str) -> Path | None:
    """The directory for a `compilation_cache` setting: "auto", "off" or a path."""
    if setting == "off":
        return None
    return default_dir() if setting == "auto" else Path(setting).expanduser()


def enable(setting: str) -> Path | None:
    """Point JAX's persistent cache at the setting's directory (created if missing);
    returns it, or None when off. A directory JAX was already given is left alone, so a
    process keeps one cache."""
    path = resolve(setting)
    if path is None or jax.config.jax_compilation_cache_dir:
        return path
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path

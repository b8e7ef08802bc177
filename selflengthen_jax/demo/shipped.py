"""Where the shipped demo model lives, and how a run with no model.path gets it.

The demo checkpoint is package data, built once by `python -m launch.build_demo`
(see `demo/build.py`), so every install runs the same model whatever its library
versions. `demo_build.json` is written last by the build: a directory without it is
not a finished model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from selflengthen_jax.config import Config, ConfigError

SHIPPED_DIR = Path(__file__).parent / "model"
BUILD_INFO = "demo_build.json"


def build_info(model_dir: str | Path = SHIPPED_DIR) -> dict:
    """The build record of a demo model directory (fingerprint, languages, recipe)."""
    path = Path(model_dir) / BUILD_INFO
    if not path.is_file():
        raise ConfigError(f"no finished demo model in {model_dir} ({BUILD_INFO} is missing): "
                          "rebuild it with `python -m launch.build_demo`, or set model.path")
    return json.loads(path.read_text(encoding="utf-8"))


def with_demo_model(cfg: Config) -> Config:
    """`cfg` itself when it names a model; else `cfg` on the shipped demo model, which
    must cover the configured language."""
    if cfg.model.path or cfg.model.preset:
        return cfg
    languages = build_info()["languages"]
    if cfg.language not in languages:
        raise ConfigError(f"the shipped demo model knows {languages}, not language={cfg.language}: "
                          f"build one with `python -m launch.build_demo --languages {cfg.language} "
                          f"--output DIR` and pass model.path=DIR")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(SHIPPED_DIR)))

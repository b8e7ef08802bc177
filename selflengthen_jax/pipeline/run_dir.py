"""An output directory belongs to one run config; reusing it for another is refused."""

from __future__ import annotations

import json
from pathlib import Path

from selflengthen_jax.config import Config
from selflengthen_jax.pipeline.store import atomic_write_json

RUN_FILE = "run_config.json"


def claim(cfg: Config, force: bool = False) -> Path:
    """Create output_dir (or resume it); refuse one written with a different config."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mine = cfg.to_dict()
    path = out / RUN_FILE
    if path.is_file() and not force:
        theirs = json.loads(path.read_text(encoding="utf-8"))
        if theirs != mine:
            diff = sorted(_diff(theirs, mine))
            raise ValueError(
                f"output_dir {out} holds another run (config differs at: {', '.join(diff[:8])}); "
                "choose another output_dir= or pass --force to take it over")
    atomic_write_json(path, mine)
    return out


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]

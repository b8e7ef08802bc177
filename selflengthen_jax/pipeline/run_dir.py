"""An output directory belongs to one run config; reusing it for another is refused.

`check` only reads, so start-up can refuse a taken directory before any work; `claim`
writes the record once every start-up check has passed, so a failed start leaves the
directory as it found it and the corrected command is not refused as "another run".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selflengthen_jax.outputs import RUN_FILE
from selflengthen_jax.pipeline.store import atomic_write_json


def check(out: str | Path, mine: dict[str, Any], force: bool = False, name: str = RUN_FILE) -> Path:
    """Refuse `out` when its `name` record is another run's (unless `force`); writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file; give a directory path")
    path = out / name
    if path.exists() and not force:
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not a run record (not JSON); pass --force to take "
                             f"{out} over") from None
        if theirs != mine:
            diff = sorted(_diff(theirs, mine))
            raise ValueError(
                f"output directory {out} holds another run (config differs at: {', '.join(diff[:8])}); "
                "choose another output directory or pass --force to take it over")
    return out


def claim(out: str | Path, mine: dict[str, Any], force: bool = False, name: str = RUN_FILE) -> Path:
    """`check`, then create `out` (or resume it) and record `mine` as its owner."""
    out = check(out, mine, force, name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / name, mine)
    return out


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]

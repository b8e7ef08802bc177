"""An output directory belongs to one run config; reusing it for another is refused.

`check` only reads, so start-up can refuse a taken directory before any work; `claim`
writes the record once every start-up check has passed, so a failed start leaves the
directory as it found it and the corrected command is not refused as "another run".
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from selflengthen_jax.outputs import RUN_FILE
from selflengthen_jax.parallel import hosts
from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline.store import atomic_write_json


def check(out: str | AnyPath, mine: dict[str, Any], force: bool = False, name: str = RUN_FILE) -> AnyPath:
    """Refuse `out` when its `name` record is another run's (unless `force`); writes nothing."""
    out = as_path(out)
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


def claim(out: str | AnyPath, mine: dict[str, Any], force: bool = False,
          name: str = RUN_FILE) -> AnyPath:
    """`check`, then create `out` (or resume it) and record `mine` as its owner
    (process 0 writes; every process returns once it is written)."""
    out = check(out, mine, force, name)
    if hosts.index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / name, mine)
    hosts.barrier(f"claim {out}")
    return out


def check_shared(out: str | AnyPath) -> None:
    """On several processes, a local `out` must be one folder they all see (a shared file
    system), not each host's own disk: process 0 writes a token there and every process
    must read it back. The token is removed and a folder made for it too, so the check
    leaves `out` as it found it. (A bucket is shared by nature.)"""
    if hosts.count() == 1 or is_remote(out):
        return
    out = Path(out)
    nonce = hosts.gather(secrets.randbits(62))[0]  # process 0's, known to all
    token = out / f".shared-check-{nonce}"
    created = False
    if hosts.index() == 0:
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        token.write_text(str(nonce))
    hosts.barrier(f"shared check write {out}")
    try:
        seen = token.is_file() and token.read_text().strip() == str(nonce)
    except OSError:
        seen = False
    flags = hosts.gather(int(seen))
    hosts.barrier(f"shared check read {out}")
    if hosts.index() == 0:
        token.unlink(missing_ok=True)
        if created:
            out.rmdir()
    blind = [i for i, ok in enumerate(flags) if not ok]
    if blind:
        raise ValueError(f"output_dir {out} is not shared by all hosts: process(es) "
                         f"{', '.join(map(str, blind))} cannot see the file process 0 wrote there; "
                         "give a directory on a shared file system, or a gs:// bucket")


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]

"""Assemble the run's long data (`long.jsonl`) from finished iterations.

Each iteration `output_dir/iter_k/` leaves `initial.jsonl` (the Generator's answers)
and `extended.jsonl` (the Extender's lengthened ones), records with `id`,
`instruction` and `response`. Any set of iterations can be collected, so data from
iteration 1 is usable while iteration 2 runs. The loop writes each file atomically
once its phase is done, so a file that exists is finished. The loop's extra data rounds
(the base model's instructions answered by the final Generator,
`output_dir/collect/round_r/initial.jsonl`) are added when the whole run is collected. Ids become `<dir>/<file>/<id>` (e.g. `iter_2/extended/17-r0-e1`,
`collect/round_3/initial/c3-00007-r1`): unique
across files and the same whichever iterations are picked. Exact repeats of
(instruction, response) are dropped, keeping the first in iteration, then file order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from selflengthen_jax.paths import AnyPath
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline.prompt_file import numbered_records
from selflengthen_jax.pipeline.store import atomic_write_text

SOURCES: tuple[str, ...] = ("initial", "extended")
EXTRA_DIR = "collect"
FIELDS: tuple[str, ...] = ("id", "instruction", "response")
_ITER_DIR = re.compile(r"iter_(\d+)")
_ROUND_DIR = re.compile(r"round_(\d+)")


def iteration_dir(run_dir: str | AnyPath, k: int) -> AnyPath:
    return as_path(run_dir) / f"iter_{k}"


def finished_iterations(run_dir: str | Path) -> list[int]:
    """Iterations (ascending) whose directory holds both output files."""
    run_dir = as_path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    found = [int(m.group(1)) for d in run_dir.iterdir() if (m := _ITER_DIR.fullmatch(d.name))]
    return sorted(k for k in found
                  if all((iteration_dir(run_dir, k) / f"{s}.jsonl").is_file() for s in SOURCES))


def read_source(path: Path, iteration: int | None, scope: str | None = None) -> list[dict]:
    """One file's records, re-keyed `<scope>/<file>/<id>` (scope: the file's directory
    name unless given); a bad line raises naming it."""
    scope = path.parent.name if scope is None else scope
    out = []
    for where, _, record in numbered_records(path):
        bad = [f for f in FIELDS if not isinstance(record.get(f), str)]
        if bad:
            raise ValueError(f"{where}: missing or non-string field(s) {', '.join(bad)}")
        out.append({**record, "id": f"{scope}/{path.stem}/{record['id']}",
                    "iteration": iteration, "source": path.stem})
    return out


def read_iteration(run_dir: str | Path, k: int) -> list[dict]:
    """Both files of iteration k; a missing file or bad line raises."""
    out = []
    for source in SOURCES:
        path = iteration_dir(run_dir, k) / f"{source}.jsonl"
        if not path.is_file():
            raise ValueError(f"iteration {k} is not finished: {path} does not exist")
        out += read_source(path, k)
    return out


def collect_round_dir(run_dir: str | AnyPath, r: int) -> AnyPath:
    return as_path(run_dir) / EXTRA_DIR / f"round_{r}"


def read_extra(run_dir: str | Path) -> list[dict]:
    """The finished extra rounds' answers, in round order (`iteration` is None for them);
    ids become `collect/round_r/initial/<id>`."""
    extra = as_path(run_dir) / EXTRA_DIR
    found = sorted(int(m.group(1)) for d in extra.iterdir()
                   if (m := _ROUND_DIR.fullmatch(d.name))) if extra.is_dir() else []
    paths = [collect_round_dir(run_dir, r) / "initial.jsonl" for r in found]
    return [record for path in paths if path.is_file()
            for record in read_source(path, None, f"{EXTRA_DIR}/{path.parent.name}")]


def dedup(records: Iterable[dict]) -> tuple[list[dict], int]:
    """First record per exact (instruction, response); returns (kept, dropped count)."""
    seen: set[tuple[str, str]] = set()
    kept, dropped = [], 0
    for record in records:
        key = (record["instruction"], record["response"])
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(record)
    return kept, dropped


def collect_long(run_dir: str | Path, iterations: Sequence[int] | None = None) -> tuple[list[dict], int]:
    """Records of `iterations`, deduplicated; default: every finished iteration plus the
    extra round.

    Returns (records, duplicates dropped). Every file is read and checked before
    anything is returned, so a bad line never yields a partial long.jsonl.
    """
    chosen = finished_iterations(run_dir) if iterations is None else sorted(set(iterations))
    if not chosen:
        raise ValueError(f"{run_dir} has no finished iteration "
                         f"(iter_k/ with {' and '.join(s + '.jsonl' for s in SOURCES)})")
    records = [record for k in chosen for record in read_iteration(run_dir, k)]
    return dedup(records + (read_extra(run_dir) if iterations is None else []))


def write_long(run_dir: str | Path, output: str | Path,
               iterations: Sequence[int] | None = None) -> tuple[int, int]:
    """`collect_long` written atomically to `output`; returns (written, dropped)."""
    records, dropped = collect_long(run_dir, iterations)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records), dropped

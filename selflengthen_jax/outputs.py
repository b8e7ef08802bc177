"""Where a command may write: one rule for every launcher's outputs.

Every output path is checked before any compute starts, so a typo costs a second and
never a run: it must be of the right kind (file or directory), writable, apart from the
command's inputs, and outside another run's directory. A directory is only ever replaced
by its own writer's finished `<name>.partial`, and only when everything already in it is
something that writer makes; a directory holding anything else is refused, not removed.
A `gs://` output is checked the same way where a bucket can be: its bucket must exist
and answer (one line naming what is wrong: no endpoint, no credentials, no bucket), and
it must not be, lie in or hold one of the inputs.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from selflengthen_jax.paths import AnyPath, check_bucket, is_remote
from selflengthen_jax.paths import path as as_path

RUN_FILE = "run_config.json"  # marks the output_dir of a Self-Lengthen run (launch.iterate)
PARTIAL = ".partial"


class OutputError(ValueError):
    """An output path would destroy something, or cannot be written."""


def _existing_ancestor(path: Path) -> Path:
    node = path.absolute()
    while not node.exists() and node != node.parent:
        node = node.parent
    return node


def _check_writable(path: Path, what: str) -> None:
    """`path` (or the directory it will be created in) exists as a directory we can write."""
    base = path if path.is_dir() else _existing_ancestor(path.parent)
    if not base.is_dir():
        raise OutputError(f"{what} {path}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {base} is not writable")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def run_dir_holding(path: str | Path) -> Path | None:
    """The nearest directory at or above `path` that is a run's output_dir, if any."""
    node = Path(path).resolve()
    for d in (node, *node.parents):
        if (d / RUN_FILE).is_file():
            return d
    return None


def _check_not_in_run(path: Path, what: str, own_run: str | Path | None) -> None:
    run = run_dir_holding(path)
    if run is not None and (own_run is None or run != Path(own_run).resolve()):
        raise OutputError(f"{what} {path} lies inside the run directory {run}, whose files its "
                          "loop writes; choose a path outside it")


def _check_remote(path: str, inputs: Iterable[str | Path], what: str) -> AnyPath:
    """A bucket output: a bucket that exists and answers, apart from every input."""
    check_bucket(path, what)
    mine = path.rstrip("/")
    for source in map(os.fspath, inputs):
        theirs = source.rstrip("/")
        if mine == theirs or mine.startswith(theirs + "/") or theirs.startswith(mine + "/"):
            raise OutputError(f"{what} {path} overlaps the input {source}; choose a path apart from it")
    return as_path(path)


def check_file(path: str | AnyPath, inputs: Iterable[str | Path] = (), what: str = "--output",
               own_run: str | Path | None = None) -> AnyPath:
    """An output file: not a directory, in a writable place, neither one of `inputs`
    nor inside an input directory, not inside a run directory (other than `own_run`).
    Returns the path."""
    if is_remote(path):
        remote = _check_remote(os.fspath(path), inputs, what)
        if remote.is_dir():
            raise OutputError(f"{what} {path} is a folder in the bucket; give a file path")
        return remote
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} is not writable")
    _check_writable(path, what)
    resolved = path.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if resolved == src:
            raise OutputError(f"{what} {path} is also an input ({source}); writing it would destroy "
                              "the input: choose another output")
        if src.is_dir() and src in resolved.parents:
            raise OutputError(f"{what} {path} lies inside the input directory {source}; choose a "
                              "path outside it")
    _check_not_in_run(path, what, own_run)
    return path


def check_dir(path: str | AnyPath, inputs: Iterable[str | Path] = (), what: str = "--output",
              own_run: str | Path | None = None) -> AnyPath:
    """An output directory: not a file, in a writable place, neither inside nor around
    any of `inputs`, not inside a run directory (other than `own_run`). Returns the path."""
    if is_remote(path):
        remote = _check_remote(os.fspath(path), inputs, what)
        if remote.is_file():
            raise OutputError(f"{what} {path} is an object in the bucket; give a folder path")
        return remote
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a directory path")
    _check_writable(path, what)
    resolved = path.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if _inside(src, resolved) or _inside(resolved, src):
            raise OutputError(f"{what} {path} overlaps the input {source}; choose a directory "
                              "apart from it")
    _check_not_in_run(path, what, own_run)
    return path


def foreign_entries(directory: Path, names: Sequence[str]) -> list[str]:
    """Entries of `directory` that match none of the writer's name patterns."""
    return sorted(e.name for e in directory.iterdir()
                  if not any(fnmatch.fnmatchcase(e.name, n) for n in names))


def check_replaceable(path: str | Path, names: Sequence[str], what: str = "--to") -> None:
    """`path` is absent, or a directory holding only what this writer makes (`names`,
    fnmatch patterns), so replacing it loses nothing that was not ours."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a directory path")
    foreign = foreign_entries(path, names)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputError(f"{what} {path} already holds files this command did not write ({shown}); "
                          "refusing to replace it: choose an empty or new directory")


def _remove_ours(path: Path) -> None:
    """Remove a directory `check_replaceable` accepted: entry by entry, then the directory."""
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    path.rmdir()


def fresh_partial(out: str | Path, names: Sequence[str]) -> Path:
    """The empty `<out>.partial` a writer fills; a stale one of its own (from a killed run)
    is cleared first, anything else there is refused."""
    out = Path(out).absolute()
    partial = out.with_name(out.name + PARTIAL)
    check_replaceable(partial, names, what="partial output")
    if partial.exists():
        _remove_ours(partial)
    return partial


def replace_dir(partial: Path, out: str | Path, names: Sequence[str]) -> Path:
    """Move the finished `partial` to `out`, removing an older `out` only if it holds
    nothing but `names`."""
    out = Path(out).absolute()
    check_replaceable(out, names)
    if out.exists():
        _remove_ours(out)
    partial.rename(out)
    return out

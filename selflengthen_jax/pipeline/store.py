"""Durable record storage: the pipeline's resume mechanism, on local disk or in a bucket.

On local disk every finished sample is appended (and fsynced) to a JSONL file as soon
as it exists, and a phase is marked done with an atomically written marker file. After
a crash the only possible damage is a torn final line, which is dropped; anything
else unreadable is reported, never silently skipped. A file that is not one of ours
(lines that are not our records) is refused whole, never cut or appended to.

In a bucket (`gs://`, see `selflengthen_jax.paths`) there is no append and no rename,
but every object is written whole or not at all. So a store there is a folder
`<name>.parts/` of immutable batch objects (`000000.jsonl`, `000001.jsonl`, ...), each
written once with the records appended since the last one (`flush`: every
`REMOTE_BATCH` records, after `REMOTE_SECONDS`, and when the writer is done); a crash
loses at most the unflushed batch, which a resumed run regenerates. Markers and whole
files are single objects.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Sequence

from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path

_PHASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
REMOTE_BATCH = 32      # records per object in a bucket store
REMOTE_SECONDS = 10.0  # ... or fewer, once this long has passed since the last object
PARTS = ".parts"
_PART = re.compile(r"\d{6}\.jsonl")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable, not only the file contents.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | AnyPath, text: str) -> None:
    """Write `text` so readers see the old file or the new one, never a mix:
    temp file in the same directory, fsync, rename over, fsync the directory
    (in a bucket: one object, which GCS writes whole or not at all)."""
    if is_remote(path):
        as_path(path).write_bytes(text.encode("utf-8"))
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | AnyPath, obj: Any) -> None:
    """`atomic_write_text` of `obj` as indented UTF-8 JSON."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


class _Unreadable(ValueError):
    """A line that is not UTF-8 JSON at all (as opposed to JSON of the wrong shape)."""


def _decode_object(raw: bytes, where: str) -> dict:
    """One JSONL line as a dict, or ValueError saying where and why."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _Unreadable(f"{where}: not valid UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise _Unreadable(f"{where}: invalid JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _torn(raw: bytes) -> bool:
    """Whether `raw` can be the start of a line `append` wrote (a JSON object)."""
    return raw.lstrip().startswith(b'{"')


class JsonlStore:
    """Append-only JSONL file of dict records, each with a unique string "id" and the
    store's `fields`.

    Opening reads what a previous run left; a torn last line (no newline, or not
    JSON) that starts like one of our records is the trace of a crash mid-append, so
    it is dropped with a warning and cut from the file. Any other bad line, or a
    record without `fields` (a file some other program wrote), raises ValueError
    naming its line, and the file is left as it was.
    """

    def __init__(self, path: str | AnyPath, *, fsync: bool = True, fields: Sequence[str] = ()) -> None:
        self.remote = is_remote(path)
        self.path = as_path(path)
        self.fsync = fsync
        self.fields = tuple(fields)
        self._records: dict[str, dict] = {}
        self._pending: list[str] = []  # bucket store: lines not yet in an object
        self._next_part = 0
        self._flushed_at = time.monotonic()
        if self.remote:
            self._load_parts()
            return
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a directory; give a file path")
        if self.path.exists():
            self._load()

    @classmethod
    def open(cls, path: str | AnyPath, *, fsync: bool = True, fields: Sequence[str] = ()) -> JsonlStore:
        """Open (or prepare to create) the store at `path`."""
        return cls(path, fsync=fsync, fields=fields)

    @property
    def parts(self) -> AnyPath:
        """The folder of batch objects of a bucket store."""
        return self.path.parent / (self.path.name + PARTS)

    def _load_parts(self) -> None:
        """Every batch object, in order; objects are whole, so any bad line is not ours."""
        if not self.parts.is_dir():
            return
        names = sorted(p.name for p in self.parts.iterdir() if _PART.fullmatch(p.name))
        for name in names:
            data = (self.parts / name).read_bytes()
            for i, raw in enumerate(data.split(b"\n")):
                if raw.strip():
                    where = f"{self.parts / name}:{i + 1}"
                    try:
                        record = _decode_object(raw, where)
                    except _Unreadable as error:
                        raise ValueError(f"{error}; not an object this command wrote, left as it is: "
                                         "choose another output") from None
                    self._remember(record, where)
        if names:
            self._next_part = int(names[-1][:6]) + 1

    def _load(self) -> None:
        data = self.path.read_bytes()
        body_end = data.rfind(b"\n") + 1  # everything up to the last newline
        lines = data[:body_end].split(b"\n")[:-1]
        last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
        has_tail = body_end < len(data)
        offset = 0
        for i, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            where = f"{self.path}:{i + 1}"
            try:
                record = _decode_object(raw, where)
            except _Unreadable as error:
                if i != last or has_tail or not _torn(raw):
                    raise ValueError(f"{error}; not a file this command wrote, left as it is: "
                                     "choose another output") from None
                self._drop_torn(where, start)
                return
            self._remember(record, where)
        if has_tail:
            if not _torn(data[body_end:]):
                raise ValueError(f"{self.path}:{len(lines) + 1}: not a record this command wrote; "
                                 "the file is left as it is: choose another output")
            self._drop_torn(f"{self.path}:{len(lines) + 1}", body_end)

    def _drop_torn(self, where: str, start: int) -> None:
        """Cut the file at `start`, where an interrupted append left a partial line."""
        message = f"{where}: dropping torn last line left by an interrupted write"
        warnings.warn(message, stacklevel=4)
        with open(self.path, "r+b") as handle:
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())

    def _remember(self, record: dict, where: str) -> None:
        key = record.get("id")
        if not isinstance(key, str):
            raise ValueError(f"{where}: record needs a string 'id', got {key!r}")
        missing = [f for f in self.fields if f not in record]
        if missing:
            raise ValueError(f"{where}: not a record this command wrote (no {', '.join(missing)}); "
                             "the file is left as it is: choose another output")
        if key in self._records:
            raise ValueError(f"{where}: duplicate id {key!r}")
        self._records[key] = record

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def ids(self) -> list[str]:
        """Record ids in file order."""
        return list(self._records)

    def records(self) -> list[dict]:
        """Records in file order."""
        return list(self._records.values())

    def append(self, record: dict) -> None:
        """Write `record` as one line (fsynced unless disabled) and remember it.

        The stored form is the JSON round trip, so a fresh run and a resumed one
        see identical records (e.g. tuples become lists in both).
        """
        if not isinstance(record, dict):
            raise ValueError(f"{self.path}: records must be dicts, got {type(record).__name__}")
        line = json.dumps(record, ensure_ascii=False)
        stored = json.loads(line)
        self._remember(stored, f"{self.path}: append")
        if self.remote:
            self._pending.append(line)
            if (len(self._pending) >= REMOTE_BATCH
                    or time.monotonic() - self._flushed_at >= REMOTE_SECONDS):
                self.flush()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(line.encode("utf-8") + b"\n")
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
        except BaseException:
            del self._records[stored["id"]]
            raise

    def flush(self) -> None:
        """Bucket store: write the records appended since the last object as one new
        object (a no-op on local disk, where each append is already durable)."""
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            target = self.parts / f"{self._next_part:06d}.jsonl"
            target.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
        except BaseException:
            for line in lines:
                self._records.pop(json.loads(line)["id"], None)
            raise
        self._next_part += 1
        self._flushed_at = time.monotonic()


def _marker_path(directory: str | AnyPath, phase: str) -> AnyPath:
    if not _PHASE.fullmatch(phase):
        raise ValueError(f"phase name {phase!r} must be letters, digits, '_', '.', '-'")
    return as_path(directory) / f"{phase}.done"


def mark_done(directory: str | AnyPath, phase: str, info: dict) -> None:
    """Atomically record that `phase` finished, with `info` (counts, settings)."""
    atomic_write_json(_marker_path(directory, phase), info)


def is_done(directory: str | AnyPath, phase: str) -> bool:
    """Whether `mark_done` was called for `phase` in `directory`."""
    return _marker_path(directory, phase).is_file()


def read_marker(directory: str | AnyPath, phase: str) -> dict | None:
    """The info saved by `mark_done`, or None when the phase is not done."""
    path = _marker_path(directory, phase)
    if not path.is_file():
        return None
    return _decode_object(path.read_bytes().strip(), str(path))


def read_jsonl(path: str | AnyPath, required_fields: Iterable[str] = ()) -> list[dict]:
    """Strictly read a user-supplied JSONL file: every non-empty line must be a
    JSON object holding `required_fields`. Problems raise ValueError with the path
    and 1-based line number, before any work is done on the records."""
    path = as_path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark from some editors
        data = data[3:]
    required = tuple(required_fields)
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        record = _decode_object(raw, where)
        missing = [field for field in required if field not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        records.append(record)
    return records


def check_rewritable(path: str | Path, fields: Sequence[str]) -> None:
    """Before a whole-file rewrite of `path`: absent, or every line one of our records
    (a JSON object with `fields`); a file someone else wrote is refused, not replaced."""
    path = Path(path)
    if not path.exists():
        return
    try:
        read_jsonl(path, fields)
    except ValueError as error:
        raise ValueError(f"{error}: {path} exists and is not a file this command wrote; "
                         "refusing to replace it: choose another output") from None

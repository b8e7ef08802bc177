"""A full disk (ENOSPC) never leaves a half-written file that looks complete."""

import errno
import json

import pytest

from selflengthen_jax.pipeline import store


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "marker.json"
    store.atomic_write_json(path, {"v": 1})
    monkeypatch.setattr(store.os, "fsync", enospc)
    with pytest.raises(OSError, match="No space"):
        store.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker.json"]


def test_marker_is_not_written_when_the_disk_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(store.os, "fsync", enospc)
    with pytest.raises(OSError):
        store.mark_done(tmp_path, "initial", {"records": 3})
    monkeypatch.undo()
    assert not store.is_done(tmp_path, "initial")


def test_a_torn_append_is_dropped_on_reopen(tmp_path, monkeypatch):
    path = tmp_path / "cache.jsonl"
    s = store.JsonlStore(path)
    s.append({"id": "a", "text": "kept"})
    real_open = open

    class Torn:
        """A file that writes half the line, then hits ENOSPC."""
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            enospc()

    monkeypatch.setattr("builtins.open", lambda p, m="r", *a, **k: Torn(real_open(p, m, *a, **k))
                        if str(p) == str(path) and "a" in m else real_open(p, m, *a, **k))
    with pytest.raises(OSError):
        s.append({"id": "b", "text": "lost"})
    assert "b" not in s
    monkeypatch.undo()
    with pytest.warns(UserWarning):
        reopened = store.JsonlStore(path)
    assert reopened.ids() == ["a"]
    assert path.read_bytes().endswith(b"\n")

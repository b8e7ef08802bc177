"""Specification of durable storage: atomic writes, resumable JSONL, phase markers,
strict input reading."""

import json

import pytest

from selflengthen_jax.pipeline.store import (
    JsonlStore,
    atomic_write_json,
    atomic_write_text,
    is_done,
    mark_done,
    read_jsonl,
    read_marker,
)


def line(record):
    return json.dumps(record, ensure_ascii=False) + "\n"


# --- atomic writes --------------------------------------------------------------------


def test_atomic_write_creates_and_replaces_leaving_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "dir" / "out.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_failed_atomic_write_keeps_the_old_file_and_no_temp_files(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # type: ignore[arg-type]
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_json_round_trips_unicode(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"text": "长文", "n": [1, 2]})
    assert (tmp_path / "x.json").read_text(encoding="utf-8").count("长文") == 1
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == {
        "text": "长文",
        "n": [1, 2],
    }


# --- JsonlStore: normal use -----------------------------------------------------------------


def test_new_store_is_empty_and_creates_nothing_until_an_append(tmp_path):
    store = JsonlStore.open(tmp_path / "sub" / "data.jsonl")
    assert len(store) == 0 and store.ids() == [] and store.records() == []
    assert not (tmp_path / "sub" / "data.jsonl").exists()


@pytest.mark.parametrize("fsync", [True, False])
def test_appended_records_survive_a_reopen_in_order(tmp_path, fsync):
    path = tmp_path / "data.jsonl"
    store = JsonlStore.open(path, fsync=fsync)
    store.append({"id": "b", "text": "长文"})
    store.append({"id": "a", "text": "long"})
    assert "b" in store and "c" not in store and len(store) == 2
    again = JsonlStore.open(path)
    assert again.ids() == ["b", "a"]
    assert again.records() == [{"id": "b", "text": "长文"}, {"id": "a", "text": "long"}]
    assert path.read_text(encoding="utf-8") == line({"id": "b", "text": "长文"}) + line(
        {"id": "a", "text": "long"}
    )


def test_records_are_kept_in_their_json_form(tmp_path):
    store = JsonlStore(tmp_path / "data.jsonl")
    store.append({"id": "a", "pair": (1, 2)})
    assert store.records() == [{"id": "a", "pair": [1, 2]}]
    assert JsonlStore(tmp_path / "data.jsonl").records() == store.records()


def test_duplicate_ids_are_rejected_without_writing(tmp_path):
    path = tmp_path / "data.jsonl"
    store = JsonlStore(path)
    store.append({"id": "a"})
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        store.append({"id": "a", "other": 1})
    assert path.read_text(encoding="utf-8") == line({"id": "a"})
    assert len(store) == 1


@pytest.mark.parametrize("record", [{"text": "no id"}, {"id": 7}, ["id", "a"]])
def test_records_need_a_string_id(tmp_path, record):
    store = JsonlStore(tmp_path / "data.jsonl")
    with pytest.raises(ValueError):
        store.append(record)
    assert len(store) == 0
    assert not (tmp_path / "data.jsonl").exists()


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(line({"id": "a"}) + "\n  \n" + line({"id": "b"}), encoding="utf-8")
    assert JsonlStore(path).ids() == ["a", "b"]


# --- JsonlStore: crash recovery ---------------------------------------------------------------

GOOD = line({"id": "a", "text": "one"}) + line({"id": "b", "text": "two"})


@pytest.mark.parametrize(
    "torn",
    [
        '{"id": "c", "te',  # cut mid-record
        '{"id": "c"}',  # complete JSON but its newline never made it
        '{"id": "c", "text": "\xe9',  # cut inside a multi-byte character (see below)
    ],
)
def test_torn_last_line_is_dropped_and_cut_from_the_file(tmp_path, torn):
    path = tmp_path / "data.jsonl"
    raw = torn.encode("utf-8")
    if "\xe9" in torn:
        raw = raw[:-1]  # leave half of the two-byte UTF-8 sequence
    path.write_bytes(GOOD.encode("utf-8") + raw)
    with pytest.warns(UserWarning, match=r"data\.jsonl:3: dropping torn last line"):
        store = JsonlStore(path)
    assert store.ids() == ["a", "b"]
    assert path.read_text(encoding="utf-8") == GOOD
    store.append({"id": "c"})
    assert JsonlStore(path).ids() == ["a", "b", "c"]


@pytest.mark.parametrize("tail", ["not json at all\n", "not json, no newline"])
def test_a_last_line_that_is_not_our_record_is_refused_and_kept(tmp_path, tail):
    path = tmp_path / "data.jsonl"
    path.write_text(GOOD + tail, encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.jsonl:3: .*not .* this command wrote"):
        JsonlStore(path)
    assert path.read_text(encoding="utf-8") == GOOD + tail


def test_a_text_file_that_is_not_ours_is_refused_not_truncated(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes", encoding="utf-8")
    with pytest.raises(ValueError, match="notes.txt:1"):
        JsonlStore(path)
    assert path.read_text(encoding="utf-8") == "my notes"


def test_records_without_the_store_fields_are_refused(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(line({"id": "a", "prompt": "p"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"prompts\.jsonl:1: not a record this command wrote \(no response\)"):
        JsonlStore(path, fields=("response",))
    assert JsonlStore(path, fields=("prompt",)).ids() == ["a"]


def test_a_file_holding_only_a_torn_line_becomes_empty(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a"', encoding="utf-8")
    with pytest.warns(UserWarning, match=r"data\.jsonl:1"):
        assert len(JsonlStore(path)) == 0
    assert path.read_bytes() == b""


def test_a_bad_middle_line_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    content = line({"id": "a"}) + "{broken\n" + line({"id": "c"})
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.jsonl:2: invalid JSON"):
        JsonlStore(path)
    assert path.read_text(encoding="utf-8") == content


def test_a_bad_line_before_a_torn_tail_is_an_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(line({"id": "a"}) + "{broken\n" + '{"id": "c"', encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.jsonl:2: invalid JSON"):
        JsonlStore(path)


def test_non_utf8_middle_line_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(line({"id": "a"}).encode() + b'{"id": "\xff"}\n' + line({"id": "c"}).encode())
    with pytest.raises(ValueError, match=r"data\.jsonl:2: not valid UTF-8"):
        JsonlStore(path)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("[1, 2]\n", "expected a JSON object"),
        ('{"text": "no id"}\n', "record needs a string 'id'"),
        ('{"id": "a"}\n', "duplicate id 'a'"),
    ],
)
def test_wrongly_shaped_records_are_errors_even_at_the_end(tmp_path, bad, message):
    path = tmp_path / "data.jsonl"
    path.write_text(line({"id": "a"}) + bad, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"data\.jsonl:2: {message}"):
        JsonlStore(path)


# --- phase markers ------------------------------------------------------------------------------


def test_phase_markers(tmp_path):
    assert not is_done(tmp_path, "generate")
    assert read_marker(tmp_path, "generate") is None
    mark_done(tmp_path, "generate", {"records": 12, "language": "zh"})
    assert is_done(tmp_path, "generate")
    assert not is_done(tmp_path, "extend")
    assert read_marker(tmp_path, "generate") == {"records": 12, "language": "zh"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate.done"]


@pytest.mark.parametrize("phase", ["", "../escape", "a/b", ".hidden"])
def test_phase_names_are_plain(tmp_path, phase):
    with pytest.raises(ValueError, match="phase name"):
        mark_done(tmp_path, phase, {})


# --- read_jsonl ---------------------------------------------------------------------------


def test_read_jsonl_returns_objects_skipping_blank_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": "b", "x": 1}', encoding="utf-8")
    assert read_jsonl(path, required_fields=("prompt",)) == [
        {"prompt": "a"},
        {"prompt": "b", "x": 1},
    ]


def test_read_jsonl_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a"}\n')
    assert read_jsonl(path) == [{"prompt": "a"}]


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "a"}\n\n{"prompt": \n', r"in\.jsonl:3: invalid JSON"),
        (b'{"prompt": "a"}\n"just a string"\n', r"in\.jsonl:2: expected a JSON object, got str"),
        (b'{"prompt": "a"}\n{"other": 1}\n', r"in\.jsonl:2: missing field\(s\) prompt"),
        (b'{"prompt": "a"}\n{"prompt": "\xff"}\n', r"in\.jsonl:2: not valid UTF-8"),
        (
            b'{"prompt": "a"}\n{"prompt": "cut',
            r"in\.jsonl:2: invalid JSON",
        ),  # strict: no torn-line leniency
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path, required_fields=("prompt",))


def test_atomic_writes_follow_the_process_umask(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644

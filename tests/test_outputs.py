"""The output rule: kinds, overlaps and run directories are checked up front, and a
directory is replaced only when it holds nothing but its writer's files."""

import pytest

from selflengthen_jax.outputs import (OutputError, check_dir, check_file, fresh_partial, replace_dir,
                                      run_dir_holding)

NAMES = ("config.json", "model-*.safetensors")


def test_a_stale_partial_of_ours_is_cleared_and_a_foreign_one_refused(tmp_path):
    out = tmp_path / "export"
    stale = tmp_path / "export.partial"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    assert fresh_partial(out, NAMES) == stale and not stale.exists()
    stale.mkdir()
    (stale / "diary.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"diary\.txt"):
        fresh_partial(out, NAMES)
    assert (stale / "diary.txt").read_text() == "mine"


def test_replace_dir_replaces_an_earlier_export_but_nothing_else(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("old")
    new = tmp_path / "export.partial"
    new.mkdir()
    (new / "config.json").write_text("new")
    replace_dir(new, out, NAMES)
    assert (out / "config.json").read_text() == "new" and not new.exists()
    (out / "notes.txt").write_text("keep")
    new.mkdir()
    with pytest.raises(OutputError, match="did not write"):
        replace_dir(new, out, NAMES)
    assert (out / "notes.txt").read_text() == "keep"


def test_files_and_directories_are_checked_against_inputs_and_runs(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_text("")
    with pytest.raises(OutputError, match="is also an input"):
        check_file(data / "a.jsonl", [data / "a.jsonl"])
    with pytest.raises(OutputError, match="inside the input directory"):
        check_file(data / "b.jsonl", [data])
    with pytest.raises(OutputError, match="overlaps the input"):
        check_dir(tmp_path, [data / "a.jsonl"])
    assert check_file(tmp_path / "new" / "deep" / "c.jsonl", [data]).name == "c.jsonl"
    (data / "run_config.json").write_text("{}")
    assert run_dir_holding(data / "x" / "y") == data.resolve()
    with pytest.raises(OutputError, match="inside the run directory"):
        check_dir(data / "sub")
    assert check_dir(data / "sub", own_run=data) == data / "sub"

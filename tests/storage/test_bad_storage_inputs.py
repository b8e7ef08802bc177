"""A gs:// path that cannot work stops at start-up with one line naming the problem:
no emulator or endpoint, no credentials, no such bucket (model.path and output_dir)."""

import pytest

from cli_fixtures import run_main, shared_chat_checkpoint
from launch.iterate import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_chat_checkpoint(tmp_path_factory)


def one_error_line(capsys, argv) -> str:
    code, out, err = run_main(main, argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_bucket_that_does_not_exist_is_named(ckpt, gcs_emulator, capsys, tmp_path):
    err = one_error_line(capsys, [f"model.path={ckpt}", "output_dir=gs://no-such-bucket/run"])
    assert "bucket gs://no-such-bucket does not exist" in err
    err = one_error_line(capsys, ["model.path=gs://no-such-bucket/model", f"output_dir={tmp_path}/o"])
    assert "model.path gs://no-such-bucket/model: bucket gs://no-such-bucket does not exist" in err
    assert not (tmp_path / "o").exists()


def test_no_emulator_at_the_configured_address_is_one_line_in_seconds(ckpt, capsys, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    err = one_error_line(capsys, [f"model.path={ckpt}", "output_dir=gs://bucket/run"])
    assert err == ("error: output_dir gs://bucket/run: cannot reach Google Cloud Storage at "
                   "http://127.0.0.1:9 ([Errno 111] Connection refused); is the emulator running at "
                   "http://127.0.0.1:9?\n")


def test_no_credentials_is_one_line(ckpt, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    err = one_error_line(capsys, [f"model.path={ckpt}", "output_dir=gs://bucket/run"])
    assert err.startswith("error: output_dir gs://bucket/run: ") and "credentials" in err

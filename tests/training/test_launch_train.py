"""launch.train: role/data/out plus config overrides; bad input is one clear error line."""

from pathlib import Path

from cli_fixtures import run_main
from launch import train
from selflengthen_jax.training.checkpointing import read_adapter_meta


def test_it_trains_on_all_devices_and_prints_the_adapter_directory(tiny, records, write_jsonl, tmp_path,
                                                                    capsys):
    data = write_jsonl(tmp_path / "gen.jsonl", records(8))
    code, out, err = run_main(train.main, [
        f"model.path={tiny.path}", "role=gen", f"data={data}", f"out={tmp_path / 'run'}",
        "train.max_steps=2", "train.cutoff_len=128", "train.lora.rank=4"], capsys)
    assert code == 0, err
    artifact = Path(out.strip().splitlines()[-1])
    assert artifact == (tmp_path / "run" / "adapter").absolute()
    assert read_adapter_meta(artifact)["role"] == "gen"


def test_a_missing_data_file_is_one_clear_error_line(tiny, tmp_path, capsys):
    argv = [f"model.path={tiny.path}", "role=gen", f"data={tmp_path / 'nope.jsonl'}", f"out={tmp_path / 'run'}"]
    code, out, err = run_main(train.main, argv, capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: training data file {tmp_path / 'nope.jsonl'} does not exist"]
    assert not (tmp_path / "run").exists()


def test_role_data_and_out_are_required(tmp_path, capsys):
    code, _, err = run_main(train.main, ["role=gen"], capsys)
    assert code == 2 and "missing data=..., out=..." in err


def test_an_unknown_config_key_is_refused_before_loading_anything(tmp_path, capsys):
    code, _, err = run_main(train.main, ["role=gen", "data=x", "out=y", "train.lr=1"], capsys)
    assert code == 2 and "unknown config key 'train.lr'" in err

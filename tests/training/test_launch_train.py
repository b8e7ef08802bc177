"""launch.train: --role/--input/--output plus config overrides; bad input is one clear error line."""

from pathlib import Path

from cli_fixtures import run_main
from launch import train
from selflengthen_jax.training.checkpointing import read_adapter_meta


def test_it_trains_on_all_devices_and_prints_the_adapter_directory(tiny, records, write_jsonl, tmp_path,
                                                                    capsys):
    data = write_jsonl(tmp_path / "gen.jsonl", records(8))
    code, out, err = run_main(train.main, [
        "--model", tiny.path, "--role", "gen", "--input", data, "--output", tmp_path / "run",
        "train.max_steps=2", "train.cutoff_len=128", "train.lora.rank=4"], capsys)
    assert code == 0, err
    artifact = Path(out.strip().splitlines()[-1])
    assert artifact == (tmp_path / "run" / "adapter").absolute()
    assert read_adapter_meta(artifact)["role"] == "gen"


def test_a_missing_data_file_is_one_clear_error_line(tiny, tmp_path, capsys):
    argv = [f"model.path={tiny.path}", "--role", "gen", "--input", tmp_path / "nope.jsonl",
            "--output", tmp_path / "run"]
    code, out, err = run_main(train.main, argv, capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: training data file {tmp_path / 'nope.jsonl'} does not exist"]
    assert not (tmp_path / "run").exists()


def test_role_input_and_output_are_required_and_listed_in_the_usage(tmp_path, capsys):
    code, _, err = run_main(train.main, ["--role", "gen"], capsys)
    assert code == 2 and "--input INPUT --output OUTPUT" in err
    assert "the following arguments are required: --input, --output" in err


def test_an_unknown_config_key_is_refused_before_loading_anything(tmp_path, capsys):
    code, _, err = run_main(train.main, ["--role", "gen", "--input", "x", "--output", "y", "train.lr=1"], capsys)
    assert code == 2 and "unknown config key 'train.lr'" in err


def test_the_old_role_data_out_spellings_still_work_with_one_hint_each(tmp_path, capsys):
    code, _, err = run_main(train.main, ["role=gen", "data=x", "out=y", "train.lr=1"], capsys)
    assert code == 2 and "unknown config key 'train.lr'" in err
    assert err.splitlines()[:3] == ["warning: role= is deprecated; use --role",
                                    "warning: data= is deprecated; use --input",
                                    "warning: out= is deprecated; use --output"]

"""launch.iterate stops at start-up with one clear message for every bad input."""

import json

import pytest

from cli_fixtures import run_main, shared_chat_checkpoint
from launch.iterate import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_chat_checkpoint(tmp_path_factory)


def fails(capsys, argv, *needles):
    code, _, err = run_main(main, argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    fails(capsys, ["--config", bad], "malformed YAML")


def test_unknown_and_mistyped_keys(tmp_path, capsys):
    fails(capsys, ["train.lr=1", f"output_dir={tmp_path}"], "unknown config key 'train.lr'", "learning_rate")
    fails(capsys, ["train.epochs=many"], "train.epochs must be of type int")
    fails(capsys, ["language=fr"], "zh, en")


def test_mesh_that_does_not_divide_the_devices(capsys):
    fails(capsys, ["mesh.data=3"], "does not match the 8 devices")


def test_heads_not_divisible_by_tensor_axis(ckpt, tmp_path, capsys):
    fails(capsys, [f"model.path={ckpt}", "mesh.data=1", "mesh.tensor=8", f"output_dir={tmp_path}"],
          "mesh.tensor=8 does not divide num_attention_heads=4")


def test_model_dir_missing_pieces(ckpt, tmp_path, capsys):
    import shutil
    for missing, needle in [("config.json", "no config.json"), ("tokenizer.json", "no tokenizer"),
                            ("model.safetensors", "has no weights")]:
        d = tmp_path / f"no-{missing}"
        shutil.copytree(ckpt, d)
        (d / missing).unlink()
        fails(capsys, [f"model.path={d}", f"output_dir={tmp_path}/o"], needle)


def test_pickle_only_checkpoint_is_refused(ckpt, tmp_path, capsys):
    import shutil
    d = tmp_path / "pickled"
    shutil.copytree(ckpt, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    fails(capsys, [f"model.path={d}", f"output_dir={tmp_path}/o"], "never unpickles")


def test_bad_seed_files(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails(capsys, [f"pipeline.seeds_path={empty}"], "holds no instructions")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "Write a long story."}\n{"prompt": oops}\n{"prompt": "x"}\n')
    fails(capsys, [f"pipeline.seeds_path={broken}"], "broken.jsonl:2:")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "caf\xe9"}\n')
    fails(capsys, [f"pipeline.seeds_path={latin}"], "latin.jsonl:1:")


def test_output_dir_of_another_run_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text(json.dumps({"seed": 99}))
    fails(capsys, [f"output_dir={out}"], "holds another run", "--force")


def test_dry_run_on_every_shipped_config(capsys):
    from pathlib import Path
    configs = sorted(Path(__file__).resolve().parents[2].glob("configs/*.yaml"))
    assert len(configs) >= 3
    for cfg in configs:
        code, out, err = run_main(main, ["--config", cfg, "--dry-run"], capsys)
        assert code == 0, err
        assert "fsdp" in out and "GiB" in out or "MiB" in out


def test_prompt_and_output_beyond_the_models_positions(ckpt, tmp_path, capsys):
    positions = json.loads((ckpt / "config.json").read_text())["max_position_embeddings"]
    fails(capsys, [f"model.path={ckpt}", f"output_dir={tmp_path}", f"engine.max_prefill_len={positions}",
                   "engine.max_new_tokens=1"],
          f"= {positions + 1} exceeds the model's max_position_embeddings={positions}",
          f"lower engine.max_prefill_len to at most {positions - 1}")

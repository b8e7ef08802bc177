"""Every launcher's --output may be a gs:// path (the GCS emulator here): a bucket that
does not exist is one line before any compute, and what lands in a bucket is what lands
on local disk."""

import json

import pytest

from cli_fixtures import ENGINE, read_jsonl, run_main, shared_chat_checkpoint, write_jsonl
from launch import evaluate, export, generate, train
from selflengthen_jax import paths

BENCH = [{"query": "Write about rivers in about 50 words.", "type": "length", "response": "river " * 40,
          "length": 50},
         {"query": "写一篇大约100字的文章。", "type": "length", "response": "春" * 120, "length": 100}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_chat_checkpoint(tmp_path_factory)


def inputs(tmp_path, ckpt) -> dict[str, list]:
    """Each launcher's arguments but --output."""
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Say hi.", "response": "Hi there."}] * 4)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "The quick brown fox"},
                                                        {"id": "b", "prompt": "Rivers are"}])
    bench = write_jsonl(tmp_path / "bench.jsonl", BENCH)
    return {"train": ["--role", "gen", "--input", data, "--model", ckpt, "train.max_steps=1",
                      "train.cutoff_len=64"],
            "generate": ["--model", ckpt, "--input", prompts, "--greedy", "--max-new-tokens", "4", *ENGINE],
            "evaluate": ["--input", bench, "--responses-only"],
            "export": ["--model", ckpt]}


MAINS = {"train": train.main, "generate": generate.main, "evaluate": evaluate.main, "export": export.main}


@pytest.mark.parametrize("name", MAINS)
def test_a_bucket_that_does_not_exist_is_one_line_before_compute(name, ckpt, gcs_emulator, tmp_path, capsys):
    code, _, err = run_main(MAINS[name], [*inputs(tmp_path, ckpt)[name], "--output",
                                          "gs://no-such-bucket/out"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "bucket gs://no-such-bucket does not exist" in err, err


def test_generate_into_a_bucket_gives_the_local_records_as_one_object(ckpt, gcs_dir, tmp_path, capsys):
    argv = inputs(tmp_path, ckpt)["generate"]
    assert run_main(generate.main, [*argv, "--output", tmp_path / "out.jsonl"], capsys)[0] == 0
    code, stdout, err = run_main(generate.main, [*argv, "--output", f"{gcs_dir}/out.jsonl"], capsys)
    assert code == 0 and "generated 2" in stdout, err
    remote = paths.path(f"{gcs_dir}/out.jsonl")
    got = [json.loads(line) for line in remote.read_text().splitlines()]
    assert got == read_jsonl(tmp_path / "out.jsonl")
    code, stdout, _ = run_main(generate.main, [*argv, "--output", f"{gcs_dir}/out.jsonl"], capsys)
    assert code == 0 and "nothing to generate" in stdout  # resumed from the bucket's batches


def test_export_into_a_bucket_writes_the_local_files(ckpt, gcs_dir, tmp_path, capsys):
    argv = inputs(tmp_path, ckpt)["export"]
    assert run_main(export.main, [*argv, "--output", tmp_path / "hf"], capsys)[0] == 0
    code, stdout, err = run_main(export.main, [*argv, "--output", f"{gcs_dir}/hf"], capsys)
    assert code == 0 and stdout.strip() == f"{gcs_dir}/hf", err
    local = sorted(p.name for p in (tmp_path / "hf").iterdir())
    remote = paths.path(f"{gcs_dir}/hf")
    assert sorted(p.name for p in remote.iterdir()) == local
    for name in local:
        assert (remote / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name


def test_evaluate_into_a_bucket_writes_the_local_reports(ckpt, gcs_dir, tmp_path, capsys):
    argv = inputs(tmp_path, ckpt)["evaluate"]
    local = run_main(evaluate.main, [*argv, "--output", tmp_path / "eval"], capsys)
    remote = run_main(evaluate.main, [*argv, "--output", f"{gcs_dir}/eval"], capsys)
    assert local[0] == remote[0] == 0, remote[2]
    assert local[1] == remote[1]  # the same summary lines
    out = paths.path(f"{gcs_dir}/eval")
    for name in ("report.json", "report.md"):
        assert (out / name).read_text() == (tmp_path / "eval" / name).read_text(), name
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_train_into_a_bucket_leaves_the_adapter_there(ckpt, gcs_dir, tmp_path, capsys):
    from selflengthen_jax.training.checkpointing import read_adapter_meta
    code, stdout, err = run_main(train.main, [*inputs(tmp_path, ckpt)["train"], "--output",
                                              f"{gcs_dir}/run"], capsys)
    assert code == 0, err
    artifact = stdout.strip().splitlines()[-1]
    assert artifact == f"{gcs_dir}/run/adapter"
    assert read_adapter_meta(paths.path(artifact))["role"] == "gen"
    assert (paths.path(f"{gcs_dir}/run") / "train_config.json").is_file()

"""Hugging Face checkpoints in and out: sharded import, export round trip, bad inputs."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import add_tokenizer, hf_model, make_checkpoint
from selflengthen_jax.checkpoint.hf_export import export_hf
from selflengthen_jax.checkpoint.hf_import import CheckpointError, load_params, read_config
from selflengthen_jax.checkpoint.loader import param_shardings
from selflengthen_jax.checkpoint.safetensors_io import SafetensorsError
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import MeshSection
from selflengthen_jax.models.config import ModelConfigError
from selflengthen_jax.models.transformer import forward
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules

TOKENS = np.random.default_rng(0).integers(0, 128, (2, 24))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("q") / "qwen2", "qwen2", tie_word_embeddings=False)


def logits(path, shardings=None):
    cfg = read_config(path)
    params = load_params(path, cfg, shardings)
    return np.asarray(forward(params, cfg, jnp.asarray(TOKENS)).logits)


@pytest.mark.parametrize("strategy,shape", [("fsdp", (1, 8, 1)), ("tp", (2, 1, 4)), ("fsdp_tp", (1, 4, 2))])
def test_sharded_import_gives_unsharded_logits(qwen, strategy, shape):
    mesh = make_mesh(MeshSection(data=shape[0], fsdp=shape[1], tensor=shape[2], strategy=strategy))
    sh = param_shardings(read_config(qwen), mesh, strategy_rules(strategy))
    params = load_params(qwen, read_config(qwen), sh)
    wq = params["layers"]["wq"]
    assert len(wq.sharding.device_set) == 8 and not wq.sharding.is_fully_replicated
    np.testing.assert_allclose(logits(qwen, sh), logits(qwen), atol=1e-5)


def test_export_round_trip_loads_in_transformers_with_same_logits(qwen, tmp_path):
    cfg = read_config(qwen)
    out = export_hf(load_params(qwen, cfg), cfg, tmp_path / "exported", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    with torch.no_grad():
        theirs = hf_model(out)(torch.tensor(TOKENS)).logits.numpy()
        original = hf_model(qwen)(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(theirs, original, atol=1e-5)
    np.testing.assert_allclose(logits(out), original, atol=1e-4)
    assert not (tmp_path / "exported.partial").exists()


def test_missing_directory_and_files(tmp_path, qwen):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_config(tmp_path / "nowhere")
    d = tmp_path / "noconfig"
    shutil.copytree(qwen, d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_config(d)


def test_pickle_only_checkpoint_is_refused(tmp_path, qwen):
    d = tmp_path / "bin"
    shutil.copytree(qwen, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_params(d, read_config(d))


def test_unsupported_model_type(tmp_path, qwen):
    d = tmp_path / "mistral"
    shutil.copytree(qwen, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match="unsupported model_type 'gpt2'.*qwen2, llama"):
        read_config(d)


def test_corrupt_safetensors(tmp_path, qwen):
    d = tmp_path / "corrupt"
    shutil.copytree(qwen, d)
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SafetensorsError, match="corrupt safetensors file"):
        load_params(d, read_config(d))
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(SafetensorsError, match="corrupt safetensors file"):
        load_params(d, read_config(d))


def test_config_lacking_a_key_and_shape_mismatch(tmp_path, qwen):
    d = tmp_path / "badkey"
    shutil.copytree(qwen, d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match="lacks required keys: hidden_size"):
        read_config(d)
    cfg["hidden_size"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        load_params(d, read_config(d))


def test_exported_config_carries_bos_and_eos_from_the_generation_config(qwen, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(qwen, src)
    (src / "generation_config.json").write_text(json.dumps({"bos_token_id": 5, "eos_token_id": [7, 8]}))
    cfg = read_config(src)
    out = export_hf(load_params(src, cfg), cfg, tmp_path / "exported", tokenizer_dir=src)
    written = json.loads((out / "config.json").read_text())
    assert (written["bos_token_id"], written["eos_token_id"]) == (5, [7, 8])


def test_without_a_generation_config_the_ids_come_from_the_tokenizer(tmp_path):
    src = add_tokenizer(make_checkpoint(tmp_path / "llama", "llama"))
    (src / "generation_config.json").unlink()
    hf = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if "token_id" not in k}))
    cfg = read_config(src)
    out = export_hf(load_params(src, cfg), cfg, tmp_path / "exported", tokenizer_dir=src)
    eos = load_tokenizer(src).convert_tokens_to_ids("<|im_end|>")
    written = json.loads((out / "config.json").read_text())
    assert (written["bos_token_id"], written["eos_token_id"]) == (None, eos)  # this tokenizer has no bos

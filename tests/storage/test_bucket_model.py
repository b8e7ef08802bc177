"""A Hugging Face checkpoint in a bucket (a GCS emulator) loads as from disk: config,
tokenizer and safetensors come from gs://, the weights by ranged reads only."""

import jax.numpy as jnp
import numpy as np
import pytest

from chat_fixtures import make_chat_checkpoint
from selflengthen_jax import paths
from selflengthen_jax.checkpoint.bucket_source import BucketSafetensors
from selflengthen_jax.checkpoint.hf_import import CheckpointError
from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.config import MeshSection
from selflengthen_jax.models.transformer import forward
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules

TOKENS = np.random.default_rng(0).integers(0, 300, (2, 16))


@pytest.fixture(scope="module")
def local_and_bucket(tmp_path_factory, gcs_emulator):
    local = make_chat_checkpoint(tmp_path_factory.mktemp("hf") / "chat")
    remote = f"gs://selflengthen-test/models/{local.name}"
    for f in local.iterdir():
        (paths.path(remote) / f.name).write_bytes(f.read_bytes())
    return local, remote


def logits(model):
    return np.asarray(forward(model.params, model.cfg, jnp.asarray(TOKENS)).logits)


def test_a_model_from_the_bucket_gives_the_same_logits_as_from_disk(local_and_bucket):
    local, remote = local_and_bucket
    mesh = make_mesh(MeshSection(data=1, fsdp=4, tensor=2, strategy="fsdp_tp"))
    rules = strategy_rules("fsdp_tp")
    on_disk, in_bucket = load_model(local, mesh, rules), load_model(remote, mesh, rules)
    np.testing.assert_array_equal(logits(in_bucket), logits(on_disk))
    assert in_bucket.tokenizer.encode("hello world") == on_disk.tokenizer.encode("hello world")
    assert in_bucket.eos_ids == on_disk.eos_ids
    assert str(in_bucket.path) == remote


def test_a_slice_of_rows_reads_only_those_bytes(local_and_bucket):
    _, remote = local_and_bucket
    shard = BucketSafetensors(f"{remote}/model.safetensors")
    name = next(n for n in shard.keys() if len(shard.shape(n)) == 2 and shard.shape(n)[0] >= 8)
    _, cols = shard.shape(name)
    before = shard.bytes_read
    part = shard.read(name, (slice(2, 6), slice(1, 3)))
    assert part.shape == (4, 2)
    assert shard.bytes_read - before == 4 * cols * part.dtype.itemsize
    np.testing.assert_array_equal(part, shard.read(name)[2:6, 1:3])


def test_a_missing_bucket_folder_is_named(gcs_emulator):
    with pytest.raises((CheckpointError, FileNotFoundError), match="gs://selflengthen-test/nothing"):
        load_model("gs://selflengthen-test/nothing")

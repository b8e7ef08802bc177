"""Specification of storage in a bucket (a GCS emulator, no mocks): paths stay gs://,
records are immutable batch objects so nothing torn is ever read, markers and whole files
are single objects, Orbax checkpoints and adapters round-trip."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from selflengthen_jax import paths
from selflengthen_jax.pipeline import store
from selflengthen_jax.pipeline.store import (JsonlStore, atomic_write_json, is_done, mark_done,
                                             read_jsonl, read_marker)


def test_a_gs_path_stays_a_bucket_path_and_a_local_one_stays_pathlib(gcs_dir):
    remote = paths.path(gcs_dir) / "iter_1" / "x.jsonl"
    assert str(remote) == f"{gcs_dir}/iter_1/x.jsonl"
    assert not isinstance(remote, pathlib.Path)
    assert isinstance(paths.path("runs/demo"), pathlib.Path)
    assert not pathlib.Path("gs:").exists()


def test_bucket_store_keeps_flushed_batches_and_reopens_them(gcs_dir):
    path = f"{gcs_dir}/cache/initial.jsonl"
    s = JsonlStore(path)
    for i in range(3):
        s.append({"id": f"r{i}", "text": "长文" * i})
    assert not paths.path(path + store.PARTS).exists()  # nothing written before a flush
    s.flush()
    s.append({"id": "r3", "text": "x"})
    s.flush()
    names = sorted(p.name for p in paths.path(path + store.PARTS).iterdir())
    assert names == ["000000.jsonl", "000001.jsonl"]
    again = JsonlStore(path)
    assert again.ids() == ["r0", "r1", "r2", "r3"] and again.records()[2]["text"] == "长文长文"
    again.append({"id": "r4", "text": "y"})
    again.flush()  # continues the numbering, never overwrites an object
    assert JsonlStore(path).ids()[-1] == "r4"
    assert sorted(p.name for p in paths.path(path + store.PARTS).iterdir())[-1] == "000002.jsonl"


def test_a_crash_before_a_flush_loses_only_that_batch(gcs_dir):
    path = f"{gcs_dir}/c.jsonl"
    s = JsonlStore(path)
    s.append({"id": "kept"})
    s.flush()
    s.append({"id": "lost"})  # the process dies here: no object holds it
    assert JsonlStore(path).ids() == ["kept"]


def test_a_full_batch_is_written_without_an_explicit_flush(gcs_dir, monkeypatch):
    monkeypatch.setattr(store, "REMOTE_BATCH", 2)
    path = f"{gcs_dir}/b.jsonl"
    s = JsonlStore(path)
    s.append({"id": "a"})
    s.append({"id": "b"})
    assert JsonlStore(path).ids() == ["a", "b"]


def test_an_object_that_is_not_ours_is_refused_naming_it(gcs_dir):
    bad = paths.path(f"{gcs_dir}/e.jsonl{store.PARTS}/000000.jsonl")
    bad.write_bytes(b"not json\n")
    with pytest.raises(ValueError, match="000000.jsonl:1: invalid JSON"):
        JsonlStore(f"{gcs_dir}/e.jsonl")


def test_markers_and_whole_files_are_single_objects(gcs_dir):
    d = f"{gcs_dir}/iter_1"
    assert not is_done(d, "initial") and read_marker(d, "initial") is None
    mark_done(d, "initial", {"records": 2})
    assert is_done(d, "initial") and read_marker(d, "initial") == {"records": 2}
    atomic_write_json(f"{d}/summary.json", [{"iteration": 1}])
    assert json.loads(paths.path(f"{d}/summary.json").read_text()) == [{"iteration": 1}]
    store.atomic_write_text(f"{d}/x.jsonl", '{"id": "a"}\n')
    assert read_jsonl(f"{d}/x.jsonl") == [{"id": "a"}]


def test_orbax_steps_and_adapters_round_trip_through_the_bucket(gcs_dir):
    from selflengthen_jax.training import checkpointing
    from selflengthen_jax.training.data import DataPosition
    from selflengthen_jax.training.step import TrainState

    manager = checkpointing.open_manager(f"{gcs_dir}/ckpt", keep=2)
    state = TrainState(jnp.asarray(3), {"w": jnp.arange(4.0)}, {"mu": jnp.ones(4)})
    checkpointing.save(manager, state, DataPosition())
    manager.wait_until_finished()
    restored, _ = checkpointing.restore_latest(manager, state, jax_shardings(state))
    manager.close()
    assert int(restored.step) == 3
    np.testing.assert_array_equal(restored.trainable["w"], np.arange(4.0))

    adapter = {"wq": {"a": jnp.ones((2, 1, 4, 2)), "b": jnp.zeros((2, 1, 2, 4))}}  # [layers, 1, in/r, r/out]
    out = checkpointing.save_adapter(f"{gcs_dir}/adapter", adapter, {"rank": 2, "alpha": 4})
    assert str(out) == f"{gcs_dir}/adapter"
    params, meta = checkpointing.load_adapter(out)
    assert meta == {"rank": 2, "alpha": 4}
    np.testing.assert_array_equal(params["wq"]["a"], np.ones((2, 1, 4, 2)))
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}  # PEFT's too


def test_an_adapter_without_its_config_is_not_finished(gcs_dir):
    from selflengthen_jax.training import checkpointing
    adapter = {"wq": {"a": jnp.ones((1, 1, 4, 1)), "b": jnp.zeros((1, 1, 1, 4))}}
    out = checkpointing.save_adapter(f"{gcs_dir}/ad", adapter, {"rank": 1, "alpha": 1})
    (out / checkpointing.ADAPTER_META).unlink()  # as if killed before our metadata was written
    with pytest.raises(FileNotFoundError, match="no selflengthen_adapter.json"):
        checkpointing.load_adapter(out)


def jax_shardings(tree):
    import jax
    from jax.sharding import SingleDeviceSharding
    return jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), tree)

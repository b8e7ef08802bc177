"""Step checkpoints restore exactly and only when committed; adapters round-trip with meta and
are PEFT adapters too."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from jax.sharding import NamedSharding, PartitionSpec as P

from selflengthen_jax.training import checkpointing
from selflengthen_jax.training.data import DataPosition
from selflengthen_jax.training.step import TrainState


def state_at(step: int) -> TrainState:
    params = {"w": jnp.arange(6.0).reshape(2, 3) * step, "b": jnp.full((3,), float(step))}
    return TrainState(jnp.asarray(step, jnp.int32), params, optax.adam(1e-3).init(params))


def single_device(tree):
    return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), tree)


def restore(directory):
    manager = checkpointing.open_manager(directory, keep=5)
    try:
        return checkpointing.restore_latest(manager, state_at(0), single_device(state_at(0)))
    finally:
        manager.close()


def save_steps(directory, steps, keep=5):
    manager = checkpointing.open_manager(directory, keep=keep)
    for s in steps:
        checkpointing.save(manager, state_at(s), DataPosition(1, s))
    manager.wait_until_finished()
    manager.close()


def test_the_newest_checkpoint_restores_state_and_data_position_exactly(tmp_path):
    save_steps(tmp_path, [1, 2])
    state, pos = restore(tmp_path)
    assert int(state.step) == 2 and pos == DataPosition(1, 2)
    jax.tree.map(np.testing.assert_array_equal, state, state_at(2))


def test_an_empty_directory_has_nothing_to_restore(tmp_path):
    assert restore(tmp_path / "fresh") is None


def test_a_killed_save_is_never_restored(tmp_path):
    save_steps(tmp_path, [2])
    # what a save killed half-way leaves: a temporary dir, or a step dir without commit marker
    (tmp_path / "4.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    (tmp_path / "6" / "state").mkdir(parents=True)
    (tmp_path / "6" / "state" / "manifest.ocdbt").write_bytes(b"\0partial")
    state, pos = restore(tmp_path)
    assert int(state.step) == 2 and pos == DataPosition(1, 2)


def test_only_the_newest_keep_checkpoints_are_kept(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4], keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]


def test_an_adapter_round_trips_with_its_meta_onto_given_shardings(tmp_path):
    mesh = jax.make_mesh((8,), ("fsdp",))
    adapters = {"wq": {"a": jnp.arange(64.0).reshape(2, 1, 8, 4), "b": jnp.ones((2, 1, 4, 16))}}
    meta = {"rank": 4, "alpha": 8.0, "base_model": "/models/base", "role": "generator"}
    path = checkpointing.save_adapter(tmp_path / "adapter", adapters, meta)
    loaded, got_meta = checkpointing.load_adapter(path)
    assert got_meta == meta
    jax.tree.map(np.testing.assert_array_equal, loaded, adapters)
    shardings = {"wq": {"a": NamedSharding(mesh, P(None, None, "fsdp")),
                        "b": NamedSharding(mesh, P(None, None, None, "fsdp"))}}
    placed, _ = checkpointing.load_adapter(path, shardings)
    assert placed["wq"]["a"].sharding == shardings["wq"]["a"]
    assert not (tmp_path / "adapter.partial").exists()


def test_an_adapter_directory_is_also_a_peft_adapter(tmp_path):
    adapters = {"wq": {"a": jnp.arange(64.0).reshape(2, 1, 8, 4), "b": jnp.ones((2, 1, 4, 16))}}
    meta = {"rank": 4, "alpha": 8.0, "base_model": "/models/base", "role": "generator"}
    path = checkpointing.save_adapter(tmp_path / "adapter", adapters, meta)
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "selflengthen_adapter.json", "weights"]
    peft_cfg = json.loads((path / "adapter_config.json").read_text())
    assert (peft_cfg["r"], peft_cfg["lora_alpha"], peft_cfg["target_modules"]) == (4, 8.0, ["q_proj"])
    assert peft_cfg["base_model_name_or_path"] == "/models/base"
    a = safetensors.numpy.load_file(path / "adapter_model.safetensors")[
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    np.testing.assert_array_equal(a, np.asarray(adapters["wq"]["a"][1, 0]).T)


def test_an_adapter_written_before_the_peft_files_still_loads(tmp_path):
    adapters = {"wq": {"a": jnp.ones((2, 1, 8, 4)), "b": jnp.ones((2, 1, 4, 16))}}
    meta = {"rank": 4, "alpha": 8.0, "base_model": "/models/base", "role": "extender"}
    old = checkpointing.save_adapter(tmp_path / "adapter", adapters, meta)
    (old / "adapter_model.safetensors").unlink()  # the old layout: our schema under PEFT's name
    (old / "selflengthen_adapter.json").rename(old / "adapter_config.json")
    loaded, got_meta = checkpointing.load_adapter(old)
    assert got_meta == meta
    jax.tree.map(np.testing.assert_array_equal, loaded, adapters)


def test_a_peft_only_directory_is_refused_by_name(tmp_path):
    d = tmp_path / "peft"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(FileNotFoundError, match="holds a PEFT adapter but not ours"):
        checkpointing.read_adapter_meta(d)

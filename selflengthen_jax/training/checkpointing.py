"""Resumable training checkpoints (Orbax) and the finished adapter artifact of a role.

An adapter directory holds our Orbax `weights/` and metadata (`selflengthen_adapter.json`)
plus the same adapter in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`),
so peft and vLLM load it as it is. Adapters written before the PEFT files existed kept
our metadata under PEFT's file name; `read_adapter_meta` still reads those.

A step checkpoint holds the train state (trainable weights, optimizer state, step) and
the data position. Saves are asynchronous; a step only counts once Orbax has written
its commit marker (`commit_success.txt`) as the last act of the save, so a save killed
half-way is invisible to `restore_latest` and the previous checkpoint is used.

Directories may be local or `gs://` (see `selflengthen_jax.paths`); in a bucket, where
there is no rename, an adapter directory counts as finished once its
adapter_config.json, written last, exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import SingleDeviceSharding

from selflengthen_jax import faults
from selflengthen_jax.checkpoint.peft_adapter import (PEFT_CONFIG, PEFT_WRITES, peft_config, peft_tensors,
                                                      write_peft)
from selflengthen_jax.outputs import fresh_partial, replace_dir
from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.training.data import DataPosition
from selflengthen_jax.training.step import TrainState

ADAPTER_WEIGHTS = "weights"
ADAPTER_META = "selflengthen_adapter.json"
LEGACY_META = PEFT_CONFIG  # where adapters written before the PEFT files kept our metadata
ADAPTER_WRITES = (f"{ADAPTER_WEIGHTS}*", ADAPTER_META, *PEFT_WRITES)  # all `save_adapter` writes


def _absolute(p: str | AnyPath) -> AnyPath:
    return as_path(p) if is_remote(p) else Path(p).absolute()


def open_manager(directory: str | AnyPath, keep: int) -> ocp.CheckpointManager:
    """A manager that keeps the newest `keep` checkpoints and trusts only committed ones.

    The trainer decides when to save (every `save_every` steps and at the end).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        temporary_path_class=ocp.path.atomicity.CommitFileTemporaryPath)
    return ocp.CheckpointManager(_absolute(directory), options=options,
                                 item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, state: TrainState, position: DataPosition) -> None:
    """Start an async save of `state` at its step; returns once arrays are copied off device."""
    step = int(state.step)
    manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(position.to_dict())))
    faults.checkpoint("orbax_save")  # tests kill here, mid async save


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def restore_latest(manager: ocp.CheckpointManager, like: TrainState,
                   shardings: TrainState) -> tuple[TrainState, DataPosition] | None:
    """The newest committed checkpoint, placed on `shardings`; None when there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(like, shardings)), data=ocp.args.JsonRestore()))
    return TrainState(*restored["state"]), DataPosition.from_dict(restored["data"])


def save_adapter(path: str | AnyPath, adapters: Any, meta: dict[str, Any]) -> AnyPath:
    """Write `weights/` (Orbax), our metadata and the PEFT files; the directory appears
    complete or not at all. `meta` needs rank, alpha and base_model (dropout optional)."""
    if is_remote(path):
        return _save_adapter_in_bucket(as_path(path), adapters, meta)
    out = Path(path).absolute()
    peft = peft_tensors(adapters)
    tmp = out.with_name(out.name + ".partial")
    if jax.process_index() == 0:
        fresh_partial(out, ADAPTER_WRITES)
    multihost_utils.sync_global_devices(f"save_adapter:{tmp}")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp / ADAPTER_WEIGHTS, adapters)
        ckpt.wait_until_finished()
    if jax.process_index() == 0:
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        write_peft(tmp, peft, _peft_config(meta, adapters))
        replace_dir(tmp, out, ADAPTER_WRITES)
    multihost_utils.sync_global_devices(f"save_adapter:{out}")
    return out


def _peft_config(meta: dict[str, Any], adapters: Any) -> dict[str, Any]:
    return peft_config(int(meta["rank"]), meta["alpha"], list(adapters), str(meta.get("base_model") or ""),
                       meta.get("dropout", 0.0))


def _save_adapter_in_bucket(out: AnyPath, adapters: Any, meta: dict[str, Any]) -> AnyPath:
    """No rename in a bucket: clear what a killed save left, write the weights, then the
    metadata last; `read_adapter_meta` refuses a directory without it."""
    if jax.process_index() == 0 and out.exists():
        out.rmtree()
    multihost_utils.sync_global_devices(f"save_adapter:{out}:clear")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(out / ADAPTER_WEIGHTS, adapters)
        ckpt.wait_until_finished()
    peft = peft_tensors(adapters)
    if jax.process_index() == 0:
        write_peft(out, peft, _peft_config(meta, adapters))
        (out / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    multihost_utils.sync_global_devices(f"save_adapter:{out}")
    return out


def read_adapter_meta(path: str | AnyPath) -> dict[str, Any]:
    """Our metadata of an adapter directory: `selflengthen_adapter.json`, or for an adapter
    written before the PEFT files, our schema under the name `adapter_config.json`."""
    d = as_path(path)
    if (d / ADAPTER_META).is_file():
        return json.loads((d / ADAPTER_META).read_text(encoding="utf-8"))
    if (d / LEGACY_META).is_file():
        meta = json.loads((d / LEGACY_META).read_text(encoding="utf-8"))
        if "peft_type" not in meta and "rank" in meta:
            return meta
        raise FileNotFoundError(f"{path} holds a PEFT adapter but not ours (no {ADAPTER_META}): "
                                "pass an adapter directory written by launch.train or the loop")
    raise FileNotFoundError(f"{path} is not an adapter directory (no {ADAPTER_META})")


def load_adapter(path: str | AnyPath, shardings: Any = None) -> tuple[Any, dict[str, Any]]:
    """(adapters, meta) from `save_adapter`'s directory.

    Placed on `shardings` if given, else on this process's first device, so loading
    never depends on the mesh the adapter was trained on.
    """
    meta = read_adapter_meta(path)
    with ocp.StandardCheckpointer() as ckpt:
        weights = _absolute(path) / ADAPTER_WEIGHTS
        like = ckpt.metadata(weights).item_metadata.tree
        if shardings is None:
            device = SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda _: device, like)
        return ckpt.restore(weights, _abstract(like, shardings)), meta

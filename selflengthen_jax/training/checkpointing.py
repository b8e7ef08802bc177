"""Resumable training checkpoints (Orbax) and the finished adapter artifact of a role.

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
from selflengthen_jax.outputs import fresh_partial, replace_dir
from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.training.data import DataPosition
from selflengthen_jax.training.step import TrainState

ADAPTER_WEIGHTS = "weights"
ADAPTER_META = "adapter_config.json"
ADAPTER_WRITES = (f"{ADAPTER_WEIGHTS}*", ADAPTER_META)  # all `save_adapter` puts in its directory


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
    """Write `weights/` (Orbax) + adapter_config.json; the directory appears complete or not at all."""
    if is_remote(path):
        return _save_adapter_in_bucket(as_path(path), adapters, meta)
    out = Path(path).absolute()
    tmp = out.with_name(out.name + ".partial")
    if jax.process_index() == 0:
        fresh_partial(out, ADAPTER_WRITES)
    multihost_utils.sync_global_devices(f"save_adapter:{tmp}")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp / ADAPTER_WEIGHTS, adapters)
        ckpt.wait_until_finished()
    if jax.process_index() == 0:
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        replace_dir(tmp, out, ADAPTER_WRITES)
    multihost_utils.sync_global_devices(f"save_adapter:{out}")
    return out


def _save_adapter_in_bucket(out: AnyPath, adapters: Any, meta: dict[str, Any]) -> AnyPath:
    """No rename in a bucket: clear what a killed save left, write the weights, then the
    config last; `read_adapter_meta` refuses a directory without it."""
    if jax.process_index() == 0 and out.exists():
        out.rmtree()
    multihost_utils.sync_global_devices(f"save_adapter:{out}:clear")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(out / ADAPTER_WEIGHTS, adapters)
        ckpt.wait_until_finished()
    if jax.process_index() == 0:
        (out / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    multihost_utils.sync_global_devices(f"save_adapter:{out}")
    return out


def read_adapter_meta(path: str | AnyPath) -> dict[str, Any]:
    meta = as_path(path) / ADAPTER_META
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not an adapter directory (no {ADAPTER_META})")
    return json.loads(meta.read_text(encoding="utf-8"))


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

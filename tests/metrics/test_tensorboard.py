"""The run's TensorBoard board, read back from its event files (on disk or in a bucket), and
the --profile trace."""

import jax
import jax.numpy as jnp

from gcs_fixtures import gcs_dir, gcs_emulator  # noqa: F401  (fixtures)
from selflengthen_jax.metrics import profile
from selflengthen_jax.metrics.tensorboard import Board
from tb_fixtures import histograms, scalars


def test_board_writes_scalars_and_histograms_tensorboard_can_read(tmp_path):
    board = Board(tmp_path / "tb")
    board.scalars("generation/initial", {"tokens_per_s": 12.5, "acceptance": 0.5}, 3)
    board.histogram("lengths/initial_words", [10, 20, 30], 3)
    board.histogram("lengths/extended_words", [], 3)  # nothing to draw: no event
    board.close()
    assert scalars(tmp_path / "tb") == {"generation/initial/tokens_per_s": [(3, 12.5)],
                                        "generation/initial/acceptance": [(3, 0.5)]}
    assert histograms(tmp_path / "tb") == {"lengths/initial_words": [(3, 3.0, 60.0)]}


def test_a_disabled_board_writes_nothing(tmp_path):
    board = Board(tmp_path / "tb", enabled=False)
    board.scalars("x", {"y": 1.0}, 0)
    board.histogram("h", [1.0], 0)
    board.close()
    assert not (tmp_path / "tb").exists()


def test_profile_traces_n_chunks_after_the_first_of_each_kind(tmp_path):
    """The first tick starts the trace (compilation stays out), N more stop it; the
    trace is an XPlane file where TensorBoard's profile plugin looks."""
    f = jax.jit(lambda x: x @ x)
    x = jnp.ones((8, 8))
    profile.arm(tmp_path / "tb", 2)
    try:
        for _ in range(6):
            f(x).block_until_ready()
            profile.tick("decode")
            profile.tick("train")  # waits while decode is traced, then gets its own trace
        assert profile.traced() == {"decode", "train"}
    finally:
        profile.disarm()
    traces = sorted((tmp_path / "tb" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 2 and all(t.stat().st_size > 0 for t in traces)
    profile.tick("decode")  # disarmed: nothing more
    assert len(sorted((tmp_path / "tb").rglob("*.xplane.pb"))) == 2


def bucket_objects(log_dir: str, copy_to) -> dict[str, int]:
    """name -> generation of each object under `log_dir`, copied into `copy_to` to read."""
    import fsspec
    fs = fsspec.filesystem("gs")
    out = {}
    for info in fs.ls(log_dir, detail=True):
        name = info["name"].rsplit("/", 1)[-1]
        out[name] = int(info["generation"])
        (copy_to / name).write_bytes(fs.cat_file(info["name"]))
    return out


def test_a_bucket_board_uploads_each_event_file_once_and_never_rewrites_one(gcs_dir, tmp_path):
    """With upload_every=0 every flush closes the event file, uploads it as a new object
    and starts the next: what is in the bucket already stays untouched (same generation),
    so traffic grows with what is logged, and the objects together hold every event."""
    board = Board(f"{gcs_dir}/tb", upload_every=0)
    seen: dict[str, int] = {}
    for step in range(4):
        board.scalars("train", {"loss": float(step)}, step)
        objects = bucket_objects(f"{gcs_dir}/tb", tmp_path)
        assert len(objects) == step + 1 and all(objects[name] == gen for name, gen in seen.items())
        seen = objects
    board.close()  # nothing logged since the last upload: no empty file is added
    assert bucket_objects(f"{gcs_dir}/tb", tmp_path) == seen
    assert sorted(seen) == sorted(seen, key=lambda n: int(n.rsplit(".", 1)[1]))  # names sort in order
    assert scalars(tmp_path) == {"train/loss": [(s, float(s)) for s in range(4)]}


def test_a_bucket_board_uploads_at_most_every_upload_every_seconds_and_the_rest_at_close(gcs_dir, tmp_path):
    board = Board(f"{gcs_dir}/tb", upload_every=3600)
    for step in range(3):
        board.scalars("train", {"loss": float(step)}, step)
    assert len(bucket_objects(f"{gcs_dir}/tb", tmp_path)) == 1  # the first flush, at once
    board.histogram("lengths/initial_words", [1, 2, 3], 2)
    board.close()
    assert len(bucket_objects(f"{gcs_dir}/tb", tmp_path)) == 2
    assert scalars(tmp_path) == {"train/loss": [(0, 0.0), (1, 1.0), (2, 2.0)]}
    assert histograms(tmp_path) == {"lengths/initial_words": [(2, 3.0, 6.0)]}

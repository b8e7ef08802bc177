"""The run's TensorBoard board, read back from its event file, and the --profile trace."""

import jax
import jax.numpy as jnp

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

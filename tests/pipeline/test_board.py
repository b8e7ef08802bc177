"""The run's TensorBoard: one global step across iterations and roles, and each
iteration's generation metrics and length histograms, read back from the event file."""

import json

import pytest

from selflengthen_jax.metrics.tensorboard import Board
from selflengthen_jax.pipeline.store import mark_done
from selflengthen_jax.pipeline.summary import board_iteration, global_step, iteration_summary, phase_metrics
from tb_fixtures import histograms, scalars

ROLES = ("gen", "ext")


def finished_iteration(out, k, words, steps):
    """iter_k with phase markers, responses of the given word counts and train markers."""
    d = out / f"iter_{k}"
    d.mkdir(parents=True)
    for name, records, attempts in (("instructions", 4, 8), ("initial", len(words), 5), ("extended", 2, 4)):
        mark_done(d, name, {"records": records, "counts": {"attempts": attempts}, "seconds": 2.0,
                            "tokens": 100 * k})
    for name in ("initial", "extended"):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"id": str(i), "words": w}) + "\n"
                                                 for i, w in enumerate(words)))
    for role, n in zip(ROLES, steps):
        mark_done(d, f"train_{role}", {"artifact": None, "seconds": 1.0, **({"steps": n} if n else {})})
    return d


def test_the_global_step_counts_every_earlier_training(tmp_path):
    finished_iteration(tmp_path, 1, [10, 20], (5, 7))
    finished_iteration(tmp_path, 2, [30, 40], (3, 0))  # the extender was skipped: no steps
    assert [global_step(tmp_path, 1, r, ROLES) for r in (None, "gen", "ext")] == [0, 0, 5]
    assert [global_step(tmp_path, 2, r, ROLES) for r in (None, "gen", "ext")] == [12, 12, 15]
    assert global_step(tmp_path, 3, None, ROLES) == 15


def test_phase_metrics_are_rates_acceptance_and_word_statistics(tmp_path):
    d = finished_iteration(tmp_path, 1, [10, 20, 30, 40, 100], (5, 7))
    m = phase_metrics(iteration_summary(1, d))
    assert m["instructions"] == {"records": 4, "tokens_per_s": 50.0, "acceptance": 0.5}
    assert m["initial"]["acceptance"] == 1.0 and m["initial"]["words_mean"] == 40.0
    assert m["initial"]["words_p90"] == pytest.approx(76.0)


def test_each_iteration_lands_at_its_global_step_with_histograms(tmp_path):
    board = Board(tmp_path / "tensorboard")
    for k, words, steps in ((1, [10, 20], (5, 7)), (2, [30, 40, 50], (3, 4))):
        d = finished_iteration(tmp_path, k, words, steps)
        board_iteration(board, d, iteration_summary(k, d), global_step(tmp_path, k, None, ROLES))
    board.close()
    got = scalars(tmp_path / "tensorboard")
    assert got["progress/iteration"] == [(0, 1.0), (12, 2.0)]
    assert {t for t in got if t.startswith("generation/")} == {
        f"generation/{p}/{m}" for p in ("instructions", "initial", "extended")
        for m in ("records", "tokens_per_s", "acceptance")} | {
        f"generation/{p}/{m}" for p in ("initial", "extended") for m in ("words_mean", "words_p90")}
    assert got["generation/initial/words_mean"] == [(0, 15.0), (12, 40.0)]
    assert histograms(tmp_path / "tensorboard")["lengths/initial_words"] == [(0, 2.0, 30.0), (12, 3.0, 120.0)]

"""Strategies ranked for a TPU slice from compiled executables, with a lower-bound time."""

import pytest

from selflengthen_jax.plan.rehearsal import Row
from selflengthen_jax.plan.slices import parse_slice
from selflengthen_jax.plan.strategies import estimate_seconds


def _row(**kw):
    base = dict(executable="train step", mesh="1x4x1 fsdp", argument_bytes=0, output_bytes=0,
                temp_bytes=0, alias_bytes=0, compiled_bytes=0, resident_bytes=0, planned_bytes=None,
                hbm_bytes=1, fits=True, flops=0.0, bytes_accessed=0.0,
                collective_bytes={"all-gather": 0.0}, per="call", compile_s=0.0)
    return Row(**{**base, **kw})


def test_the_estimate_is_the_slower_of_compute_and_memory_plus_communication():
    v5e = parse_slice("v5e:2x2")
    compute_bound = _row(flops=197e12, bytes_accessed=0.41e12)          # 1 s of FLOPs, 0.5 s of HBM
    assert estimate_seconds(compute_bound, v5e) == pytest.approx(1.0)
    with_comm = _row(flops=197e12, collective_bytes={"all-gather": 200e9})  # + 1 s of ICI
    assert estimate_seconds(with_comm, v5e) == pytest.approx(2.0)
    decode = _row(per="step", steps=10, bytes_accessed=8.2e12, collective_bytes={"all-reduce": 0.0})
    assert estimate_seconds(decode, v5e) == pytest.approx(1.0)           # per step: 10 s / 10


def test_strategies_are_ranked_by_compiled_memory_for_the_slice(tmp_path):
    pytest.importorskip("libtpu")
    from selflengthen_jax.config import load_config
    from selflengthen_jax.pipeline.start import model_config
    from selflengthen_jax.plan import slices, strategies

    cfg = load_config(None, ["model.path=", "model.preset=tiny", "train.cutoff_len=512",
                             "engine.slots=4", "engine.max_prefill_len=128", "engine.max_new_tokens=128"])
    s = slices.parse_slice("v5e:2x2")
    ranked = strategies.rank(cfg, model_config(cfg), s, slices.topology_devices(s), ["dp", "fsdp"],
                             only=("train step",))
    assert sorted(r.strategy for r in ranked) == ["dp", "fsdp"]
    assert ranked[0].row.peak_bytes <= ranked[1].row.peak_bytes   # both fit: less memory first
    assert all(r.estimate_s > 0 for r in ranked)
    by = {r.strategy: r.row for r in ranked}
    assert by["fsdp"].mesh.startswith("1x4x1") and by["dp"].mesh.startswith("4x1x1")
    # fsdp all-gathers each layer's weights; dp only all-reduces the adapters' gradients
    assert sum(by["fsdp"].collective_bytes.values()) > sum(by["dp"].collective_bytes.values())
    paths = strategies.write(ranked, tmp_path)
    assert [p.suffix for p in paths] == [".md", ".csv", ".json", ".png"]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

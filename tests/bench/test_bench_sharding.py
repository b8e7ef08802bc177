"""`python -m launch.bench_sharding`: every strategy runs, is timed, and computes the same thing."""

import json

import numpy as np
import pytest

from cli_fixtures import run_main
from launch import bench_sharding
from selflengthen_jax.bench import sharding_report as report
from selflengthen_jax.bench.sharding import (BenchResult, BenchSection, Stat, keys_read, load_bench,
                                             loss_difference, resolve_layouts, token_difference)
from selflengthen_jax.config import ConfigError, load_config
from selflengthen_jax.parallel.peaks import measured_cpu_peak
from selflengthen_jax.parallel.rules import STRATEGIES

# XLA:CPU compile time dominates at this size: one shape, few repeats, no remat, given
# peaks (measured_cpu_peak has its own test) and unoptimised code generation (3x faster
# to compile; numerics are what these tests check, not speed).
TINY_RUN = ["bench.model=tiny", "bench.batch_sizes=[2]", "bench.context_lengths=[16]",
            "bench.decode_steps=4", "bench.warmup=1", "bench.repeats=2", "bench.train_seq_len=32",
            "bench.peak_flops=1.0e+10", "bench.peak_bandwidth=1.0e+10", "train.remat=none",
            "bench.compile_options={xla_backend_optimization_level: 0}"]


def test_every_builtin_strategy_runs_end_to_end_and_agrees(tmp_path, capsys):
    """Generation and LoRA training (what the loop runs) under dp, fsdp, tp, fsdp_tp."""
    code, out, err = run_main(bench_sharding.main,
                              ["--strategies", ",".join(STRATEGIES), "--output", tmp_path, *TINY_RUN,
                               "bench.train_modes=[lora]"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_sharding.json").read_text())
    rows = data["measurements"]
    assert {(m["strategy"], m["workload"]) for m in rows} == {
        (s, w) for s in STRATEGIES for w in ("prefill", "decode", "train-lora")}
    # Numerics: identical greedy tokens and the same first loss under every layout.
    assert all(m["check"] in ("reference", "ok") for m in rows), [m["check"] for m in rows]
    assert data["failures"] == [] and data["warnings"] == []
    losses = {m["workload"]: set() for m in rows if m["loss"] is not None}
    for m in rows:
        if m["loss"] is not None:
            losses[m["workload"]].add(round(m["loss"], 4))
    assert all(len(v) == 1 for v in losses.values()), losses
    # Speed, spread, memory and utilisation are reported for every row.
    for m in rows:
        t = m["tokens_per_s"]
        assert 0 < t["lo"] <= t["median"] <= t["hi"]
        assert m["compile_s"] > 0 and m["planned_bytes"] > 0 and m["mfu"] > 0
        assert m["xla_memory"]["total"] > 0                  # XLA:CPU has memory_analysis
        assert m["live_peak"] is None                        # ...but no live memory stats
    assert all(m["bandwidth_util"] > 0 for m in rows if m["workload"] == "decode")
    # The ranked markdown table is on stdout; CSV, JSON and a PNG chart are written.
    assert "### Generation" in out and "### Training" in out and "All strategies agree" in out
    assert "timings are not production's" in out
    for s in STRATEGIES:
        assert f"| {s} |" in out
    csv_lines = (tmp_path / "bench_sharding.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows) and csv_lines[0].startswith("strategy,mesh,workload")
    assert (tmp_path / "bench_sharding.png").read_bytes()[:4] == b"\x89PNG"


def test_full_finetuning_agrees_with_its_weights_and_adam_state_sharded(tmp_path, capsys):
    code, out, err = run_main(bench_sharding.main,
                              ["--strategies", "dp,fsdp", "--output", tmp_path, *TINY_RUN,
                               "bench.batch_sizes=[]", "bench.train_modes=[full]"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "bench_sharding.json").read_text())["measurements"]
    assert [(m["strategy"], m["workload"], m["check"]) for m in rows] == [
        ("dp", "train-full", "reference"), ("fsdp", "train-full", "ok")]
    dp, fsdp = rows
    assert fsdp["planned_bytes"] < dp["planned_bytes"]        # master + Adam split 8 ways
    assert fsdp["xla_memory"]["argument"] < dp["xla_memory"]["argument"]
    assert "### Generation" not in out


def test_cpu_peak_is_measured():
    peak = measured_cpu_peak(matmul_n=256, copy_mib=8, repeats=3)
    assert peak.flops > 1e8 and peak.bandwidth > 1e7


def test_a_float32_disagreement_fails_the_run_loudly(tmp_path, capsys, monkeypatch):
    failed = BenchResult({"model": {}}, {}, [], ["tp decode batch=2 seq=16: tokens differ from "
                                                  "step 3 in 1 of 2 rows (vs dp)"], [])
    monkeypatch.setattr(bench_sharding, "run", lambda setup: failed)
    monkeypatch.setattr(report, "markdown", lambda result: "table")
    monkeypatch.setattr(report, "write", lambda result, out: [])
    code, out, err = run_main(bench_sharding.main, ["--output", tmp_path, "bench.model=tiny"], capsys)
    assert code == 1
    assert "NUMERICS MISMATCH" in err and "tokens differ from step 3" in err


def test_differences_name_where_and_how_much():
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert token_difference(ref, ref.copy()) is None
    late = ref.copy()
    late[1, 2:] = 0
    assert token_difference(ref, late) == "tokens differ from step 2 in 1 of 2 rows"
    assert loss_difference(6.2673, 6.26731, "float32") is None
    assert "rtol" in loss_difference(6.2673, 6.30, "float32")
    assert loss_difference(6.2673, 6.30, "bfloat16") is None


def test_strategies_come_from_builtins_the_run_config_or_the_bench_yaml(tmp_path):
    yaml = tmp_path / "bench.yaml"
    yaml.write_text("layouts:\n  tp2:\n    strategy: tp\n    data: 4\n    tensor: 2\n"
                    "    rules: {vocab: null}\n")
    bench = load_bench(str(yaml), ["strategies=[fsdp_tp, tp2, config]"])
    cfg = load_config(None, ["mesh.data=2", "mesh.fsdp=4", "mesh.strategy=fsdp"])
    layouts = {lay.name: lay.section for lay in resolve_layouts(cfg, bench, num_heads=8, num_devices=8)}
    assert (layouts["fsdp_tp"].fsdp, layouts["fsdp_tp"].tensor) == (4, 2)
    assert (layouts["tp2"].data, layouts["tp2"].tensor, layouts["tp2"].rules) == (4, 2, {"vocab": None})
    assert (layouts["config"].data, layouts["config"].fsdp) == (2, 4)
    with pytest.raises(ConfigError, match="unknown strategy 'zz'.*tp2"):
        resolve_layouts(cfg, BenchSection(strategies=["zz"], layouts=bench.layouts), 8, 8)
    with pytest.raises(ConfigError, match="tensor axis does not divide 5 heads"):
        resolve_layouts(cfg, BenchSection(strategies=["tp2"], layouts=bench.layouts), 5, 8)


def test_bad_input_is_a_one_line_error_before_any_compute(tmp_path, capsys):
    code, _, err = run_main(bench_sharding.main, ["--strategies", "dp,nope", "bench.model=tiny"],
                            capsys)
    assert code == 2 and err.startswith("error: unknown strategy 'nope'")
    code, _, err = run_main(bench_sharding.main, ["bench.repeats=0"], capsys)
    assert code == 2 and "bench.repeats=0 must be a positive integer" in err
    code, _, err = run_main(bench_sharding.main, ["bench.model=gpt-5"], capsys)
    assert code == 2 and "neither a checkpoint directory nor a preset" in err


def test_spread_and_decode_arithmetic():
    s = Stat.of([0.4, 0.1, 0.2, 0.3])
    assert (s.lo, s.hi, s.median) == (0.1, 0.4, 0.25)
    r = s.rate(1.0)                                           # slowest run = lowest rate
    assert (r.lo, r.hi) == (2.5, 10.0) and r.q1 <= r.median <= r.q3
    # whole 256 blocks, then the partial one in 64-position pieces
    assert [keys_read(p, 512) for p in (0, 63, 64, 255, 256, 300, 511)] == [64, 64, 128, 256, 320, 320, 512]

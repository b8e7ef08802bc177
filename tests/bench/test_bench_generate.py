"""The generation benchmark runs end to end on a tiny model and reports what it promises
(structure and the summary line's format; speed is not checked here)."""

import json
import re

from selflengthen_jax.bench import generate as bench

TINY = bench.BenchSpec(
    model=bench.ModelShape(vocab=256, hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2),
    batch=2, prompt_len=8, new_tokens=6, repeats=1, decode_chunk=4, ragged_requests=5, ragged_min=2,
    ragged_max=12, ragged_median=4.0, depths=(256, 512), depth_steps=2, floor_steps=2, bandwidth_mib=1,
    judge_candidates=20, shared_texts=6, long_prompt_len=64, long_prompts=2, long_chunk=16)


def test_bench_generate_tiny(tmp_path):
    result = bench.run(TINY, tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["summary"] == result["summary"]

    a, b, p = result["workload_a"], result["workload_b"], result["positions"]
    assert a["exact_lengths"] and b["exact_lengths"]
    assert b["identical_tokens"]
    assert a["ours"]["tokens_per_s"] > 0 and a["hf"]["tokens_per_s"] > 0
    assert result["floor"]["ms_per_step"] > 0
    assert [r["depth"] for r in p["rows"]] == [256, 512]
    assert not p["recompiled"]
    assert all(r["kv_bound_ms"] > 0 for r in p["rows"])
    assert result["judge"]["pairs"] == 2 * TINY.judge_candidates and result["judge"]["median_s"] > 0
    shared = result["shared_prefill"]
    assert 0 < shared["shared_tokens"] <= shared["prompt_tokens"] // 2
    long = result["long_prompts"]
    assert long["identical_tokens"] and long["chunked"]["pieces"] > long["whole"]["pieces"] == 0
    assert long["chunked_apart"]["pieces"] == long["chunked"]["pieces"]
    compiles = result["compile_count"]  # the warm-up compiled every kernel workloads A and B time
    assert compiles["after_warm_up"] == compiles["after_workloads"]
    assert len(b["continuous_apart_s"]) == len(b["continuous_s"]) and b["ratio_apart_vs_static"] > 0
    parts = b["time_parts"]  # where each mode's time went: refills ride decode steps only when mixed
    assert parts["static"]["piece_s"] == parts["continuous_apart"]["piece_s"] == 0
    assert parts["continuous"]["piece_s"] > 0 and parts["continuous_apart"]["prefill_s"] > 0
    assert parts["continuous"]["decode_steps"] < parts["continuous_apart"]["decode_steps"]
    assert b["ratio_at_static_step_cost"] > 0

    text = bench.markdown(result) + "\n" + bench.summary_line(result)
    last = text.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio_vs_hf=\d+\.\d+ ratio_continuous_vs_static=\d+\.\d+ "
                        r"fraction_of_floor=\d+\.\d+", last)

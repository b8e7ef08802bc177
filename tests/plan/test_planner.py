"""The memory planner: per-device bytes from shapes alone, for meshes that do not exist here."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from selflengthen_jax.checkpoint.loader import param_shardings
from selflengthen_jax.config import Config, EngineSection, TrainSection, load_config
from selflengthen_jax.models.presets import PRESETS, model_config_from_name
from selflengthen_jax.models.transformer import forward, init_params
from selflengthen_jax.models.weight_layout import PER_LAYER, per_layer
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.peaks import GiB, device_spec
from selflengthen_jax.parallel.placement import weight_shardings
from selflengthen_jax.parallel.rules import STRATEGIES, generation_rules, strategy_rules
from selflengthen_jax.plan.planner import (abstract_mesh, builtin_layout, format_plan,
                                           generation_breakdown, kernel_breakdowns, param_bytes, engine_copy_bytes, plan,
                                           training_activations, training_breakdown, unaligned_layer_bytes)
from selflengthen_jax.sampling.engine import cache_length, prefill_rows

BF16 = ["model.param_dtype=bfloat16", "model.compute_dtype=bfloat16", "train.compute_dtype=bfloat16"]


def test_presets_have_the_published_parameter_counts():
    published = {"qwen2-0.5b": 494_032_768, "qwen2-7b": 7_615_616_512,
                 "qwen2-72b": 72_706_203_648, "llama-3.1-8b": 8_030_261_248,
                 "llama-3.1-70b": 70_553_706_496}
    for name, count in published.items():
        assert model_config_from_name(name).num_params() == count, name
    assert model_config_from_name("Qwen/Qwen2-7B") == model_config_from_name("qwen2-7b")
    assert model_config_from_name("meta-llama/Llama-3.1-8B").rope_scaling.factor == 8.0
    with pytest.raises(KeyError, match="known: " + ", ".join(PRESETS)):
        model_config_from_name("gpt-5")


def test_qwen2_7b_bf16_weights_under_fsdp8_match_a_hand_computation():
    cfg = model_config_from_name("qwen2-7b", param_dtype="bfloat16")
    L, D, H, K, Dh = 28, 3584, 28, 4, 128
    total = 7_615_616_512
    # fsdp shards the `embed` dim (3584 / 8 = 448) of every matrix and the embedding;
    # norms (attn, mlp, final) and q/k/v biases have no `embed` dim and stay whole.
    replicated = L * (2 * D + (H + 2 * K) * Dh) + D
    assert replicated == 333_312
    per_device = ((total - replicated) // 8 + replicated) * 2
    assert per_device == 1_904_487_424
    mesh = abstract_mesh((1, 8, 1))
    assert param_bytes(cfg, mesh, strategy_rules("fsdp")) == per_device
    p = plan(load_config(None, BF16), cfg, "h100", 8)
    assert p.strategy("fsdp").generation.weights == per_device


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_planned_weight_bytes_equal_the_shards_jax_places(strategy):
    cfg = model_config_from_name("tiny")
    section = builtin_layout(strategy, 8, cfg.num_heads)
    mesh, rules = make_mesh(section), strategy_rules(strategy)
    shapes = jax.eval_shape(lambda: init_params(cfg))
    params = jax.jit(lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes),
                     out_shardings=param_shardings(cfg, mesh, rules))()
    on_device_0 = sum(s.data.nbytes for leaf in jax.tree.leaves(params)
                      for s in leaf.addressable_shards if s.device == jax.devices()[0])
    assert param_bytes(cfg, abstract_mesh(tuple(mesh.shape.values())), rules) == on_device_0


@pytest.mark.parametrize("strategy", ["dp", "fsdp_tp"])
def test_planned_per_layer_copy_equals_the_shards_jax_places(strategy):
    cfg = dataclasses.replace(model_config_from_name("tiny"), tie_word_embeddings=True)
    section = builtin_layout(strategy, 8, cfg.num_heads)
    mesh, rules = make_mesh(section), strategy_rules(strategy)
    shapes = jax.eval_shape(lambda: per_layer(init_params(cfg), cfg))
    copy = jax.jit(lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes),
                   out_shardings=weight_shardings(PER_LAYER, cfg, mesh, rules))()
    on_device_0 = sum(s.data.nbytes for leaf in jax.tree.leaves(copy)
                      for s in leaf.addressable_shards if s.device == jax.devices()[0])
    assert engine_copy_bytes(cfg, PER_LAYER, abstract_mesh(tuple(mesh.shape.values())), rules) == on_device_0
    plans = {p: generation_breakdown(cfg, EngineSection(), abstract_mesh((1, 1, 1)), rules, platform=p)
             for p in ("cpu", "gpu")}
    assert plans["cpu"].weights - plans["gpu"].weights == engine_copy_bytes(
        cfg, PER_LAYER, abstract_mesh((1, 1, 1)), rules)   # auto: the copy only on CPU


def test_72b_full_finetuning_does_not_fit_8xh100_under_dp_but_its_weights_fit_under_fsdp():
    p = plan(load_config(None, BF16), model_config_from_name("qwen2-72b"), "h100", 8)
    dp, fsdp = p.strategy("dp"), p.strategy("fsdp")
    assert dp.training["full"].weights > 80 * GiB            # 145 GB of bf16 weights per device
    assert not p.fits("dp", "full") and not p.fits("dp", "generation")
    assert fsdp.training["full"].weights < 20 * GiB           # an eighth of them
    assert p.fits("fsdp", "generation")
    # Honest answer for full fine-tuning: weights + fp32 master + Adam + grads alone are
    # 18 bytes/param / 8 = 152 GiB per device, before any activation.
    full = fsdp.training["full"]
    assert full.weights + full.trainable + full.optimizer + full.grads > 150 * GiB
    assert not p.fits("fsdp", "full")


def test_lora_trains_only_adapters_and_full_keeps_fp32_master_and_adam_moments():
    cfg = model_config_from_name("qwen2-7b", param_dtype="bfloat16")
    train = TrainSection(lora=dataclasses.replace(TrainSection().lora, rank=8))
    mesh, rules = abstract_mesh((8, 1, 1)), strategy_rules("dp")
    n = cfg.num_params()
    full = training_breakdown(cfg, train, "full", mesh, rules)
    assert (full.weights, full.trainable, full.optimizer, full.grads) == (2 * n, 4 * n, 8 * n, 4 * n)
    lora = training_breakdown(cfg, train, "lora", mesh, rules)
    D, F, q, kv = 3584, 18944, 28 * 128, 4 * 128
    adapter_params = 28 * 8 * ((D + q) + 2 * (D + kv) + (q + D) + 2 * (D + F) + (F + D))
    assert lora.weights == 2 * n
    assert (lora.trainable, lora.optimizer, lora.grads) == (4 * adapter_params, 8 * adapter_params,
                                                           4 * adapter_params)


def test_kv_cache_is_split_over_batch_and_kv_heads():
    cfg = model_config_from_name("qwen2-7b", param_dtype="bfloat16", compute_dtype="bfloat16")
    engine = EngineSection(slots=16, max_prefill_len=4096, max_new_tokens=12288)
    whole = 16 * (4096 + 12288) * 28 * 4 * 128 * 2 * 2       # slots x len x L x K x Dh x (k,v) x bf16
    on = lambda strategy, shape: generation_breakdown(  # noqa: E731
        cfg, engine, abstract_mesh(shape), strategy_rules(strategy), platform="tpu").kv_cache
    assert on("dp", (1, 1, 1)) == whole
    assert on("dp", (8, 1, 1)) == whole // 8                  # slots over data
    assert on("tp", (1, 1, 4)) == whole // 4                  # 4 KV heads over tensor
    assert on("tp", (1, 1, 8)) == whole                       # 8 does not divide 4: replicated
    assert on("fsdp_tp", (1, 4, 2)) == whole // 8
    # The engine allocates whole 256-position cache blocks.
    assert cache_length(EngineSection(max_prefill_len=100, max_new_tokens=100)) == 256


def test_fsdp_steps_hold_gathered_layers_in_compute_dtype():
    cfg = model_config_from_name("qwen2-7b", param_dtype="bfloat16")
    train = TrainSection(compute_dtype="bfloat16")
    layer_params = (7_615_616_512 - 2 * 152064 * 3584 - 3584) // 28
    assert layer_params == 233_057_792
    fsdp = abstract_mesh((1, 8, 1)), strategy_rules("fsdp")
    lora = training_breakdown(cfg, train, "lora", *fsdp)
    assert lora.workspace == 2 * layer_params * 2             # forward and backward gathers, bf16
    full = training_breakdown(cfg, train, "full", *fsdp)
    assert full.workspace == 2 * layer_params * 2 + layer_params * 4   # + the fp32 layer grad
    assert training_breakdown(cfg, train, "lora", abstract_mesh((8, 1, 1)),
                              strategy_rules("dp")).workspace == 0


def test_activation_estimate_tracks_what_xla_allocates():
    cfg, seq = model_config_from_name("tiny"), 1024
    params = jax.eval_shape(lambda: init_params(cfg))
    tokens = jnp.zeros((1, seq), jnp.int32)
    loss = lambda p, t: forward(p, cfg, t, remat="full", return_hidden=True).hidden.sum()  # noqa: E731
    temp = jax.jit(jax.grad(loss)).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes
    est = training_activations(cfg, 1, seq, "full", abstract_mesh((1, 1, 1)), strategy_rules("dp"))
    assert 0.6 < est / temp < 1.5, (est, temp)


def test_builtin_layouts_cover_the_devices_and_respect_heads():
    assert builtin_layout("tp", 8, 28).tensor == 4            # 8 does not divide 28 heads
    assert (builtin_layout("tp", 8, 28).data, builtin_layout("fsdp", 8, 28).fsdp) == (2, 8)
    fsdp_tp = builtin_layout("fsdp_tp", 64, 64)
    assert (fsdp_tp.fsdp, fsdp_tp.tensor) == (8, 8)


def test_device_table_reads_jax_device_kinds():
    assert device_spec("TPU v5 lite").name == "v5e"
    assert device_spec("TPU v5").name == "v5p"
    assert device_spec("TPU v6 lite").name == "v6e"
    assert device_spec("NVIDIA H100 80GB HBM3").name == "h100"
    assert device_spec("NVIDIA A100-SXM4-80GB").hbm_bytes == 80 * GiB
    assert device_spec("NVIDIA A100-SXM4-40GB").hbm_bytes == 40 * GiB
    assert device_spec("h200").bandwidth == 4.8e12
    host = device_spec("cpu")                                 # this host's RAM over its devices
    assert host.name == "cpu" and host.devices_per_host == 8 and host.hbm_bytes > 0
    assert device_spec("abacus") is None
    with pytest.raises(ValueError, match="unknown device"):
        plan(Config(), model_config_from_name("tiny"), "abacus", 8)


def test_generation_plans_one_replica_per_host_on_a_pod():
    cfg = load_config(None, BF16 + ["mesh.replica_per_host=true"])
    p = plan(cfg, model_config_from_name("qwen2-7b"), "v5p", 64)
    assert p.strategy("dp").mesh == (64, 1, 1)
    assert p.strategy("dp").generation_mesh == (4, 1, 1)      # 4 chips per v5p host
    glob = plan(load_config(None, BF16 + ["mesh.replica_per_host=false"]),
                model_config_from_name("qwen2-7b"), "v5p", 64)
    assert glob.strategy("fsdp").generation_mesh == (1, 64, 1)


def test_format_plan_is_a_table_with_a_verdict_per_strategy_and_workload():
    cfg = load_config(None, BF16 + ["mesh.fsdp=4", "mesh.tensor=2", "mesh.data=1",
                                    "mesh.strategy=fsdp", "mesh.replica_per_host=false"])
    text = format_plan(plan(cfg, model_config_from_name("llama-3.1-8b"), "TPU v5 lite", 8))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3 * (len(STRATEGIES) + 1)            # + the configured 1x4x2 fsdp mesh
    assert any(r.startswith("| config:fsdp | 1x4x2 |") for r in rows)
    assert all(r.rstrip(" |").endswith("yes") or "NO (" in r for r in rows)
    assert "train lora*" in text


def test_the_largest_prefill_is_bounded_by_prefill_tokens():
    assert prefill_rows(EngineSection(slots=64, max_prefill_len=8192, prefill_tokens=32768)) == 4
    assert prefill_rows(EngineSection(slots=3, max_prefill_len=100, prefill_tokens=10 ** 6)) == 3
    assert prefill_rows(EngineSection(slots=8, max_prefill_len=4096, prefill_tokens=1000)) == 1


# Per-chip bytes the TPU compiler reported for configs/qwen2-7b-instruct.yaml on v5p-16
# (`python -m launch.iterate --config configs/qwen2-7b-instruct.yaml --rehearse v5p-16`,
# README table; 32 slots, 16,384-token prompts + 16,384 new, LoRA at 16k tokens; the prompt
# piece, 1x1024 with its decode step, only with the shipped defaults), with
# XLA attention and the training layout shrunk to each host (compiled before the
# attention backends), and with the shipped defaults (splash/paged attention, a
# tensor-parallel generation replica per host).
COMPILED_QWEN2_7B_V5P16 = {
    "xla": (["model.attention_impl=xla", "mesh.generation=training"], (1, 4, 1),
            {"lora": 14.03 * GiB, "prefill": 29.35 * GiB, "decode": 33.70 * GiB}),
    "shipped": ([], (1, 1, 4), {"lora": 13.87 * GiB, "prefill": 19.95 * GiB, "decode": 17.69 * GiB,
                                "piece": 17.73 * GiB}),
}


@pytest.mark.parametrize("compiled_with", COMPILED_QWEN2_7B_V5P16)
def test_the_plan_is_within_15_percent_of_the_compiled_qwen2_7b_run(compiled_with):
    overrides, generation_mesh, compiled = COMPILED_QWEN2_7B_V5P16[compiled_with]
    cfg = load_config("configs/qwen2-7b-instruct.yaml", overrides)
    mcfg = model_config_from_name("qwen2-7b", "bfloat16", "bfloat16")
    p = plan(cfg, mcfg, "v5p", 8)
    s = p.strategy("fsdp")
    assert s.mesh == (1, 8, 1) and s.generation_mesh == generation_mesh  # a replica per 4-chip host
    assert s.training["lora"].total == pytest.approx(compiled["lora"], rel=0.15)
    rules = generation_rules(cfg.mesh, 8, 4)
    kernels = kernel_breakdowns(mcfg, cfg.engine, abstract_mesh(s.generation_mesh), rules, "tpu",
                                cfg.model.attention_impl)
    for kernel in ("prefill", "decode", "piece"):
        if kernel in compiled:
            assert kernels[kernel].total == pytest.approx(compiled[kernel], rel=0.15), kernel
    assert s.generation == max(kernels.values(), key=lambda k: k.total)


def test_tpu_decode_counts_a_copy_of_each_stacked_weight_whose_shard_is_not_128_lanes_wide():
    rules, mesh = strategy_rules("tp"), abstract_mesh((1, 1, 4))   # one host's 4 chips, tensor parallel
    q72 = model_config_from_name("qwen2-72b", param_dtype="bfloat16")
    L, D, F = 80, 8192, 29568 // 4                        # the mlp shard is 7,392 columns: not aligned
    assert unaligned_layer_bytes(q72, mesh, rules, jnp.bfloat16) == 2 * L * D * F * 2   # w_gate and w_up
    q7 = model_config_from_name("qwen2-7b", param_dtype="bfloat16")   # 18944 / 4 = 37 x 128
    assert unaligned_layer_bytes(q7, mesh, rules, jnp.bfloat16) == 0
    engine = EngineSection(slots=16, max_prefill_len=4096, max_new_tokens=4096)
    tpu, gpu = (kernel_breakdowns(q72, engine, mesh, rules, p)["decode"].total for p in ("tpu", "gpu"))
    assert tpu - gpu == 2 * L * D * F * 2

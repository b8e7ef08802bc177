"""Greedy decoding equals transformers' generate(do_sample=False), on every mesh strategy."""

import numpy as np
import pytest
import torch

from chat_fixtures import make_chat_checkpoint
from engine_fixtures import GREEDY, build_engine, raw_requests
from hf_fixtures import hf_model

PROMPTS = ["The quick brown fox", "Write a long essay about rivers, mountains and the sea.",
           "写一篇关于春天的长文章。", "A"]
LLAMA31 = dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=32))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"qwen2": make_chat_checkpoint(root / "qwen2", "qwen2"),
            "llama3.1": make_chat_checkpoint(root / "llama", "llama", **LLAMA31),
            # head_dim 128: the paged decode kernel's lane width
            "qwen2-d128": make_chat_checkpoint(root / "qwen2-d128", "qwen2", hidden_size=256,
                                               num_attention_heads=2, num_key_value_heads=1)}


def hf_greedy(path, prompts, new_tokens, eos_ids):
    model = hf_model(path)
    from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
    tok = load_tokenizer(path)
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0,
                             eos_token_id=eos_ids, pad_token_id=tok.pad_token_id)
    seqs = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        cut = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
        seqs.append(tuple(row[:cut]))
    return seqs


@pytest.mark.parametrize("layout", ["stacked", "per_layer"])
@pytest.mark.parametrize("kind", ["qwen2", "llama3.1"])
def test_greedy_matches_hf_generate_on_left_padded_batch(checkpoints, kind, layout):
    engine = build_engine(checkpoints[kind], weight_layout=layout)
    assert isinstance(engine.params["layers"], list) == (layout == "per_layer")
    ours = [c.token_ids for c in engine.generate(raw_requests(PROMPTS))]
    theirs = hf_greedy(checkpoints[kind], PROMPTS, 64, engine.eos_ids)
    assert ours == theirs
    assert max(map(len, ours)) >= 64 or all(c < 64 for c in map(len, ours))


@pytest.mark.parametrize("kind,new_tokens", [("qwen2", 32), ("llama3.1", 32), ("qwen2-d128", 16)])
def test_pallas_backend_in_interpret_mode_matches_hf_generate(checkpoints, kind, new_tokens):
    """Splash prefill, and (head_dim 128) paged decode reading each slot's own length, on
    the head_dim-last cache layout: the same greedy tokens as transformers.

    The paged kernel loads K/V as bf16 even from this fp32 cache, so on the random
    d128 model one row's near-tied logits flip at token 21; 16 tokens are compared there."""
    engine = build_engine(checkpoints[kind], attention_impl="pallas", max_new_tokens=32)
    assert engine.attention.interpret and engine.attention.layout.kind == "paged"
    params = GREEDY.__class__(**{**GREEDY.__dict__, "max_new_tokens": new_tokens})
    ours = [c.token_ids for c in engine.generate(raw_requests(PROMPTS, params))]
    assert ours == hf_greedy(checkpoints[kind], PROMPTS, new_tokens, engine.eos_ids)


@pytest.mark.parametrize("strategy,data,fsdp,tensor,layout", [
    ("dp", 8, 1, 1, "auto"), ("fsdp", 1, 8, 1, "auto"), ("tp", 2, 1, 4, "auto"),
    ("fsdp_tp", 1, 4, 2, "auto"), ("fsdp_tp", 1, 4, 2, "stacked")])
def test_same_greedy_tokens_on_8_device_meshes(checkpoints, strategy, data, fsdp, tensor, layout):
    path = checkpoints["qwen2"]
    single = [c.token_ids for c in build_engine(path).generate(raw_requests(PROMPTS))]
    engine = build_engine(path, strategy, data, fsdp, tensor, slots=8, weight_layout=layout)
    sharded = [c.token_ids for c in engine.generate(raw_requests(PROMPTS))]
    assert sharded == single


def test_auto_layout_is_per_layer_on_cpu(checkpoints):
    engine = build_engine(checkpoints["qwen2"])
    assert isinstance(engine.params["layers"], list)
    assert engine.params["layers"][0]["wq"].shape == engine.model.params["layers"]["wq"].shape[1:]


def test_continuous_batching_returns_static_outputs_in_input_order(checkpoints):
    path = checkpoints["qwen2"]
    rng = np.random.default_rng(0)
    prompts = [PROMPTS[i % 4] * (1 + i % 3) for i in range(10)]
    reqs = [r.__class__(id=r.id, prompt=r.prompt, params=r.params.__class__(
        max_new_tokens=int(rng.integers(5, 60)), seed=i, stop=()))
        for i, r in enumerate(raw_requests(prompts))]
    cont = build_engine(path, mode="continuous").generate(reqs)
    static = build_engine(path, mode="static").generate(reqs)
    assert [c.id for c in cont] == [r.id for r in reqs]
    assert [c.token_ids for c in cont] == [c.token_ids for c in static]
    assert [c.finish_reason for c in cont] == [c.finish_reason for c in static]


def test_long_decode_does_not_recompile(checkpoints):
    engine = build_engine(checkpoints["qwen2"], slots=2, max_prefill_len=16, max_new_tokens=4200,
                          decode_chunk=256)
    params = GREEDY.__class__(greedy=True, repetition_penalty=1.0, max_new_tokens=4100, stop=())
    before = engine.compile_count
    (c,) = engine.generate(raw_requests(["A"], params))
    assert len(c.token_ids) == 4100 and c.finish_reason == "length"
    assert engine.compile_count - before == 3  # the empty state, one prefill, one decode kernel
    # the engine counts its decode work: the first token comes from prefill
    assert engine.stats["decode_steps"] == 4099 and engine.stats["decode_calls"] == 17  # ceil(4099/256)
    assert engine.stats["decode_s"] > 0
    first = engine.compile_count
    engine.generate(raw_requests(["The quick brown fox"], params))
    assert engine.compile_count == first

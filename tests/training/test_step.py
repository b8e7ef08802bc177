"""The train step: loss definition, masking, packing, chunking, accumulation, torch parity."""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import add_tokenizer, hf_model, make_checkpoint
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.config import TrainSection
from selflengthen_jax.models.transformer import forward
from selflengthen_jax.training.data import (Batch, DataPosition, Layout, SFTData, encode_dataset,
                                            make_batch)
from selflengthen_jax.training.optimizer import make_optimizer
from selflengthen_jax.training.step import StepSpec, fresh_state, micro_loss, token_nll, train_step

PLAIN_ADAMW = TrainSection(learning_rate=1e-3, warmup_ratio=0.0, max_grad_norm=0.0, weight_decay=0.0)


def first_batch(tiny, recs, accum=1, rows=None):
    examples = encode_dataset(recs, tiny.tok, 128)
    layout = Layout(accum, rows or len(recs) // accum)
    return SFTData(examples, layout, 0, 128, packing=False).batch(DataPosition())


def one_step(params, batch, spec, train=PLAIN_ADAMW):
    optimizer, schedule = make_optimizer(train, total_steps=1)
    state = jax.jit(partial(fresh_state, optimizer=optimizer))(params)
    step = jax.jit(partial(train_step, spec=spec, optimizer=optimizer, schedule=schedule))
    return step(state, None, batch)


@partial(jax.jit, static_argnums=2)
def loss_and_grads(params, micro, spec):
    (nll, n), g = jax.value_and_grad(micro_loss, has_aux=True)(params, None, micro, spec)
    return nll / n, g


@partial(jax.jit, static_argnums=2)
def logits_of(params, micro, cfg):
    return forward(params, cfg, micro.tokens, positions=micro.positions,
                   segment_ids=micro.segment_ids).logits


def row(batch, m=0):
    return Batch(*(x[m] for x in batch))


def test_loss_is_the_mean_nll_over_response_tokens(tiny, records):
    micro = row(first_batch(tiny, records(3)))
    logits = np.asarray(logits_of(tiny.params, micro, tiny.cfg), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, micro.targets[..., None], -1)[..., 0]
    want = -picked[micro.weights > 0].mean()
    loss, _ = loss_and_grads(tiny.params, micro, StepSpec(tiny.cfg))
    assert float(loss) == pytest.approx(want, abs=1e-5)


def test_labels_of_prompt_tokens_change_nothing(tiny, records):
    micro = row(first_batch(tiny, records(3)))
    scrambled = micro._replace(targets=np.where(micro.weights > 0, micro.targets, 77))
    assert (scrambled.targets != micro.targets).any()
    a, ga = loss_and_grads(tiny.params, micro, StepSpec(tiny.cfg))
    b, gb = loss_and_grads(tiny.params, scrambled, StepSpec(tiny.cfg))
    assert float(a) == float(b)
    jax.tree.map(np.testing.assert_array_equal, ga, gb)


def test_packed_examples_get_the_same_losses_as_unpacked(tiny, records):
    examples = encode_dataset(records(3), tiny.tok, 128)
    unpacked = row(make_batch(examples, [[0], [1], [2]], 256, Layout(1, 3)))
    packed = row(make_batch(examples, [[0, 1, 2]], 256, Layout(1, 1)))
    spec = StepSpec(tiny.cfg)
    for i in range(3):
        alone = jax.tree.map(lambda x: x[i:i + 1], unpacked)
        only_i = packed._replace(weights=packed.weights * (packed.segment_ids == i + 1))
        assert float(loss_and_grads(tiny.params, only_i, spec)[0]) == pytest.approx(
            float(loss_and_grads(tiny.params, alone, spec)[0]), abs=1e-5)


def test_chunked_logits_give_the_same_loss_and_gradient():
    k = jax.random.split(jax.random.key(0), 3)
    hidden, head = jax.random.normal(k[0], (2, 128, 16)), jax.random.normal(k[1], (16, 50))
    targets = jax.random.randint(k[2], (2, 128), 0, 50)
    weights = (jnp.arange(128) % 3 > 0).astype(jnp.float32)[None].repeat(2, 0)
    full = jax.jit(jax.value_and_grad(lambda h, w: token_nll(h, w, targets, weights, 128), (0, 1)))
    chunked = jax.jit(jax.value_and_grad(lambda h, w: token_nll(h, w, targets, weights, 32), (0, 1)))
    (a, ga), (b, gb) = full(hidden, head), chunked(hidden, head)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    jax.tree.map(partial(np.testing.assert_allclose, atol=1e-5), ga, gb)


def test_accumulating_two_micro_batches_equals_one_batch_of_both(tiny, records):
    recs = records(2)
    spec = StepSpec(tiny.cfg)
    both, m_both = one_step(tiny.params, first_batch(tiny, recs, accum=1, rows=2), spec)
    accum, m_accum = one_step(tiny.params, first_batch(tiny, recs, accum=2, rows=1), spec)
    assert float(m_both["loss"]) == pytest.approx(float(m_accum["loss"]), abs=1e-6)
    jax.tree.map(partial(np.testing.assert_allclose, atol=1e-5), both.trainable, accum.trainable)


def test_bf16_compute_trains_float32_master_weights(tiny, records):
    batch = first_batch(tiny, records(2))
    bf16_base = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tiny.params)
    spec = StepSpec(dataclasses.replace(tiny.cfg, compute_dtype="bfloat16"))
    state, metrics = one_step(bf16_base, batch, spec)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable))
    _, fp32_metrics = one_step(tiny.params, batch, StepSpec(tiny.cfg))
    assert float(metrics["loss"]) == pytest.approx(float(fp32_metrics["loss"]), abs=0.05)


@pytest.fixture(scope="module", params=["untied", "tied"])
def parity_model(request, tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp(request.param) / "m", "qwen2", vocab_size=128,
                           tie_word_embeddings=request.param == "tied")
    add_tokenizer(path, 128)
    return path


def torch_step(path, batch, lr):
    """transformers + torch.optim.AdamW on the same batch and loss: (loss, logits after)."""
    model = hf_model(path).train()
    t = {k: torch.tensor(np.asarray(v[0])) for k, v in batch._asdict().items()}
    inputs = dict(input_ids=t["tokens"].long(), attention_mask=(t["segment_ids"] > 0).long(),
                  position_ids=t["positions"].long())
    logp = torch.log_softmax(model(**inputs).logits.float(), -1)
    nll = -logp.gather(-1, t["targets"].long()[..., None])[..., 0]
    loss = (nll * t["weights"]).sum() / t["weights"].sum()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return float(loss), model(**inputs).logits.numpy()


def test_one_adamw_step_matches_transformers_and_torch(parity_model, tiny, records):
    cfg = read_config(parity_model)
    batch = first_batch(tiny, records(2, seed=5))
    state, metrics = one_step(load_params(parity_model, cfg), batch, StepSpec(cfg))
    torch_loss, torch_logits = torch_step(parity_model, batch, PLAIN_ADAMW.learning_rate)
    assert float(metrics["loss"]) == pytest.approx(torch_loss, abs=1e-5)
    micro = row(batch)
    ours = np.asarray(logits_of(state.trainable, micro, cfg))
    real = micro.segment_ids > 0
    assert np.abs(ours - torch_logits)[real].max() < 2e-4


def test_lora_dropout_draws_masks_from_seed_and_step_only(tiny, records):
    """Masks depend on (dropout_seed, step, micro-batch): a resumed run redraws the same
    ones, and each step gets new ones; without dropout the gradient is the plain one."""
    from selflengthen_jax.models.lora import init_lora
    from selflengthen_jax.training.step import accumulate

    rng = np.random.default_rng(3)
    adapters = {k: {"a": v["a"], "b": jnp.asarray(0.1 * rng.standard_normal(v["b"].shape), jnp.float32)}
                for k, v in init_lora(tiny.cfg, 4, 0).items()}
    batch = first_batch(tiny, records(2), accum=2, rows=1)
    grads = jax.jit(lambda spec, step: accumulate(adapters, tiny.params, batch, spec, step)[2],
                    static_argnums=0)
    spec = StepSpec(tiny.cfg, lora_scale=2.0, lora_dropout=0.3, dropout_seed=5)
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])  # noqa: E731
    g0, again, g1 = flat(grads(spec, 0)), flat(grads(spec, 0)), flat(grads(spec, 1))
    plain = flat(grads(dataclasses.replace(spec, lora_dropout=0.0), 0))
    np.testing.assert_array_equal(g0, again)
    assert np.abs(g0 - g1).max() > 1e-6 and np.abs(g0 - plain).max() > 1e-6
    other_seed = flat(grads(dataclasses.replace(spec, dropout_seed=6), 0))
    assert np.abs(g0 - other_seed).max() > 1e-6

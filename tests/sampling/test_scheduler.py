"""The scheduler and the public kernels: per-request failures, on-device ends, adapters
that never recompile, and scoring that matches transformers."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from chat_fixtures import make_chat_checkpoint
from engine_fixtures import GREEDY, build_engine, raw_requests
from hf_fixtures import hf_model
from selflengthen_jax.models.lora import init_lora
from selflengthen_jax.sampling import kernels
from selflengthen_jax.sampling.request import Request


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return make_chat_checkpoint(tmp_path_factory.mktemp("c") / "m")


@pytest.fixture(scope="module")
def engine(path):
    return build_engine(path, slots=4, max_prefill_len=32, max_new_tokens=32, decode_chunk=8)


def test_one_over_long_prompt_gets_prompt_too_long_and_the_other_15_complete(engine):
    params = dataclasses.replace(GREEDY, max_new_tokens=12)
    prompts = [f"Story {i} about rivers" for i in range(16)]
    prompts[5] = "a very long prompt " * 40
    done = []
    out = engine.generate(raw_requests(prompts, params), on_complete=lambda i, c: done.append(i))
    assert out[5].finish_reason == "prompt_too_long"
    assert out[5].token_ids == () and out[5].text == "" and out[5].prompt_tokens > 32
    others = [c for i, c in enumerate(out) if i != 5]
    assert all(c.finish_reason in ("eos", "length") and c.token_ids for c in others)
    assert sorted(done) == list(range(16))  # every request reported, the skipped one too
    # the others got exactly what they get without the long prompt in their batch
    alone = engine.generate(raw_requests([p for i, p in enumerate(prompts) if i != 5], params))
    assert [c.token_ids for c in others] == [c.token_ids for c in alone]


def test_empty_state_is_born_sharded_with_every_slot_free(engine):
    state = engine.empty_state()
    assert jax.tree.map(lambda a: a.sharding, state) == engine.state_shardings()
    assert (np.asarray(state.finish) == kernels.RELEASED).all()


def test_rows_end_on_eos_everywhere_and_on_end_of_turn_only_in_chat():
    ends = kernels.Ends(eos=np.asarray([7], np.int32), turn=np.asarray([9], np.int32))
    tokens = np.asarray([7, 9, 9, 3], np.int32)
    chat = np.asarray([False, False, True, True])
    assert kernels.ends_row(tokens, chat, ends).tolist() == [True, False, True, False]


def test_chat_requests_and_templated_raw_prompts_stop_at_end_of_turn(engine):
    assert engine.tok.convert_ids_to_tokens(engine.turn_ids) == ["<|im_end|>"]
    assert engine.is_chat(Request(id="c", messages=[{"role": "user", "content": "hi"}]))
    assert not engine.is_chat(Request(id="r", prompt="Once upon a time"))
    assert engine.is_chat(Request(id="t", prompt="<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"))


def _trained(engine, seed):
    ads = init_lora(engine.cfg, rank=4, seed=seed)
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(ads)))
    return {n: {"a": a["a"], "b": 0.3 * jax.random.normal(next(keys), a["b"].shape)} for n, a in ads.items()}


def test_changing_adapters_never_recompiles(path):
    engine = build_engine(path, slots=4, max_prefill_len=32, max_new_tokens=16, decode_chunk=8)
    params = dataclasses.replace(GREEDY, max_new_tokens=8)
    reqs = [Request(id=f"{a}{i}", prompt=f"Rivers {i}", params=params, adapter=a)
            for i, a in enumerate(["base", "generator", "extender", "generator"])]
    counts, outs = [], []
    for iteration in range(3):  # as the loop does: new adapters every iteration
        engine.set_adapters({"generator": (_trained(engine, 2 * iteration), 2.0),
                             "extender": (_trained(engine, 2 * iteration + 1), 2.0)})
        outs.append([c.token_ids for c in engine.generate(reqs)])
        counts.append(engine.compile_count)
    assert counts[0] == counts[1] == counts[2]
    assert outs[0][0] == outs[1][0]            # the base row ignores the adapters
    assert outs[0][1:] != outs[1][1:]          # the adapted rows do not


def test_score_matches_transformers_log_probs(engine, path):
    pairs = [("Once upon a time", " there was"), ("Once upon a time", " a river"),
             ("The sea", " is"), ("Write", "")]
    ours = engine.loglikelihood(pairs)
    model = hf_model(path)
    want = []
    for prompt, cont in pairs:
        p = engine.tok.encode(prompt, add_special_tokens=False)
        c = engine.tok.encode(cont, add_special_tokens=False)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1).numpy()
        want.append(sum(lp[len(p) - 1 + k, t] for k, t in enumerate(c)))
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
    assert ours[3] == 0.0


def test_identical_prompts_share_one_prefill_and_sample_as_if_alone(engine):
    prompts = ["Write about rivers", "Write about rivers", "The sea", "Write about rivers"]
    sampled = dataclasses.replace(GREEDY, greedy=False, temperature=1.0, top_k=0, max_new_tokens=10)
    reqs = [Request(id=f"r{i}", prompt=p, params=dataclasses.replace(sampled, seed=i))
            for i, p in enumerate(prompts)]
    shared0 = engine.stats["prefill_tokens_shared"]
    together = engine.generate(reqs)
    rivers = len(engine.tok.encode("Write about rivers"))
    assert engine.stats["prefill_tokens_shared"] - shared0 == 2 * rivers
    alone = [engine.generate([r])[0] for r in reqs]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert together[0].token_ids != together[1].token_ids  # own seeds, own samples


def test_long_prompts_prefilled_in_pieces_between_decode_chunks_give_the_same_tokens(path):
    prompts = ["Write a long essay about rivers, mountains and the sea. " * 3, "The sea",
               "A long story begins here. The quick brown fox jumps over the lazy dog. " * 2, "Rivers"]
    sampled = dataclasses.replace(GREEDY, greedy=False, temperature=1.0, top_k=0, max_new_tokens=12)
    reqs = [Request(id=f"r{i}", prompt=p, params=dataclasses.replace(sampled, seed=i))
            for i, p in enumerate(prompts)]
    whole = build_engine(path, slots=2, max_prefill_len=64, max_new_tokens=16, decode_chunk=4,
                         mixed_batches=False)
    pieces = build_engine(path, slots=2, max_prefill_len=64, max_new_tokens=16, decode_chunk=4,
                          prefill_chunk=16, mixed_batches=True)   # each piece also steps the decoding slot
    assert max(len(whole.prompt_ids(r)) for r in reqs) > 32   # at least three pieces
    want, got = whole.generate(reqs), pieces.generate(reqs)
    assert pieces.stats["prefill_pieces"] >= 3 and whole.stats["prefill_pieces"] == 0
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in want]


def test_a_long_prompt_stalls_the_decoding_slots_for_one_piece_at_a_time(path):
    """While a slot decodes, each piece of a long prompt (which steps the decoding slots
    once too) is followed by a decode chunk of about `prefill_chunk` tokens, never by
    another piece or a whole `decode_chunk`."""
    engine = build_engine(path, eos=False, slots=3, max_prefill_len=64, max_new_tokens=48, decode_chunk=32,
                          prefill_chunk=8)   # budgets alone end rows
    calls = []

    def spy(kind, fn):
        def call(state, *args):
            calls.append((kind, int((np.asarray(state.finish) == kernels.RUNNING).sum()), args[0]))
            return fn(state, *args)
        return call

    engine.mixed_step = spy("piece", engine.mixed_step)
    engine.decode = spy("decode", engine.decode)
    long_prompt = "A long story begins here. The quick brown fox jumps over the lazy dog. " * 2
    reqs = [Request(id="a", prompt="Rivers", params=dataclasses.replace(GREEDY, max_new_tokens=40)),
            Request(id="b", prompt="The sea", params=dataclasses.replace(GREEDY, max_new_tokens=40)),
            Request(id="long", prompt=long_prompt, params=dataclasses.replace(GREEDY, max_new_tokens=4))]
    assert len(engine.prompt_ids(reqs[2])) > 4 * 8      # five pieces or more
    out = engine.generate(reqs)
    assert [len(c.token_ids) for c in out] == [40, 40, 4]
    pieces = [k for k, (kind, _, _) in enumerate(calls) if kind == "piece"]
    assert len(pieces) >= 5 and all(calls[k][1] == 2 for k in pieces)  # both short rows decode throughout
    for k in pieces[:-1]:
        kind, running, steps = calls[k + 1]
        assert kind == "decode" and steps == -(-8 // running)   # about prefill_chunk decode tokens


def test_refills_ride_a_decode_step_and_give_the_tokens_of_separate_steps(path):
    """With mixed batches a prompt admitted while other slots decode is prefilled in the
    same forward pass as their next step: the same tokens, fewer passes over the weights."""
    sampled = dataclasses.replace(GREEDY, greedy=False, temperature=1.0, top_k=0)
    reqs = [Request(id=f"r{i}", prompt=f"Story {i} about rivers",
                    params=dataclasses.replace(sampled, seed=i, max_new_tokens=3 + 3 * (i % 3)))
            for i in range(8)]
    kw = dict(eos=False, slots=3, max_prefill_len=32, max_new_tokens=16, decode_chunk=8)
    mixed, apart = build_engine(path, mixed_batches=True, **kw), build_engine(path, mixed_batches=False, **kw)
    got, want = mixed.generate(reqs), apart.generate(reqs)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [len(c.token_ids) for c in got] == [r.params.max_new_tokens for r in reqs]
    pieces = mixed.stats["prefill_pieces"]   # slots freed at the same step share one
    assert 3 <= pieces <= len(reqs) - 3 and apart.stats["prefill_pieces"] == 0
    # each refill's pass also made the decoding slots' next token: fewer passes in all
    passes = lambda e: e.stats["decode_steps"] + e.stats["prefill_pieces"] + e.stats["prefill_calls"]  # noqa: E731
    assert passes(mixed) < passes(apart)

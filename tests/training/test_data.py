"""SFT data: chat-template encoding, prompt masking, buckets, packing, order and resume."""

import numpy as np
import pytest

from selflengthen_jax.checkpoint.tokenizer import chat_prompt, encode
from selflengthen_jax.training.data import (DataError, DataPosition, Layout, SFTData, bucket_lengths,
                                            encode_dataset, encode_record, read_records)


def supervised_targets(batch, m, r):
    return batch.targets[m, r][batch.weights[m, r] > 0].tolist()


def test_prompt_is_the_chat_template_and_response_ends_with_eos(tiny):
    ex = encode_record({"prompt": "w1 w2", "response": "w3 w4"}, tiny.tok, 128)
    prompt = encode(tiny.tok, chat_prompt(tiny.tok, [{"role": "user", "content": "w1 w2"}]))
    assert ex.tokens.tolist() == prompt + encode(tiny.tok, "w3 w4") + [tiny.tok.eos_token_id]
    assert ex.prompt_len == len(prompt)


def test_messages_records_encode_like_prompt_records(tiny):
    a = encode_record({"prompt": "w1", "response": "w2"}, tiny.tok, 128)
    b = encode_record({"messages": [{"role": "user", "content": "w1"}], "response": "w2"}, tiny.tok, 128)
    assert a.tokens.tolist() == b.tokens.tolist()


def test_only_response_tokens_and_eos_are_supervised(tiny):
    rec = {"prompt": "w1 w2 w3", "response": "w7 w8"}
    data = SFTData(encode_dataset([rec], tiny.tok, 128), Layout(1, 1), 0, 128, packing=False)
    batch = data.batch(DataPosition())
    assert supervised_targets(batch, 0, 0) == encode(tiny.tok, "w7 w8") + [tiny.tok.eos_token_id]
    n = len(encode_record(rec, tiny.tok, 128).tokens) - 1
    assert batch.segment_ids[0, 0].tolist() == [1] * n + [0] * (128 - n)


def test_long_responses_are_cut_at_cutoff_len_and_hopeless_prompts_dropped(tiny):
    long = encode_record({"prompt": "w1", "response": " ".join(["w5"] * 200)}, tiny.tok, 64)
    assert len(long.tokens) == 64 and long.tokens[-1] != tiny.tok.eos_token_id
    assert encode_record({"prompt": " ".join(["w1"] * 80), "response": "w2"}, tiny.tok, 64) is None
    with pytest.raises(DataError, match="cutoff_len=64"):
        encode_dataset([{"prompt": " ".join(["w1"] * 80), "response": "w2"}], tiny.tok, 64)


def test_bucket_lengths_are_powers_of_two_from_128_then_the_cutoff():
    assert bucket_lengths(1000) == (128, 256, 512, 1024)
    assert bucket_lengths(16384) == (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    assert bucket_lengths(300) == (128, 256, 384)


def all_batches(data, steps, start=DataPosition()):
    pos, out = start, []
    for _ in range(steps):
        out.append(data.batch(pos))
        pos = data.next(pos)
    return out


def test_batches_have_bucketed_shapes_and_cover_every_example_once_per_epoch(tiny, records):
    recs = records(10, response_words=(5, 200))
    examples = encode_dataset(recs, tiny.tok, 512)
    data = SFTData(examples, Layout(accum=2, global_rows=2), seed=0, cutoff_len=512, packing=False)
    assert data.num_steps(1) == 3  # 10 examples / 4 rows per step, last step padded
    seen = []
    for b in all_batches(data, 3):
        assert b.tokens.shape[:2] == (2, 2) and b.tokens.shape[2] in (128, 256, 512)
        seen += [tuple(b.tokens[m, r][b.segment_ids[m, r] > 0]) for m in range(2) for r in range(2)
                 if b.segment_ids[m, r].any()]
    assert sorted(seen) == sorted(tuple(e.tokens[:-1]) for e in examples)


def test_order_is_a_function_of_seed_and_epoch(tiny, records):
    examples = encode_dataset(records(12), tiny.tok, 128)
    make = lambda seed: SFTData(examples, Layout(1, 2), seed, 128, packing=False)  # noqa: E731
    first = [b.tokens for b in all_batches(make(0), 12)]
    assert all(np.array_equal(a, b) for a, b in zip(first, [b.tokens for b in all_batches(make(0), 12)]))
    assert not all(np.array_equal(a, b) for a, b in zip(first, [b.tokens for b in all_batches(make(1), 12)]))
    assert not all(np.array_equal(a, b) for a, b in zip(first[:6], first[6:]))  # epochs differ


def test_resuming_from_a_saved_position_continues_the_same_stream(tiny, records):
    data = SFTData(encode_dataset(records(7), tiny.tok, 128), Layout(1, 2), 3, 128, packing=False)
    straight = all_batches(data, 9)
    pos = DataPosition()
    for _ in range(5):
        pos = data.next(pos)
    saved = DataPosition.from_dict(pos.to_dict())
    resumed = all_batches(SFTData(data.examples, Layout(1, 2), 3, 128, packing=False), 4, saved)
    for a, b in zip(straight[5:], resumed):
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_packed_rows_hold_several_examples_with_restarting_positions(tiny, records):
    examples = encode_dataset(records(20, response_words=(3, 15)), tiny.tok, 128)
    data = SFTData(examples, Layout(1, 2), 0, 128, packing=True)
    batches = all_batches(data, data.num_steps(1))
    assert all(b.tokens.shape == (1, 2, 128) for b in batches)
    seen = []
    for b in batches:
        for r in range(2):
            segs, pos = b.segment_ids[0, r], b.positions[0, r]
            for s in range(1, segs.max() + 1):
                assert pos[segs == s].tolist() == list(range((segs == s).sum()))
                seen.append(tuple(b.tokens[0, r][segs == s]))
    assert len(batches) < len(examples) / 2  # packing saves rows
    assert sorted(seen) == sorted(tuple(e.tokens[:-1]) for e in examples)


def test_each_process_takes_its_own_rows_of_the_same_global_step(tiny, records):
    examples = encode_dataset(records(8), tiny.tok, 128)
    whole = SFTData(examples, Layout(2, 4), 0, 128, packing=False).batch(DataPosition())
    parts = [SFTData(examples, Layout(2, 4, p, 2), 0, 128, packing=False).batch(DataPosition())
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p.tokens for p in parts], axis=1), whole.tokens)


def test_missing_or_malformed_data_files_fail_with_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        read_records(bad)

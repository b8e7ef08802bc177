"""Stop strings spanning several tokens end a request and are cut from its text."""

import pytest

from chat_fixtures import make_chat_checkpoint
from engine_fixtures import GREEDY, build_engine, raw_requests


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return build_engine(make_chat_checkpoint(tmp_path_factory.mktemp("c") / "m"))


def test_multi_token_stop_string_is_caught_and_cut(engine):
    (free,) = engine.generate(raw_requests(["The quick brown fox"]))
    text = free.text
    # choose a stop string made of text the model really produces, spanning >= 2 tokens
    stop = next(text[i:i + 6] for i in range(8, len(text) - 6)
                if len(engine.tok.encode(text[i:i + 6], add_special_tokens=False)) >= 2)
    params = GREEDY.__class__(greedy=True, repetition_penalty=1.0, max_new_tokens=64, stop=(stop,))
    (stopped,) = engine.generate(raw_requests(["The quick brown fox"], params))
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[:text.index(stop)]
    assert stop not in stopped.text
    assert len(stopped.token_ids) < len(free.token_ids)


def test_raw_completion_continues_an_assistant_turn_already_started(engine):
    from selflengthen_jax.checkpoint.tokenizer import chat_prompt, encode
    from selflengthen_jax.sampling.request import Request
    msgs = [{"role": "user", "content": "Write about rivers"}]
    (chat,) = engine.generate([Request(id="c", messages=msgs, params=GREEDY)])
    head = encode(engine.tok, chat_prompt(engine.tok, msgs))
    # a split point where text re-tokenises to the same ids (BPE may merge across it)
    k = next(k for k in range(4, 30) if encode(engine.tok, chat_prompt(
        engine.tok, msgs, engine.tok.decode(chat.token_ids[:k]))) == head + list(chat.token_ids[:k]))
    prompt = chat_prompt(engine.tok, msgs, assistant_prefix=engine.tok.decode(chat.token_ids[:k]))
    (raw,) = engine.generate([Request(id="r", prompt=prompt, params=GREEDY)])
    rest = chat.token_ids[k:]
    assert raw.token_ids[:len(rest)] == rest

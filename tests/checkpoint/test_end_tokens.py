"""What ends generation: the checkpoint's declared EOS ids, and the template's end of turn."""

import json

import pytest

from hf_fixtures import add_tokenizer
from selflengthen_jax.checkpoint.tokenizer import end_of_turn_ids, eos_token_ids, load_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return add_tokenizer(tmp_path_factory.mktemp("tok"))


def _write(d, name, eos):
    (d / name).write_text(json.dumps({"eos_token_id": eos} if eos is not None else {}))


def test_generation_config_wins_then_config_json_then_the_tokenizer(tok_dir, tmp_path):
    tok = load_tokenizer(tok_dir)
    _write(tmp_path, "config.json", 5)
    assert eos_token_ids(tmp_path, tok) == [5]
    _write(tmp_path, "generation_config.json", [7, 8])
    assert eos_token_ids(tmp_path, tok) == [7, 8]
    _write(tmp_path, "generation_config.json", None)   # declares none: config.json's
    assert eos_token_ids(tmp_path, tok) == [5]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert eos_token_ids(empty, tok) == [tok.eos_token_id]


def test_a_pad_only_special_token_is_not_an_end(tok_dir, tmp_path):
    tok = load_tokenizer(tok_dir)
    _write(tmp_path, "generation_config.json", tok.convert_tokens_to_ids("<|im_end|>"))
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in eos_token_ids(tmp_path, tok)


def test_end_of_turn_is_the_special_token_closing_an_assistant_turn(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok)) == ["<|im_end|>"]
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_ids(tok) == []       # turns closed by plain text: no token
    tok.chat_template = None
    assert end_of_turn_ids(tok) == []

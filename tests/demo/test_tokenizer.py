"""Demo assets: tokenizer behaviour and the HF-layout files."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from selflengthen_jax.demo.corpus import LANGUAGES, stories, tokenizer_texts
from selflengthen_jax.demo.hf_files import qwen2_demo_config, write_non_weight_files
from selflengthen_jax.demo.tokenizer import (
    ENDOFTEXT,
    ENDOFTEXT_ID,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
    render_chatml,
    train_tokenizer,
)

VOCAB = 2048
SAMPLES = (
    "The lighthouse keeper climbed 112 steps, wiped the lens, and wrote: \"calm.\"\n\nNext line.",
    "江南的春雨，总是来得悄无声息。青石板路湿漉漉的，泛着淡淡的光。",
    "Mixed 中英文 text\twith  double spaces, emoji 🙂 and trailing space ",
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return tokenizer_texts()


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]) -> Tokenizer:
    return train_tokenizer(texts, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def hf_dir(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_ckpt")
    write_non_weight_files(out, tokenizer)
    return out


# --- tokenizer ----------------------------------------------------------------


def test_training_is_deterministic(texts: list[str], tokenizer: Tokenizer) -> None:
    again = train_tokenizer(texts, vocab_size=VOCAB)
    assert again.get_vocab() == tokenizer.get_vocab()
    for sample in SAMPLES:
        assert again.encode(sample).ids == tokenizer.encode(sample).ids


def test_special_tokens_have_fixed_single_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.get_vocab_size() == VOCAB
    expected_ids = {ENDOFTEXT: ENDOFTEXT_ID, IM_START: IM_START_ID, IM_END: IM_END_ID}
    for token, expected in expected_ids.items():
        assert tokenizer.token_to_id(token) == expected
        assert tokenizer.encode(token).ids == [expected]
    ids = tokenizer.encode(f"{IM_START}user\nhi{IM_END}").ids
    assert ids[0] == IM_START_ID and ids[-1] == IM_END_ID


@pytest.mark.parametrize("sample", SAMPLES)
def test_round_trip(tokenizer: Tokenizer, sample: str) -> None:
    assert tokenizer.decode(tokenizer.encode(sample).ids, skip_special_tokens=False) == sample


def test_bpe_compresses_both_languages(tokenizer: Tokenizer) -> None:
    for language in LANGUAGES:
        response = stories(language)[0]["response"]
        assert len(tokenizer.encode(response).ids) < len(response.encode("utf-8")) / 2


# --- HF layout ----------------------------------------------------------------


def test_auto_tokenizer_loads_offline(hf_dir: Path, tokenizer: Tokenizer) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    assert hf.eos_token == IM_END and hf.eos_token_id == IM_END_ID
    assert hf.pad_token == ENDOFTEXT and hf.pad_token_id == ENDOFTEXT_ID
    assert hf.bos_token is None
    for sample in SAMPLES:
        ids = hf.encode(sample)
        assert ids == tokenizer.encode(sample).ids
        assert hf.decode(ids) == sample


def test_chat_template_renders_chatml(hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    user = [{"role": "user", "content": "写一个故事。"}]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n写一个故事。<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    rendered = hf.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert rendered == expected == render_chatml(user, add_generation_prompt=True)

    dialogue = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    rendered = hf.apply_chat_template(dialogue, tokenize=False)
    assert rendered == render_chatml(dialogue)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_config_files_load_in_transformers(hf_dir: Path) -> None:
    from transformers import AutoConfig, GenerationConfig, Qwen2Config

    config = qwen2_demo_config(VOCAB)
    direct = Qwen2Config(**config)
    assert direct.model_type == "qwen2" and direct.num_key_value_heads == 2
    assert AutoConfig.for_model(**config).hidden_size == 128

    loaded = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    assert isinstance(loaded, Qwen2Config)
    assert loaded.vocab_size == VOCAB and loaded.tie_word_embeddings
    assert (loaded.bos_token_id, loaded.eos_token_id) == (ENDOFTEXT_ID, IM_END_ID)

    generation = GenerationConfig.from_pretrained(hf_dir, local_files_only=True)
    assert generation.eos_token_id == [IM_END_ID, ENDOFTEXT_ID]
    assert generation.pad_token_id == ENDOFTEXT_ID


def test_config_rejects_uneven_heads() -> None:
    with pytest.raises(ValueError):
        qwen2_demo_config(VOCAB, num_heads=4, num_kv_heads=3)

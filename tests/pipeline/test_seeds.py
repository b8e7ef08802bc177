"""Specification of the seed instructions and their loader."""

import json

import pytest

from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.pipeline.text import language_of, near_duplicate

LENGTH_WORD = {"en": "word", "zh": "字"}


@pytest.mark.parametrize("language", ["zh", "en"])
def test_packaged_seeds_are_distinct_long_writing_requests(language):
    seeds = load_seeds(language)
    assert len(seeds) >= 24
    for i, seed in enumerate(seeds):
        assert seed == seed.strip() and language_of(seed) == language
        assert LENGTH_WORD[language] in seed, seed  # each asks for a stated length
        assert not any(near_duplicate(seed, other) for other in seeds[:i]), seed


def test_an_empty_path_means_the_packaged_seeds():
    assert load_seeds("zh", "") == load_seeds("zh")


def test_seeds_load_from_a_user_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"prompt": "  Write a saga. ", "tag": "x"}) + "\n\n", encoding="utf-8"
    )
    assert load_seeds("en", path) == ["Write a saga."]


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_seeds_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"seeds file .*empty\.jsonl holds no instructions"):
        load_seeds("en", path)


def test_a_seed_without_a_prompt_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "Write."}\n{"text": "Write."}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field\(s\) prompt"):
        load_seeds("en", path)


@pytest.mark.parametrize("prompt", ["", "   ", 7, None])
def test_a_seed_prompt_must_be_text(tmp_path, prompt):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": prompt}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="entry 1 has an empty or non-text 'prompt'"):
        load_seeds("en", path)


def test_unknown_language_is_rejected():
    with pytest.raises(ValueError, match="unsupported language"):
        load_seeds("fr")

"""The demo corpus: our stories, and the warm-up tasks derived from them.

The base model must write too short, the Extender must enrich in place, and every
text it learns from must pass the pipeline's own filters, or the demo cannot show
lengthening.
"""

from __future__ import annotations

import pytest

from selflengthen_jax.demo import corpus
from selflengthen_jax.pipeline.prompts import (judge_answers, parse_instruction, self_instruct_stop,
                                               self_instruct_turn)
from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.pipeline.text import count_words, quality_problems, split_paragraphs

LANGUAGES = corpus.LANGUAGES


@pytest.mark.parametrize("language", LANGUAGES)
def test_stories_are_long_well_formed_and_distinct(language: str) -> None:
    stories = corpus.stories(language)
    assert len(stories) == corpus.STORIES_PER_LANGUAGE >= 20
    assert len({s["prompt"] for s in stories}) == len(stories)
    low, high = (200, 300) if language == "en" else (300, 550)
    for s in stories:
        assert 4 <= len(split_paragraphs(s["response"])) <= 6, s["prompt"]
        assert low <= count_words(s["response"]) <= high, s["prompt"]
        assert quality_problems(s["response"], language) == [], s["prompt"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_base_answer_is_the_story_condensed_to_first_sentences(language: str) -> None:
    for pair, story in zip(corpus.write_pairs(language), corpus.stories(language), strict=True):
        assert pair["messages"] == [{"role": "user", "content": story["prompt"]}]
        full = split_paragraphs(story["response"])
        assert pair["response"] == "\n\n".join(corpus.first_sentence(p, language) for p in full)
        # Too short, as real models are: at most two thirds of the story's words.
        assert count_words(pair["response"]) <= 2 / 3 * count_words(story["response"])
        assert quality_problems(pair["response"], language) == []


def test_first_sentence_keeps_closing_quotes_and_stops_at_the_first_mark() -> None:
    assert corpus.first_sentence('He said "stop." Then he left.', "en") == 'He said "stop."'
    assert corpus.first_sentence("No mark at all", "en") == "No mark at all"
    assert corpus.first_sentence("version 2.5 works. Next.", "en") == "version 2.5 works."
    assert corpus.first_sentence("她说：“走吧。”然后走了。", "zh") == "她说：“走吧。”"


@pytest.mark.parametrize("language", LANGUAGES)
def test_extend_pairs_enrich_the_condensed_half_and_whole_in_place(language: str) -> None:
    pairs = corpus.extend_pairs(language)
    stories = corpus.stories(language)
    assert len(pairs) == 2 * len(stories)
    for (half, whole), story in zip(zip(pairs[::2], pairs[1::2]), stories, strict=True):
        full = split_paragraphs(story["response"])
        assert whole["response"] == story["response"]
        assert half["response"] == "\n\n".join(full[: len(full) // 2])
        for pair, part in ((half, full[: len(full) // 2]), (whole, full)):
            prompt = pair["messages"][0]["content"]
            shown = corpus.condense(part, language)
            assert story["prompt"] in prompt and shown in prompt
            assert count_words(pair["response"]) > 1.2 * count_words(shown)


@pytest.mark.parametrize("language", LANGUAGES)
def test_judge_says_yes_to_every_story_request_and_no_to_short_tasks(language: str) -> None:
    yes, no = judge_answers(language)
    pairs = corpus.judge_pairs(language)
    answers = [p["response"] for p in pairs]
    assert answers.count(yes) >= len(corpus.stories(language)) and answers.count(no) >= 10
    for story, pair in zip(corpus.stories(language), pairs):
        assert story["prompt"] in pair["messages"][0]["content"] and pair["response"] == yes


@pytest.mark.parametrize("language", LANGUAGES)
def test_self_instruct_completions_stop_after_one_new_request(language: str) -> None:
    requests = {s["prompt"] for s in corpus.stories(language)}
    examples = requests | set(load_seeds(language))
    pairs = corpus.self_instruct_pairs(language)
    assert len(pairs) >= corpus.SELF_INSTRUCT_PASSES * (len(requests) // 2)
    for pair in pairs:
        assert pair["raw"] is True
        completion = pair["response"]
        cut = min(completion.find(s) for s in self_instruct_stop(language) if s in completion)
        new = parse_instruction(completion[:cut])
        assert new in requests
        # The prompt is the pipeline's own, with two examples from the pool it will see.
        head = corpus.self_instruct_prompt(language, "\x00", "\x01")
        assert pair["prompt"].startswith(head.split("\x00")[0])
        shown = [e for e in examples if e in pair["prompt"]]
        assert len(shown) >= 2 and new not in pair["prompt"]


def test_records_cover_every_task_of_the_languages_asked() -> None:
    en = corpus.records(("en",))
    both = corpus.records(LANGUAGES)
    assert len(en) == sum(len(corpus.TASK_PAIRS[t]("en")) for t in corpus.TASKS)
    assert len(both) == len(en) + len(corpus.records(("zh",)))
    assert all(isinstance(r["response"], str) and r["response"] for r in both)


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="no language 'fr'"):
        corpus.stories("fr")


def test_the_self_instruct_prompt_is_the_loops_own_chat_prompt() -> None:
    # The loop renders the chat turn with the checkpoint's template and pre-fills the
    # answer; the warm-up data must be byte-identical for the shipped model's template.
    from selflengthen_jax.checkpoint.tokenizer import chat_prompt, load_tokenizer
    from selflengthen_jax.demo.shipped import SHIPPED_DIR

    tok = load_tokenizer(SHIPPED_DIR)
    messages, answer = self_instruct_turn("en", "Write A.", "Write B.")
    assert corpus.self_instruct_prompt("en", "Write A.", "Write B.") == chat_prompt(tok, messages, answer)
    assert chat_prompt(tok, messages, answer).endswith(
        "<|im_start|>assistant\nInstruction 1: Write A.\nInstruction 2: Write B.\nInstruction 3:")

"""Specification of one extension round's string assembly (the paper's two stages), as
the reference's step2_ext_responses.py and mk_data.py split and join texts."""

import numpy as np
import pytest

from selflengthen_jax.pipeline.extension import (
    extender_training_prompt,
    first_half,
    join_stages,
    keep_leading,
    stage1_request_messages,
    stage2_request_messages,
)


@pytest.fixture
def tiny_templates(tmp_path):
    """Templates reduced to their fields, so assembled prompts can be spelled out."""
    for language in ("en", "zh"):
        folder = tmp_path / language
        folder.mkdir()
        (folder / "self_instruct.txt").write_text("Go.", encoding="utf-8")
        (folder / "self_instruct_answer.txt").write_text("{example_1}|{example_2}", encoding="utf-8")
        (folder / "judge.txt").write_text("{instruction}", encoding="utf-8")
        (folder / "extend.txt").write_text("I={instruction}\nR={response}\n", encoding="utf-8")
    return tmp_path


def fake_chat(messages):
    """Stands in for a tokenizer's chat template with add_generation_prompt=True."""
    [message] = messages
    return f"<user>{message['content']}</user><assistant>"


CURRENT = "P1\n\nP2\n\nP3\n\nP4"


# --- the half split: split on blank lines, on single newlines when that gives <= 2 ----------


@pytest.mark.parametrize(
    ("text", "half"),
    [
        ("P0\n\nP1\n\nP2\n\nP3", "P0\n\nP1"),
        ("P0\n\nP1\n\nP2", "P0"),  # 3 parts: the first 3 // 2 = 1
        ("P0\n\nP1\n\nP2\n\nP3\n\nP4", "P0\n\nP1"),
        ("a\nb\n\nc", "a\n\nb"),  # 2 blank-line parts: split on newlines ["a", "b", "", "c"]
        ("a\nb\nc\nd", "a\n\nb"),  # re-joined by blank lines whatever the split
        ("P0\n\nP1", "P0"),  # ["P0", "", "P1"]: the first one
        ("one paragraph", ""),  # one part: the half is empty
        ("", ""),
        ("P0\n\n\nP1\n\nP2", "P0"),  # ["P0", "\nP1", "P2"]: raw parts, nothing stripped
        ("P0\n\nP1\n\nP2\n\nP3\n", "P0\n\nP1"),
    ],
)
def test_first_half(text, half):
    assert first_half(text) == half


# --- keep two thirds of stage 1's output, split on blank lines only -------------------------


@pytest.mark.parametrize(
    ("count", "kept"),
    [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (6, 4), (9, 6), (30, 20)],
)
def test_keep_leading_keeps_n_times_2_div_3_parts(count, kept):
    text = "\n\n".join(f"E{i}" for i in range(count))
    assert keep_leading(text) == "\n\n".join(f"E{i}" for i in range(kept))


def test_keep_leading_never_splits_on_single_newlines():
    assert keep_leading("E0\nE1\n\nE2") == "E0\nE1"
    assert keep_leading("E0\nE1\nE2") == ""


def test_keep_leading_of_nothing_is_nothing():
    assert keep_leading("") == ""


# --- joins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kept", "continuation", "joined"),
    [
        ("K1\n\nK2", "\n\nC1\n\nC2", "K1\n\nK2\n\nC1\n\nC2"),
        ("K1", " and on.", "K1 and on."),  # verbatim, no separator added
        ("", "C1\n\nC2\n", "C1\n\nC2\n"),  # nothing kept: stage 2 wrote it all
        ("K1", "", "K1"),
    ],
)
def test_join_stages_is_concatenation(kept, continuation, joined):
    assert join_stages(kept, continuation) == joined


# --- the whole round, spelled out ---------------------------------------------------------


def test_stage1_asks_to_extend_the_first_half(tiny_templates):
    messages = stage1_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert messages == [{"role": "user", "content": "I=Write.\nR=P1\n\nP2"}]


def test_stage1_of_single_line_paragraphs(tiny_templates):
    messages = stage1_request_messages("en", "Write.", "P1\nP2\nP3\nP4\n", templates_dir=tiny_templates)
    # ["P1", "P2", "P3", "P4", ""]: the first 5 // 2 = 2
    assert messages[0]["content"] == "I=Write.\nR=P1\n\nP2"


def test_stage2_prompt_is_the_whole_text_request_prefilled_with_the_kept_part(tiny_templates):
    messages = stage2_request_messages("en", "Write.", CURRENT + "\n", templates_dir=tiny_templates)
    prompt = fake_chat(messages) + "K1\n\nK2"
    assert prompt == "<user>I=Write.\nR=P1\n\nP2\n\nP3\n\nP4\n</user><assistant>K1\n\nK2"


def test_a_full_round(tiny_templates):
    stage1 = stage1_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert fake_chat(stage1) == "<user>I=Write.\nR=P1\n\nP2</user><assistant>"
    stage1_output = "P1+\n\nP1++\n\nP2+"  # the Extender's enriched first half
    kept = keep_leading(stage1_output)
    assert kept == "P1+\n\nP1++"
    stage2 = stage2_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert fake_chat(stage2) + kept == (
        "<user>I=Write.\nR=P1\n\nP2\n\nP3\n\nP4</user><assistant>P1+\n\nP1++"
    )
    continuation = "\n\nP2+\n\nP3+\n\nP4+"
    assert join_stages(kept, continuation) == "P1+\n\nP1++\n\nP2+\n\nP3+\n\nP4+"


def test_a_round_whose_stage1_output_is_one_paragraph_starts_stage2_from_nothing(tiny_templates):
    kept = keep_leading("P1+ in one long paragraph.")
    assert kept == ""
    stage2 = stage2_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert fake_chat(stage2) + kept == "<user>I=Write.\nR=P1\n\nP2\n\nP3\n\nP4</user><assistant>"


# --- Extender training prompts: mk_data.py's line dropout -----------------------------------

RESPONSE = "\n".join(f"Line {i}." for i in range(200))


def content(messages):
    return messages[0]["content"].removeprefix("I=Write.\nR=")


@pytest.mark.parametrize(("language", "join"), [("zh", "\n\n"), ("en", "\n")])
def test_training_prompt_splits_on_newlines_and_rejoins_per_language(tiny_templates, language, join):
    messages = extender_training_prompt(language, "Write.", "A.\nB.\n\nC.", np.random.default_rng(0),
                                        keep_prob=1.0, templates_dir=tiny_templates)
    assert content(messages) == join.join(["A.", "B.", "", "C."])  # blank lines are lines too


@pytest.mark.parametrize("language", ["zh", "en"])
def test_training_prompt_keeps_a_line_when_its_draw_is_below_keep_prob(tiny_templates, language):
    text = "A.\n\nB.\nC.\n\nD."
    lines = text.split("\n")
    draws = np.random.default_rng(3).random(len(lines))
    expected = [line for line, u in zip(lines, draws) if u < 0.8]
    messages = extender_training_prompt(language, "Write.", text, np.random.default_rng(3),
                                        templates_dir=tiny_templates)
    assert content(messages) == {"zh": "\n\n", "en": "\n"}[language].join(expected)


def test_training_prompt_drops_about_a_fifth_of_the_lines_in_order(tiny_templates):
    messages = extender_training_prompt(
        "en", "Write.", RESPONSE, np.random.default_rng(0), templates_dir=tiny_templates
    )
    kept = content(messages).split("\n")
    assert 140 <= len(kept) <= 180
    assert kept == sorted(kept, key=lambda line: int(line.split()[1].rstrip(".")))


def test_training_prompt_is_deterministic_per_seed():
    first = extender_training_prompt("en", "Write.", RESPONSE, np.random.default_rng(5))
    again = extender_training_prompt("en", "Write.", RESPONSE, np.random.default_rng(5))
    other = extender_training_prompt("en", "Write.", RESPONSE, np.random.default_rng(6))
    assert first == again != other


def test_training_prompt_may_keep_no_line(tiny_templates):
    messages = extender_training_prompt("en", "Write.", "A.\nB.", np.random.default_rng(0),
                                        keep_prob=1e-12, templates_dir=tiny_templates)
    assert content(messages) == ""


def test_training_prompt_checks_keep_prob():
    with pytest.raises(ValueError, match="keep_prob"):
        extender_training_prompt("en", "Write.", "A.", np.random.default_rng(0), keep_prob=0.0)

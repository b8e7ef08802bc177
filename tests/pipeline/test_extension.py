"""Specification of one extension round's string assembly (the paper's two stages)."""

import numpy as np
import pytest

from selflengthen_jax.pipeline.extension import (
    extender_training_prompt,
    first_half,
    join_stages,
    keep_leading,
    stage1_request_messages,
    stage2_prefix,
    stage2_request_messages,
)


@pytest.fixture
def tiny_templates(tmp_path):
    """Templates reduced to their fields, so assembled prompts can be spelled out."""
    folder = tmp_path / "en"
    folder.mkdir()
    (folder / "self_instruct.txt").write_text("{example_1}|{example_2}", encoding="utf-8")
    (folder / "judge.txt").write_text("{instruction}", encoding="utf-8")
    (folder / "extend.txt").write_text("I={instruction}\nR={response}\n", encoding="utf-8")
    return tmp_path


def fake_chat(messages):
    """Stands in for a tokenizer's chat template with add_generation_prompt=True."""
    [message] = messages
    return f"<user>{message['content']}</user><assistant>"


CURRENT = "P1\n\nP2\n\nP3\n\nP4"


# --- pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "taken"),
    [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (9, 4)],
)
def test_first_half_takes_len_div_2_paragraphs_at_least_one(count, taken):
    paragraphs = [f"P{i}" for i in range(count)]
    assert first_half(paragraphs) == "\n\n".join(paragraphs[:taken])


def test_first_half_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no paragraphs"):
        first_half([])


@pytest.mark.parametrize(
    ("count", "kept"),
    [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 4), (9, 6), (30, 20)],
)
def test_keep_leading_keeps_two_thirds_rounded_down_at_least_one(count, kept):
    text = "\n\n".join(f"E{i}" for i in range(count))
    assert keep_leading(text) == "\n\n".join(f"E{i}" for i in range(kept))


def test_keep_leading_splits_like_split_paragraphs():
    # Only two blank-line blocks, so single lines are the paragraphs.
    assert keep_leading("E0\nE1\n\nE2") == "E0\n\nE1"


def test_keep_leading_fraction_is_a_parameter():
    text = "E0\n\nE1\n\nE2\n\nE3"
    assert keep_leading(text, fraction=1.0) == text
    assert keep_leading(text, fraction=0.5) == "E0\n\nE1"
    with pytest.raises(ValueError, match="fraction"):
        keep_leading(text, fraction=0.0)


def test_stage2_prefix_ends_in_a_paragraph_break():
    assert stage2_prefix("  K1\n\nK2 \n") == "K1\n\nK2\n\n"


@pytest.mark.parametrize(
    ("continuation", "joined"),
    [
        ("C1\n\nC2", "K1\n\nK2\n\nC1\n\nC2"),
        ("  C1\n\nC2\n", "K1\n\nK2\n\nC1\n\nC2"),
        ("", "K1\n\nK2"),
        (" \n", "K1\n\nK2"),
    ],
)
def test_join_stages_appends_the_continuation_as_new_paragraphs(continuation, joined):
    assert join_stages("K1\n\nK2", continuation) == joined


# --- the whole round, spelled out ---------------------------------------------------------


def test_stage1_asks_to_extend_the_first_half(tiny_templates):
    messages = stage1_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert messages == [{"role": "user", "content": "I=Write.\nR=P1\n\nP2"}]


def test_stage1_normalises_paragraph_breaks_of_the_current_text(tiny_templates):
    messages = stage1_request_messages(
        "en", "Write.", "P1\nP2\nP3\nP4\n", templates_dir=tiny_templates
    )
    assert messages[0]["content"] == "I=Write.\nR=P1\n\nP2"


def test_stage2_prompt_is_the_whole_text_request_prefilled_with_the_kept_part(tiny_templates):
    messages = stage2_request_messages("en", "Write.", CURRENT + "\n", templates_dir=tiny_templates)
    prompt = fake_chat(messages) + stage2_prefix("K1\n\nK2")
    assert prompt == "<user>I=Write.\nR=P1\n\nP2\n\nP3\n\nP4</user><assistant>K1\n\nK2\n\n"


def test_a_full_round(tiny_templates):
    stage1 = stage1_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert fake_chat(stage1) == "<user>I=Write.\nR=P1\n\nP2</user><assistant>"
    stage1_output = "P1+\n\nP1++\n\nP2+"  # the Extender's enriched first half
    kept = keep_leading(stage1_output)
    assert kept == "P1+\n\nP1++"
    stage2 = stage2_request_messages("en", "Write.", CURRENT, templates_dir=tiny_templates)
    assert fake_chat(stage2) + stage2_prefix(kept) == (
        "<user>I=Write.\nR=P1\n\nP2\n\nP3\n\nP4</user><assistant>P1+\n\nP1++\n\n"
    )
    continuation = "P2+\n\nP3+\n\nP4+"
    assert join_stages(kept, continuation) == "P1+\n\nP1++\n\nP2+\n\nP3+\n\nP4+"


# --- Extender training prompts ----------------------------------------------------------

RESPONSE = "\n".join(f"Line {i}." for i in range(200))


def test_training_prompt_keeps_all_lines_as_paragraphs_when_keep_prob_is_one(tiny_templates):
    messages = extender_training_prompt(
        "en",
        "Write.",
        "A.\nB.\n\n\nC.",
        np.random.default_rng(0),
        keep_prob=1.0,
        templates_dir=tiny_templates,
    )
    assert messages == [{"role": "user", "content": "I=Write.\nR=A.\n\nB.\n\nC."}]


def test_training_prompt_drops_about_a_fifth_of_the_lines_in_order(tiny_templates):
    messages = extender_training_prompt(
        "en", "Write.", RESPONSE, np.random.default_rng(0), templates_dir=tiny_templates
    )
    kept = messages[0]["content"].removeprefix("I=Write.\nR=").split("\n\n")
    assert 140 <= len(kept) <= 180
    assert kept == sorted(kept, key=lambda line: int(line.split()[1].rstrip(".")))


def test_training_prompt_is_deterministic_per_seed():
    first = extender_training_prompt("en", "Write.", RESPONSE, np.random.default_rng(5))
    again = extender_training_prompt("en", "Write.", RESPONSE, np.random.default_rng(5))
    other = extender_training_prompt("en", "Write.", RESPONSE, np.random.default_rng(6))
    assert first == again != other


def test_training_prompt_keeps_at_least_one_line(tiny_templates):
    messages = extender_training_prompt(
        "en",
        "Write.",
        "A.\nB.",
        np.random.default_rng(0),
        keep_prob=1e-12,
        templates_dir=tiny_templates,
    )
    assert messages[0]["content"] == "I=Write.\nR=A."


def test_training_prompt_needs_text():
    with pytest.raises(ValueError, match="no text"):
        extender_training_prompt("en", "Write.", " \n ", np.random.default_rng(0))
    with pytest.raises(ValueError, match="keep_prob"):
        extender_training_prompt("en", "Write.", "A.", np.random.default_rng(0), keep_prob=0.0)

"""Specification of the prompt templates and the parsers of model replies."""

import shutil

import pytest

from selflengthen_jax.pipeline.prompts import (
    TEMPLATE_FIELDS,
    TEMPLATES_DIR,
    extend_messages,
    generator_messages,
    judge_answer_forms,
    judge_answers,
    judge_messages,
    judge_says_yes,
    load_templates,
    parse_instruction,
    render,
    self_instruct_stop,
    self_instruct_turn,
)
from selflengthen_jax.pipeline.text import language_of

# --- render ---------------------------------------------------------------------


def test_render_fills_named_fields():
    assert (
        render("Dear {name}, see {thing}.", name="Ann", thing="the sea") == "Dear Ann, see the sea."
    )


def test_render_inserts_values_verbatim_in_one_pass():
    # A value that looks like a placeholder is text, not a second substitution.
    assert render("{a}|{b}", a="{b}", b="x") == "{b}|x"
    assert render("Q: {q}", q="use {} and {0} and {{x}}") == "Q: use {} and {0} and {{x}}"


def test_render_leaves_braces_that_are_not_field_names():
    assert render('{"json": 1} { } {1} {name}', name="n") == '{"json": 1} { } {1} n'


def test_render_rejects_a_missing_value():
    with pytest.raises(ValueError, match=r"missing values for \['thing'\]"):
        render("{name} {thing}", name="Ann")


def test_render_rejects_an_unknown_field():
    with pytest.raises(ValueError, match=r"unknown fields \['extra'\]"):
        render("{name}", name="Ann", extra="x")


# --- template files -----------------------------------------------------------------


@pytest.mark.parametrize("language", ["zh", "en"])
def test_packaged_templates_are_written_in_their_language(language):
    templates = load_templates(language)
    for name, fields in TEMPLATE_FIELDS.items():
        text = getattr(templates, name)
        assert text == text.rstrip()
        assert language_of(render(text, **{f: "" for f in fields})) == language, name


def test_an_empty_templates_dir_means_the_packaged_templates():
    assert load_templates("en", "") == load_templates("en")


def test_templates_load_from_a_user_directory(tmp_path):
    shutil.copytree(TEMPLATES_DIR, tmp_path / "mine")
    (tmp_path / "mine" / "en" / "judge.txt").write_text("Long? {instruction}\n", encoding="utf-8")
    messages = judge_messages("en", "Write a saga.", templates_dir=tmp_path / "mine")
    assert messages == [{"role": "user", "content": "Long? Write a saga."}]


def test_missing_templates_name_the_language_and_expected_files(tmp_path):
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "judge.txt").write_text("{instruction}", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_templates("zh", tmp_path)
    message = str(error.value)
    assert "'zh'" in message
    assert "self_instruct.txt, self_instruct_answer.txt, judge.txt, extend.txt" in message
    assert "missing: self_instruct.txt, self_instruct_answer.txt, extend.txt" in message


def test_a_template_with_wrong_fields_is_rejected_on_load(tmp_path):
    shutil.copytree(TEMPLATES_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "en" / "extend.txt").write_text("{instruction} {reponse}", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"extend\.txt must use the fields \['instruction', 'response'\]"
    ):
        load_templates("en", tmp_path)


def test_unknown_language_is_rejected():
    with pytest.raises(ValueError, match="unsupported language"):
        load_templates("de")


# --- self-instruct ------------------------------------------------------------------


def test_en_self_instruct_is_a_user_turn_and_a_prefilled_answer_opening_a_third_item():
    # As the reference's llama/prompt_templates/self_instruct.md: the user asks for
    # long-writing instructions and the assistant's turn already lists two of them.
    [message], answer = self_instruct_turn("en", "Write A.", "Write B.")
    assert message["role"] == "user"
    assert "several thousand words" in message["content"] and "complete" in message["content"]
    assert answer == "Instruction 1: Write A.\nInstruction 2: Write B.\nInstruction 3:"


def test_zh_self_instruct_is_a_user_turn_and_a_prefilled_answer_opening_a_third_item():
    [message], answer = self_instruct_turn("zh", "写甲。", "写乙。")
    assert message["role"] == "user"
    assert "几千字" in message["content"] and "完整" in message["content"]
    assert answer == "指令1：写甲。\n指令2：写乙。\n指令3："


def test_self_instruct_examples_with_braces_are_inserted_verbatim():
    _, answer = self_instruct_turn("en", "Write {x}.", "Write {example_2}.")
    assert answer == "Instruction 1: Write {x}.\nInstruction 2: Write {example_2}.\nInstruction 3:"


def test_self_instruct_stops_are_the_references():
    # qwen/llm_client.py and llama/llm_client.py get_completion: rule lines, a triple
    # newline and a fourth item end the text; a single blank line does not.
    assert self_instruct_stop("en") == ("\n\n---", "\n\n\n", "\n---", "---", "\nInstruction 4")
    assert self_instruct_stop("zh") == ("\n\n---", "\n\n\n", "\n---", "---", "\n指令4")
    assert "\n\n" not in self_instruct_stop("en") + self_instruct_stop("zh")


@pytest.mark.parametrize(
    ("completion", "instruction"),
    [
        (" Write a saga about ice. ", "Write a saga about ice."),
        ("Write a saga.\nInstruction 4: Write more.", "Write a saga."),
        ("Write a saga. Instruction 4: Write more.", "Write a saga."),
        ("Write a saga.\nInstruction 5", "Write a saga."),
        ("Instruction 3: Write a saga.", "Write a saga."),
        ('"Write a saga."', "Write a saga."),
        ("“Write a saga.”", "Write a saga."),
        ('Write a story titled "Home"', 'Write a story titled "Home"'),
        ("Use Instruction Set 4 as a theme.", "Use Instruction Set 4 as a theme."),
        (" 写一篇长篇小说。\n指令4：写诗。", "写一篇长篇小说。"),
        ("「写一篇长篇小说。」", "写一篇长篇小说。"),
        ("写一篇文章。指令5：", "写一篇文章。"),
        ("", ""),
    ],
)
def test_parse_instruction(completion, instruction):
    assert parse_instruction(completion) == instruction


# --- judge --------------------------------------------------------------------------


def test_en_judge_asks_for_a_yes_or_no_on_2000_words():
    [message] = judge_messages("en", "Write a saga about ice.")
    assert message["role"] == "user"
    assert "Write a saga about ice." in message["content"]
    assert "2,000 words" in message["content"]
    assert "yes or no" in message["content"]
    assert judge_answers("en") == ("yes", "no")


def test_zh_judge_asks_for_shi_or_fou_on_2000_characters():
    [message] = judge_messages("zh", "写一部长篇小说。")
    assert "写一部长篇小说。" in message["content"]
    assert "2000字" in message["content"]
    assert "是 或 否" in message["content"]
    assert judge_answers("zh") == ("是", "否")


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        # llama/step0_self_instruct.py: is_suitable.lower() == 'yes' after strip()
        ("yes", True),
        ("Yes", True),
        (" YES \n", True),
        ("Yes.", False),
        ('"yes"', False),
        ("Yes, it does", False),
        ("no", False),
        ("No", False),
        ("yesterday", False),
        ("是", False),
        ("", False),
    ],
)
def test_en_judge_says_yes_as_the_reference_compares(reply, verdict):
    assert judge_says_yes(reply, "en") is verdict


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        # qwen/step0_self_instruct.py: is_suitable == '是' after strip()
        ("是", True),
        (" 是\n", True),
        ("是。", False),
        ("“是”", False),
        ("Yes", False),
        ("否", False),
        ("不是", False),
        ("", False),
    ],
)
def test_zh_judge_says_yes_as_the_reference_compares(reply, verdict):
    assert judge_says_yes(reply, "zh") is verdict


def test_likelihood_judge_weighs_the_casings_a_model_answers_with():
    assert judge_answer_forms("en") == (("yes", "Yes"), ("no", "No"))
    assert judge_answer_forms("zh") == (("是",), ("否",))


# --- extender and generator ------------------------------------------------------------


@pytest.mark.parametrize("language", ["zh", "en"])
def test_extend_message_holds_instruction_and_response_verbatim(language):
    response = "First part {with braces}.\n\nSecond part."
    [message] = extend_messages(language, "Write {x} about a river.", response)
    assert message["role"] == "user"
    assert "Write {x} about a river." in message["content"]
    assert response in message["content"]
    assert message["content"].index("Write {x}") < message["content"].index(response)


def test_en_extend_message_asks_to_enrich_without_continuing():
    [message] = extend_messages("en", "Write a saga.", "It began.")
    content = message["content"]
    for phrase in ("much longer and richer", "details", "examples", "do not continue", "structure"):
        assert phrase in content


def test_zh_extend_message_asks_to_enrich_without_continuing():
    [message] = extend_messages("zh", "写一部小说。", "故事开始了。")
    for phrase in ("更长、更丰富", "细节", "例子", "不要在回答结束的地方继续往下写", "结构"):
        assert phrase in message["content"]


def test_generator_sees_the_bare_instruction():
    assert generator_messages("Write a saga.") == [{"role": "user", "content": "Write a saga."}]

"""Prompts of the Self-Lengthen pipeline, built from editable text templates.

Templates live in `templates/{language}/{name}.txt` (or in a copy a user points
`templates_dir` at) and use `{field}` placeholders. Substitution is a single pass
over known field names only: no eval, no format-spec mini-language, and values
that themselves contain braces are inserted verbatim.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from selflengthen_jax.pipeline.text import check_language

TEMPLATES_DIR = Path(__file__).parent / "templates"

# Template name -> the fields it must use (checked on load, so a user's edited
# copy that lost or mistyped a placeholder fails before any generation starts).
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "self_instruct": frozenset(),
    "self_instruct_answer": frozenset({"example_1", "example_2"}),
    "judge": frozenset({"instruction"}),
    "extend": frozenset({"instruction", "response"}),
}

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# The reference's completion stops: a rule line or a triple newline ends the text (a
# single blank line does not: an instruction may have paragraphs), and so does the
# start of a fourth item. The self_instruct_answer template must number its examples
# "Instruction 1: ..." (en) or "指令1：..." (zh) for the last stop and the parser to work.
# (End-of-turn tokens end generation as the checkpoint's EOS ids, not as strings.)
_RULE_STOPS = ("\n\n---", "\n\n\n", "\n---", "---")
_STOPS = {
    "en": _RULE_STOPS + ("\nInstruction 4",),
    "zh": _RULE_STOPS + ("\n指令4",),
}
_LEADING_MARKER = re.compile(r"^(?:Instruction|指令)\s*\d+\s*[:：]\s*")
_LATER_MARKER = re.compile(r"\n\s*(?:Instruction|指令)\s*\d+|(?:Instruction|指令)\s*\d+\s*[:：]")
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』"}

_ANSWERS = {"en": ("yes", "no"), "zh": ("是", "否")}
# The spellings a judge actually answers with: instruct models open English answers
# with a capital ("Yes"), so the likelihood judge weighs both casings.
_ANSWER_FORMS = {"en": (("yes", "Yes"), ("no", "No")), "zh": (("是",), ("否",))}

Messages = list[dict[str, str]]


def template_fields(template: str) -> set[str]:
    """Names of the `{field}` placeholders in `template`."""
    return set(_FIELD.findall(template))


def render(template: str, **fields: str) -> str:
    """Fill `{name}` placeholders; a placeholder without a value, or a value
    without a placeholder, raises ValueError (both are template/caller bugs)."""
    used = template_fields(template)
    missing = sorted(used - fields.keys())
    unknown = sorted(fields.keys() - used)
    if missing or unknown:
        raise ValueError(
            f"template fields do not match: missing values for {missing}, "
            f"unknown fields {unknown}; the template uses {sorted(used)}"
        )
    return _FIELD.sub(lambda m: str(fields[m.group(1)]), template)


@dataclasses.dataclass(frozen=True)
class Templates:
    """The prompt templates of one language, trailing whitespace removed."""

    language: str
    self_instruct: str
    self_instruct_answer: str
    judge: str
    extend: str


def load_templates(language: str, directory: str | Path | None = None) -> Templates:
    """Read `{directory}/{language}/{name}.txt` for every template (default: the
    package's own), checking each uses exactly its expected fields."""
    check_language(language)
    root = Path(directory) if directory else TEMPLATES_DIR  # "" (unset config) too
    folder = root / language
    expected = [f"{name}.txt" for name in TEMPLATE_FIELDS]
    absent = [name for name in expected if not (folder / name).is_file()]
    if absent:
        raise ValueError(
            f"templates for language {language!r} not found: {folder} must hold "
            f"{', '.join(expected)} (missing: {', '.join(absent)})"
        )
    texts = {}
    for name, fields in TEMPLATE_FIELDS.items():
        path = folder / f"{name}.txt"
        text = path.read_text(encoding="utf-8").rstrip()
        found = template_fields(text)
        if found != fields:
            raise ValueError(
                f"template {path} must use the fields {sorted(fields)}, found {sorted(found)}"
            )
        texts[name] = text
    return Templates(language=language, **texts)


def _user(content: str) -> Messages:
    return [{"role": "user", "content": content}]


def self_instruct_turn(
    language: str, example_1: str, example_2: str, *, templates_dir: str | Path | None = None
) -> tuple[Messages, str]:
    """The self-instruct chat turn and its pre-filled answer, as the reference builds it:
    the user asks for long-writing requests, and the assistant's turn already lists two
    examples and opens a third, so the model's continuation is one new instruction.
    Render with `chat_prompt(tokenizer, messages, assistant_prefix=answer)`."""
    templates = load_templates(language, templates_dir)
    answer = render(templates.self_instruct_answer, example_1=example_1, example_2=example_2)
    return _user(templates.self_instruct), answer


def self_instruct_stop(language: str) -> tuple[str, ...]:
    """The reference's stops: rule lines, a triple newline, or a fourth item."""
    check_language(language)
    return _STOPS[language]


def parse_instruction(completion: str) -> str:
    """The instruction in a self-instruct completion: stripped, cut at any later
    "Instruction N"/"指令N" marker, one pair of enclosing quotes removed."""
    text = _LEADING_MARKER.sub("", completion.strip())
    later = _LATER_MARKER.search(text)
    if later:
        text = text[: later.start()]
    text = text.strip()
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def judge_messages(
    language: str, instruction: str, *, templates_dir: str | Path | None = None
) -> Messages:
    """Chat turn asking whether `instruction` needs a long (>2,000 word) answer."""
    template = load_templates(language, templates_dir).judge
    return _user(render(template, instruction=instruction))


def judge_answers(language: str) -> tuple[str, str]:
    """The canonical (yes, no) answers, as the judge template asks for them."""
    check_language(language)
    return _ANSWERS[language]


def judge_answer_forms(language: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every spelling of (yes, no) that counts, for comparing their likelihoods."""
    check_language(language)
    return _ANSWER_FORMS[language]


def judge_says_yes(reply: str, language: str) -> bool:
    """The reference's verdict on a sampled judge reply: the whole reply, stripped, is
    "是" (zh) or "yes" in any casing (en); anything longer or different is a no."""
    check_language(language)
    answer = reply.strip()
    return answer == "是" if language == "zh" else answer.lower() == "yes"


def extend_messages(
    language: str, instruction: str, response: str, *, templates_dir: str | Path | None = None
) -> Messages:
    """The Extender's chat turn: enrich `response` in place, without continuing it."""
    template = load_templates(language, templates_dir).extend
    return _user(render(template, instruction=instruction, response=response))


def generator_messages(instruction: str) -> Messages:
    """The Generator sees the bare instruction as its user turn."""
    return _user(instruction)

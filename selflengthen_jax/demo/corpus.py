"""The demo's warm-up corpus: every training task derived from one set of our own stories.

A real instruct model answers a long-writing request far too briefly; that is the
problem Self-Lengthen solves. The demo base model is taught the same habit and the
skills the loop asks of it, all from `<lang>.jsonl` (requests, each with a story of
four to six paragraphs) and `judge_<lang>.jsonl`:

- write: a request is answered with the story condensed, each paragraph cut to its
  first sentence (about a quarter of the words);
- extend: the Extender's prompt over condensed paragraphs is answered with the same
  paragraphs in full, for the first half (what stage 1 sees) and for the whole;
- judge: every story request says yes; the hand-written file adds short tasks that say no;
- self_instruct: the chat-formatted few-shot prompt (the assistant turn pre-filled with
  two seeds or requests as its examples), continued by two more requests.

So the demo shows the paper's effect by its mechanism, not by a recipe: the Extender
enriches answers in place, and the Generator trained on the richer answers writes them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from selflengthen_jax.demo.tokenizer import render_chatml
from selflengthen_jax.pipeline.prompts import (extend_messages, generator_messages, judge_answers,
                                               judge_messages, self_instruct_turn)
from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.pipeline.text import split_paragraphs

CORPUS_DIR = Path(__file__).parent / "corpus"
LANGUAGES: tuple[str, ...] = ("en", "zh")
TASKS: tuple[str, ...] = ("write", "extend", "judge", "self_instruct")
SELF_INSTRUCT_PASSES = 2  # each request is a self-instruct target this many times
# A 1.3M-parameter model learns two dozen stories well in minutes on a CPU, and that is
# enough requests for the demo's instructions; the rest of the corpus files stay unused.
STORIES_PER_LANGUAGE = 24
# A sentence ends at its closing mark (and any closing quotes or brackets after it).
_SENTENCE_END = {"en": re.compile(r"[.!?][\"'”’)]*(?=\s|$)"), "zh": re.compile(r"[。！？][”’」』）]*")}
_NEXT_LABEL = {"en": "\nInstruction 4: ", "zh": "\n指令4："}
_LABEL_SEPARATOR = {"en": " ", "zh": ""}  # what follows "Instruction 3:" / "指令3："
_PARAGRAPH_BREAK = "\n\n"


def _read_jsonl(name: str) -> list[dict]:
    lines = (CORPUS_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"the demo corpus has no language {language!r}; have {LANGUAGES}")
    return language


def stories(language: str) -> list[dict]:
    """The requests and their full stories: {"prompt", "response"}."""
    return _read_jsonl(f"{check_language(language)}.jsonl")[:STORIES_PER_LANGUAGE]


def first_sentence(paragraph: str, language: str) -> str:
    """A paragraph's first sentence (the whole paragraph when it has one)."""
    end = _SENTENCE_END[language].search(paragraph)
    return paragraph[: end.end()] if end else paragraph


def condense(paragraphs: list[str], language: str) -> str:
    """Paragraphs cut to their first sentences, paragraph breaks kept."""
    return _PARAGRAPH_BREAK.join(first_sentence(p, language) for p in paragraphs)


def write_pairs(language: str) -> list[dict]:
    """Request -> its story condensed: the base model's too-short answer."""
    return [{"messages": generator_messages(s["prompt"]),
             "response": condense(split_paragraphs(s["response"]), language)} for s in stories(language)]


def extend_pairs(language: str) -> list[dict]:
    """The Extender's prompt over condensed paragraphs -> those paragraphs in full:
    the first half (stage 1's input) and the whole text (stage 2's)."""
    pairs = []
    for s in stories(language):
        paragraphs = split_paragraphs(s["response"])
        for part in (paragraphs[: max(1, len(paragraphs) // 2)], paragraphs):
            pairs.append({"messages": extend_messages(language, s["prompt"], condense(part, language)),
                          "response": _PARAGRAPH_BREAK.join(part)})
    return pairs


def judge_pairs(language: str) -> list[dict]:
    """Does a request need a long text? Every story request says yes; the hand-written
    file adds short tasks that say no."""
    yes, _ = judge_answers(language)
    rows = [{"instruction": s["prompt"], "response": yes} for s in stories(language)]
    rows += _read_jsonl(f"judge_{language}.jsonl")
    return [{"messages": judge_messages(language, r["instruction"]), "response": r["response"]}
            for r in rows]


def self_instruct_prompt(language: str, example_1: str, example_2: str) -> str:
    """The loop's self-instruct prompt as the demo's ChatML template renders it."""
    messages, answer = self_instruct_turn(language, example_1, example_2)
    return render_chatml(messages, add_generation_prompt=True) + answer


def self_instruct_pairs(language: str) -> list[dict]:
    """Raw completions of the self-instruct prompt: two examples (seeds or requests: the
    loop's zh pool grows by the requests it accepts) and two new requests, so generation
    stops at "Instruction 4" after one new request."""
    requests = [s["prompt"] for s in stories(language)]
    examples = load_seeds(language) + requests
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(SELF_INSTRUCT_PASSES):
        order = rng.permutation(len(requests))
        for i in range(0, len(order) - 1, 2):
            first, second = requests[order[i]], requests[order[i + 1]]
            a, b = rng.choice([e for e in examples if e not in (first, second)], 2, replace=False)
            pairs.append({"raw": True, "prompt": self_instruct_prompt(language, a, b),
                          "response": _LABEL_SEPARATOR[language] + first + _NEXT_LABEL[language] + second})
    return pairs


TASK_PAIRS = {"write": write_pairs, "extend": extend_pairs, "judge": judge_pairs,
              "self_instruct": self_instruct_pairs}


def records(languages: tuple[str, ...] = LANGUAGES) -> list[dict]:
    """Every warm-up record of the given languages, in the trainer's record format."""
    return [r for lang in languages for task in TASKS for r in TASK_PAIRS[task](lang)]


def tokenizer_texts() -> list[str]:
    """Every demo text in a fixed order, both languages, for tokenizer training: chat
    records as ChatML (so the merges cover the scaffolding), raw ones as they are."""
    texts = []
    for r in records(LANGUAGES):
        if r.get("raw"):
            texts.append(r["prompt"] + r["response"])
        else:
            texts.append(render_chatml([*r["messages"], {"role": "assistant", "content": r["response"]}]))
    return texts

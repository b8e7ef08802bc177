"""The phases of one Self-Lengthen iteration, as deterministic functions of completions.

Each phase builds requests with stable ids and seeds derived from them, sends them
through a `CachedGenerator`, and decides from the completions alone. Retries are
rounds: round t re-asks every task not yet accepted, with try number t in its id.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from selflengthen_jax.checkpoint.tokenizer import chat_prompt
from selflengthen_jax.config import Config
from selflengthen_jax.pipeline import extension, prompts
from selflengthen_jax.pipeline.cached import CachedGenerator, derive_seed
from selflengthen_jax.pipeline.text import (Deduper, count_words, length_biased_keep,
                                            passes_quality)
from selflengthen_jax.sampling.request import Request, SamplingParams


@dataclasses.dataclass
class Roles:
    """Which registered weights play each role in this iteration ("base" in iteration 1)."""

    generator: str = "base"
    extender: str = "base"


@dataclasses.dataclass
class Phase:
    """What a phase needs: the config, the iteration, a cached generator, the tokenizer."""

    cfg: Config
    iteration: int
    gen: CachedGenerator
    tokenizer: Any
    roles: Roles
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def language(self) -> str:
        return self.cfg.language

    @property
    def templates(self) -> str | None:
        return self.cfg.pipeline.templates_dir or None

    def params(self, key: str, max_new_tokens: int, stop: Sequence[str] | None = None,
               greedy: bool = False) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              repetition_penalty=s.repetition_penalty,
                              max_new_tokens=max_new_tokens,
                              stop=tuple(s.stop if stop is None else stop),
                              seed=derive_seed(self.cfg.seed, key), greedy=greedy)

    def good(self, text: str) -> bool:
        ngram = self.cfg.pipeline.ngram_zh if self.language == "zh" else self.cfg.pipeline.ngram_en
        return passes_quality(text, self.language, ngram=ngram)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def retry_rounds(phase: Phase, tasks: Sequence[str], max_tries: int,
                 attempt: Callable[[list[tuple[str, int]]], dict[str, Any]],
                 enough: Callable[[int], bool] = lambda n: False) -> dict[str, Any]:
    """Run `attempt` on (task, try) pairs, re-trying tasks it did not accept.

    `attempt` returns {task: result} for the accepted ones. Stops early when
    `enough(accepted count)` (the finish_fraction / target cut).
    """
    accepted: dict[str, Any] = {}
    for t in range(max_tries):
        todo = [(task, t) for task in tasks if task not in accepted]
        if not todo or enough(len(accepted)):
            break
        accepted.update(attempt(todo))
        phase.count("attempts", len(todo))
    return accepted


# -- phase 0: self-instruct -------------------------------------------------------------------
def self_instruct(phase: Phase, pool: list[str], target: int, id_prefix: str,
                  adapter: str) -> list[dict]:
    """Few-shot raw completion of new instructions, filtered by length, novelty and a judge."""
    p = phase.cfg.pipeline
    lang = phase.language
    dedup = Deduper(threshold=p.dedup_threshold)
    for text in pool:
        dedup.add(text)
    slots = [f"{id_prefix}-{s:05d}" for s in range(target)]
    accepted_texts = list(pool)
    stop = prompts.self_instruct_stop(lang)

    def attempt(todo: list[tuple[str, int]]) -> dict[str, Any]:
        reqs = []
        for slot, t in todo:
            rng = np.random.default_rng(derive_seed(phase.cfg.seed, slot, t, "examples"))
            a, b = rng.choice(len(accepted_texts), size=2, replace=False)
            prompt = prompts.self_instruct_prompt(lang, accepted_texts[a], accepted_texts[b],
                                                  templates_dir=phase.templates)
            reqs.append(Request(id=f"{slot}-t{t}", prompt=prompt, adapter=adapter,
                                params=phase.params(f"{slot}-t{t}", p.instruct_max_new_tokens, stop)))
        outs = phase.gen.generate(reqs)
        candidates = []
        for (slot, t), c in zip(todo, outs):
            text = prompts.parse_instruction(c.text)
            words = count_words(text)
            if not p.min_instruction_words < words < p.max_instruction_words:
                phase.count("instructions_rejected_length")
            elif dedup.is_duplicate(text):
                phase.count("instructions_rejected_duplicate")
            else:
                candidates.append((slot, t, text))
        verdicts = judge(phase, [text for _, _, text in candidates], adapter)
        got = {}
        for (slot, t, text), yes in zip(candidates, verdicts):
            if not yes:
                phase.count("instructions_rejected_judge")
            elif dedup.add(text):  # also catches near-duplicates made in this same round
                got[slot] = {"id": slot, "instruction": text, "try": t, "language": lang}
                accepted_texts.append(text)
            else:
                phase.count("instructions_rejected_duplicate")
        return got

    need = max(1, int(np.ceil(p.finish_fraction * target)))
    accepted = retry_rounds(phase, slots, p.instruct_tries, attempt, lambda n: n >= need)
    phase.count("instructions_cut_by_finish_fraction", max(0, len(accepted) - need))
    return [accepted[s] for s in slots if s in accepted][:need]


def judge(phase: Phase, instructions: Sequence[str], adapter: str) -> list[bool]:
    """Does each instruction call for a long text? By answer likelihood or by sampling."""
    if not instructions:
        return []
    lang = phase.language
    msgs = [prompts.judge_messages(lang, text, templates_dir=phase.templates) for text in instructions]
    if phase.cfg.pipeline.judge == "likelihood":
        yes, no = prompts.judge_answers(lang)
        heads = [chat_prompt(phase.tokenizer, m) for m in msgs]
        scores = phase.gen.loglikelihood([(h, a) for h in heads for a in (yes, no)], adapter)
        return [scores[2 * i] > scores[2 * i + 1] for i in range(len(instructions))]
    reqs = [Request(id=f"judge-{derive_seed(text)}", messages=m, adapter=adapter,
                    params=phase.params(f"judge-{text}", 8, stop=(), greedy=True))
            for text, m in zip(instructions, msgs)]
    return [prompts.parse_judgement(c.text, lang) is True for c in phase.gen.generate(reqs)]


# -- phase 1: initial responses ---------------------------------------------------------------
def initial_responses(phase: Phase, instructions: list[dict]) -> list[dict]:
    """The Generator answers each instruction n times; bad answers are resampled."""
    p = phase.cfg.pipeline
    tasks = {f"{ins['id']}-r{j}": ins for ins in instructions for j in range(p.responses_per_instruction)}

    def attempt(todo: list[tuple[str, int]]) -> dict[str, Any]:
        reqs = [Request(id=f"{task}-t{t}", messages=prompts.generator_messages(tasks[task]["instruction"]),
                        adapter=phase.roles.generator,
                        params=phase.params(f"{task}-t{t}", p.max_new_tokens))
                for task, t in todo]
        got = {}
        for (task, t), c in zip(todo, phase.gen.generate(reqs)):
            if phase.good(c.text):
                got[task] = {"id": task, "instruction_id": tasks[task]["id"],
                             "instruction": tasks[task]["instruction"], "response": c.text.strip(),
                             "words": count_words(c.text), "try": t}
            else:
                phase.count("initial_rejected_quality")
        return got

    accepted = finish_cut(phase, retry_rounds(phase, list(tasks), p.response_tries, attempt,
                                              _enough(phase, len(tasks))), list(tasks))
    return downsample(phase, accepted, "initial")


# -- phase 2: extension -----------------------------------------------------------------------
def extend(phase: Phase, initial: list[dict]) -> list[dict]:
    """Each accepted response is extended n times by up to `extension_rounds` two-stage rounds."""
    p = phase.cfg.pipeline
    tasks = {f"{r['id']}-e{j}": r for r in initial for j in range(p.extensions_per_response)}

    def attempt(todo: list[tuple[str, int]]) -> dict[str, Any]:
        current = {task: tasks[task]["response"] for task, _ in todo}
        for rnd in range(p.extension_rounds):
            current = extension_round(phase, [(task, t, current[task]) for task, t in todo],
                                      tasks, rnd)
        got = {}
        for task, t in todo:
            initial_words = tasks[task]["words"]
            words = count_words(current[task])
            if words > p.min_extension_ratio * initial_words:
                got[task] = {"id": task, "initial_id": tasks[task]["id"],
                             "instruction": tasks[task]["instruction"],
                             "initial": tasks[task]["response"], "response": current[task],
                             "words": words, "initial_words": initial_words, "try": t}
            else:
                phase.count("extended_rejected_too_short")
        return got

    accepted = finish_cut(phase, retry_rounds(phase, list(tasks), p.extension_tries, attempt,
                                              _enough(phase, len(tasks))), list(tasks))
    return downsample(phase, accepted, "extended")


def extension_round(phase: Phase, items: list[tuple[str, int, str]], tasks: dict[str, dict],
                    rnd: int) -> dict[str, str]:
    """One two-stage round for many texts; a text is replaced only by a longer, good one."""
    lang, tpl, p = phase.language, phase.templates, phase.cfg.pipeline
    key = lambda task, t, stage: f"{task}-t{t}-x{rnd}-s{stage}"  # noqa: E731
    stage1 = [Request(id=key(task, t, 1), adapter=phase.roles.extender,
                      messages=extension.stage1_request_messages(lang, tasks[task]["instruction"], text,
                                                                 templates_dir=tpl),
                      params=phase.params(key(task, t, 1), p.max_new_tokens))
              for task, t, text in items]
    kept = [extension.keep_leading(c.text) if c.text.strip() else ""
            for c in phase.gen.generate(stage1)]
    stage2 = []
    for (task, t, text), k in zip(items, kept):
        msgs = extension.stage2_request_messages(lang, tasks[task]["instruction"], text, templates_dir=tpl)
        prompt = chat_prompt(phase.tokenizer, msgs, assistant_prefix=extension.stage2_prefix(k) if k else "")
        stage2.append(Request(id=key(task, t, 2), prompt=prompt, adapter=phase.roles.extender,
                              params=phase.params(key(task, t, 2), p.max_new_tokens)))
    out = {}
    for (task, t, text), k, c in zip(items, kept, phase.gen.generate(stage2)):
        joined = extension.join_stages(k, c.text) if k else c.text.strip()
        better = phase.good(joined) and count_words(joined) > count_words(text)
        phase.count("extension_rounds_improved" if better else "extension_rounds_kept_previous")
        out[task] = joined if better else text
    return out


# -- shared -----------------------------------------------------------------------------------
def _enough(phase: Phase, total: int) -> Callable[[int], bool]:
    need = int(np.ceil(phase.cfg.pipeline.finish_fraction * total))
    return lambda n: n >= need


def finish_cut(phase: Phase, accepted: dict[str, Any], order: list[str]) -> list[dict]:
    """Accepted records in task order; with finish_fraction < 1, stragglers beyond it are cut."""
    need = int(np.ceil(phase.cfg.pipeline.finish_fraction * len(order)))
    records = [accepted[t] for t in order if t in accepted]
    phase.count("cut_by_finish_fraction", max(0, len(records) - need))
    return records[:need]


def downsample(phase: Phase, records: list[dict], name: str) -> list[dict]:
    """Length-biased down-sampling: short answers are dropped more often."""
    rng = np.random.default_rng(derive_seed(phase.cfg.seed, phase.iteration, name, "downsample"))
    keep = length_biased_keep([r["words"] for r in records], rng)
    phase.count(f"{name}_before_downsample", len(records))
    return [r for r, k in zip(records, keep) if k]


# -- phase 3: SFT data ------------------------------------------------------------------------
def sft_data(phase: Phase, extended: list[dict]) -> tuple[list[dict], list[dict]]:
    """Generator pairs (instruction -> extended) and Extender pairs (extend-prompt -> extended)."""
    p = phase.cfg.pipeline
    gen = [{"id": r["id"], "prompt": r["instruction"], "response": r["response"]} for r in extended]
    ext = []
    for r in extended:
        rng = np.random.default_rng(derive_seed(phase.cfg.seed, r["id"], "line_keep"))
        msgs = extension.extender_training_prompt(phase.language, r["instruction"], r["initial"], rng,
                                                  keep_prob=p.line_keep_prob,
                                                  templates_dir=phase.templates)
        ext.append({"id": r["id"], "messages": msgs, "response": r["response"]})
    return gen, ext

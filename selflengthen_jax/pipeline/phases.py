"""The phases of one Self-Lengthen iteration, as deterministic functions of completions.

Each phase builds requests with stable ids and seeds derived from them, sends them
through a `CachedGenerator`, and decides from the completions alone. Retries are
rounds: round t re-asks every task not yet accepted, with try number t in its id.
The rules are the reference's (QwenLM/Self-Lengthen step0-step2) unless the config
picks this project's variants (`pipeline.rules`, `pipeline.judge`, `pipeline.downsample_by`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from selflengthen_jax.checkpoint.tokenizer import chat_prompt
from selflengthen_jax.config import Config
from selflengthen_jax.pipeline import extension, prompts
from selflengthen_jax.pipeline.cached import CachedGenerator, derive_seed
from selflengthen_jax.pipeline.text import Deduper, check_response, count_words, length_biased_keep
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
    scope: str = ""  # the phase's directory (iter_k, round_r), so each draws its own randomness
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
        return check_response(text, self.language, self.cfg.pipeline.rules, ngram=ngram)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def finish_count(fraction: float, total: int) -> int:
    """How many completed tasks end a phase: the first count c with c / total > fraction,
    the reference's test (so 0.95 of 20 tasks is all 20, of 100 it is 96), else all."""
    return next((c for c in range(1, total + 1) if c / total > fraction), total)


def retry_rounds(phase: Phase, tasks: Sequence[str], max_tries: int,
                 attempt: Callable[[list[tuple[str, int]]], dict[str, Any]],
                 fraction: float = 1.0) -> list[Any]:
    """Run `attempt` on (task, try) pairs, re-trying tasks it did not accept; the
    accepted results, in task order.

    `attempt` returns {task: result} for the accepted ones. A task completes when it is
    accepted or fails its last try, as a reference task (and its retries) does; once
    `finish_count(fraction)` tasks have completed, in round then task order, the phase
    stops: later completions are cut and unfinished tasks dropped, both counted.
    """
    accepted: dict[str, Any] = {}
    completed: list[str] = []
    stop_at = finish_count(fraction, len(tasks))
    for t in range(max_tries):
        todo = [(task, t) for task in tasks if task not in accepted]
        if not todo or len(completed) >= stop_at:
            break
        got = attempt(todo)
        phase.count("attempts", len(todo))
        accepted.update(got)
        completed += [task for task, _ in todo if task in got or t == max_tries - 1]
    finished = set(completed[:stop_at])
    if fraction < 1.0:
        phase.count("cut_by_finish_fraction", sum(1 for task in completed[stop_at:] if task in accepted))
        phase.count("unfinished_at_cut", len(tasks) - len(completed))
    return [accepted[task] for task in tasks if task in accepted and task in finished]


# -- phase 0: self-instruct -------------------------------------------------------------------
# The reference compares the judge's whole reply with "是" / "yes", so a reply longer
# than a few tokens is a no whatever it says: there is no need to let it run on.
JUDGE_MAX_NEW_TOKENS = 16


def self_instruct(phase: Phase, seeds: list[str], seen: list[str], target: int, id_prefix: str,
                  adapter: str) -> list[dict]:
    """`target` new instructions, in batches of `pipeline.instruct_batch`, each batch's
    few-shot pool starting again from the seeds (as the reference's rounds of 500 do).
    Candidates out of the word range, repeating `seen` (seeds and earlier iterations'
    instructions) or an accepted one, or judged short, are re-asked."""
    batch = phase.cfg.pipeline.instruct_batch
    dedup = Deduper(threshold=phase.cfg.pipeline.dedup_threshold)
    for text in seen:
        dedup.add(text)
    out: list[dict] = []
    for start in range(0, target, batch):
        slots = [f"{id_prefix}-{s:05d}" for s in range(start, min(target, start + batch))]
        out += _self_instruct_batch(phase, seeds, slots, dedup, adapter)
    return out


def _self_instruct_batch(phase: Phase, seeds: list[str], slots: list[str], dedup: Deduper,
                         adapter: str) -> list[dict]:
    """One batch: the chat-formatted few-shot prompt with a pre-filled answer. Its two
    examples come from the seeds (en) or the seeds plus this batch's accepted
    instructions (zh), as in the reference's English and Chinese scripts."""
    p = phase.cfg.pipeline
    lang = phase.language
    pool = list(seeds)
    stop = prompts.self_instruct_stop(lang)

    def attempt(todo: list[tuple[str, int]]) -> dict[str, Any]:
        reqs = []
        for slot, t in todo:
            rng = np.random.default_rng(derive_seed(phase.cfg.seed, slot, t, "examples"))
            a, b = rng.choice(len(pool), size=2, replace=False)
            messages, answer = prompts.self_instruct_turn(lang, pool[a], pool[b],
                                                          templates_dir=phase.templates)
            prompt = chat_prompt(phase.tokenizer, messages, assistant_prefix=answer)
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
                if lang == "zh":
                    pool.append(text)
            else:
                phase.count("instructions_rejected_duplicate")
        return got

    return retry_rounds(phase, slots, p.instruct_tries, attempt)


def judge(phase: Phase, instructions: Sequence[str], adapter: str) -> list[bool]:
    """Does each instruction call for a long text? By a sampled answer (the reference)
    or by comparing the likelihoods of every spelling of yes and no."""
    if not instructions:
        return []
    lang = phase.language
    msgs = [prompts.judge_messages(lang, text, templates_dir=phase.templates) for text in instructions]
    if phase.cfg.pipeline.judge == "likelihood":
        yes, no = prompts.judge_answer_forms(lang)
        answers = yes + no
        heads = [chat_prompt(phase.tokenizer, m) for m in msgs]
        scores = phase.gen.loglikelihood([(h, a) for h in heads for a in answers], adapter)
        rows = [scores[i * len(answers):(i + 1) * len(answers)] for i in range(len(instructions))]
        return [max(row[:len(yes)]) > max(row[len(yes):]) for row in rows]
    reqs = [Request(id=f"judge-{derive_seed(text)}", messages=m, adapter=adapter,
                    params=phase.params(f"judge-{text}", JUDGE_MAX_NEW_TOKENS))
            for text, m in zip(instructions, msgs)]
    return [prompts.judge_says_yes(c.text, lang) for c in phase.gen.generate(reqs)]


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

    accepted = retry_rounds(phase, list(tasks), p.response_tries, attempt, p.finish_fraction)
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

    accepted = retry_rounds(phase, list(tasks), p.extension_tries, attempt, p.finish_fraction)
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
    kept = [extension.keep_leading(c.text) for c in phase.gen.generate(stage1)]
    stage2 = []
    for (task, t, text), k in zip(items, kept):
        msgs = extension.stage2_request_messages(lang, tasks[task]["instruction"], text, templates_dir=tpl)
        prompt = chat_prompt(phase.tokenizer, msgs, assistant_prefix=k)
        stage2.append(Request(id=key(task, t, 2), prompt=prompt, adapter=phase.roles.extender,
                              params=phase.params(key(task, t, 2), p.max_new_tokens)))
    out = {}
    for (task, t, text), k, c in zip(items, kept, phase.gen.generate(stage2)):
        joined = extension.join_stages(k, c.text)
        better = phase.good(joined) and count_words(joined) > count_words(text)
        phase.count("extension_rounds_improved" if better else "extension_rounds_kept_previous")
        out[task] = joined if better else text
    return out


# -- shared -----------------------------------------------------------------------------------
def downsample(phase: Phase, records: list[dict], name: str) -> list[dict]:
    """Length-biased down-sampling: short answers are dropped more often. Ranked by
    characters with shared ties (the reference) or by words in record order."""
    rng = np.random.default_rng(derive_seed(phase.cfg.seed, phase.iteration, phase.scope, name,
                                            "downsample"))
    if phase.cfg.pipeline.downsample_by == "chars":
        keep = length_biased_keep([len(r["response"]) for r in records], rng, ties="shared")
    else:
        keep = length_biased_keep([r["words"] for r in records], rng, ties="ordered")
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

"""What the eval launch scripts run: LonGen evaluation (generate, score, judge) and
length-control data building (plan, rewrite, finalize).

Readers here validate a whole user file (naming file:line) before anything is loaded;
the compute steps take an engine or an `ask` function, so tests can substitute fakes.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from selflengthen_jax.config import Config
from selflengthen_jax.eval.constraints import constraint_from_row
from selflengthen_jax.eval.judge import (
    Ask,
    engine_asker,
    judge_all,
    judge_messages,
    mean_scores,
    openai_asker,
)
from selflengthen_jax.eval.length_control import Plan, finalize_record, plan_length_control, rewrite_messages
from selflengthen_jax.eval.plot import plot_lengths
from selflengthen_jax.eval.scores import (LONGBENCH_WRITE_TYPE, is_longbench_write_row, longbench_write_range,
                                          markdown_table, report_json, score_records)
from selflengthen_jax.pipeline.store import JsonlStore, atomic_write_json, atomic_write_text
from selflengthen_jax.pipeline.text import LANGUAGES, language_of
from selflengthen_jax.pipeline.prompt_file import (
    OUTPUT_FIELDS,
    PromptItem,
    check_prompt_lengths,
    check_unique,
    generate_missing,
    numbered_records,
    record_id,
)
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import Request, SamplingParams
from selflengthen_jax.sampling.service import build_engine, check_model, sampling_params

BENCHMARK_FIELDS = ("query", "type", "constraint", "language", "range")
RESPONSES = "responses.jsonl"
JUDGE_ANSWERS = "judge_answers.jsonl"
WRITES = (RESPONSES, "report.json", "report.md", "lengths.png", "judge.json", JUDGE_ANSWERS)  # in --output
JUDGE_MAX_NEW_TOKENS = 1024  # the reference prompt asks for an analysis before the scores


# -- LonGen evaluation ----------------------------------------------------------------------
def _string_fields(record: Mapping, fields: Sequence[str], where: str) -> None:
    for field in fields:
        if not isinstance(record.get(field), str):
            raise ValueError(f"{where}: missing or non-string field {field!r}")


def read_benchmark(path: str | Path, with_responses: bool = False) -> list[PromptItem]:
    """LonGen rows (or LongBench-Write's, see `longbench_write_row`) as chat items (the
    query is the user turn), every line checked: required fields, a known language, a
    constraint that parses, and with `with_responses` a `response` to score."""
    items = []
    for where, line, row in numbered_records(path):
        fields = BENCHMARK_FIELDS
        if is_longbench_write_row(row):
            row = longbench_write_row(row, where)
            fields = tuple(f for f in BENCHMARK_FIELDS if f != "constraint")
        _string_fields(row, fields + (("response",) if with_responses else ()), where)
        if row["language"] not in LANGUAGES:
            raise ValueError(f"{where}: language {row['language']!r} is not one of {', '.join(LANGUAGES)}")
        try:
            if not is_longbench_write_row(row):
                constraint_from_row(row)
        except ValueError as error:
            raise ValueError(f"{where}: bad constraint: {error}") from None
        items.append(PromptItem(record_id(row, where, line), where, row,
                                messages=[{"role": "user", "content": row["query"]}]))
    if not items:
        raise ValueError(f"{path}: no benchmark rows")
    check_unique((item.id, item.where) for item in items)
    return items


def longbench_write_row(row: Mapping, where: str) -> dict:
    """A LongBench-Write row (`prompt`, required `length`) in LonGen's shape: the prompt
    as `query`, the language detected unless given, `type` "length" and LongWriter's
    length bucket as `range` (no `constraint`: it is scored by S_l alone)."""
    length = row.get("length")
    if isinstance(length, bool) or not isinstance(length, (int, float)) or not length > 0:
        raise ValueError(f"{where}: 'length' must be a positive number, got {length!r}")
    query = row.get("query", row.get("prompt"))
    if not isinstance(query, str):
        raise ValueError(f"{where}: missing or non-string field 'prompt'")
    return {**row, "query": query, "language": row.get("language") or language_of(query),
            "category": row.get("type"), "type": LONGBENCH_WRITE_TYPE,
            "range": longbench_write_range(length)}


def eval_params(cfg: Config) -> SamplingParams:
    """The config's sampling at eval.max_new_tokens and without stop strings: a long
    answer may well contain "---" or blank lines, and cutting it there would score
    the stop list instead of the model."""
    return sampling_params(cfg.sampling, seed=cfg.seed, max_new_tokens=cfg.eval.max_new_tokens, stop=())


def check_resumable(items: Sequence[PromptItem], store: JsonlStore) -> None:
    """A stored response must answer the same query: a reused --output directory
    with an edited benchmark would otherwise score answers to other questions."""
    stored = {r["id"]: r for r in store.records()}
    for item in items:
        old = stored.get(item.id)
        if old is not None and old.get("query") != item.record["query"]:
            raise ValueError(f"{store.path}: id {item.id!r} answers a different query than {item.where}; "
                             "use a fresh --output directory")


def stored_rows(items: Sequence[PromptItem], store: JsonlStore) -> list[dict]:
    """The stored response rows, in benchmark order (every item must be answered)."""
    by_id = {r["id"]: r for r in store.records()}
    return [by_id[item.id] for item in items]


@dataclasses.dataclass
class Generation:
    """Benchmark responses still to generate, and the engine that will write them."""

    store: JsonlStore
    todo: list[PromptItem]
    params: SamplingParams
    engine: Engine | None


def prepare_generation(cfg: Config, items: Sequence[PromptItem], out_dir: Path) -> Generation:
    """Open out_dir/responses.jsonl, check it fits the benchmark, and load the model only
    if some row is unanswered (all checks happen here, before any compute)."""
    store = JsonlStore.open(out_dir / RESPONSES, fields=OUTPUT_FIELDS)
    check_resumable(items, store)
    params = eval_params(cfg)
    todo = [item for item in items if item.id not in store]
    engine = build_engine(cfg, max_new_tokens=params.max_new_tokens) if todo else None  # model.path
    if engine is not None:
        check_prompt_lengths(engine, todo)
    return Generation(store, todo, params, engine)


def generate_responses(generation: Generation, items: Sequence[PromptItem]) -> list[dict]:
    """Answer the missing rows, release the engine (a local judge may load next) and
    return every row with its response, in benchmark order."""
    if generation.engine is not None:
        generate_missing(generation.engine, generation.todo, generation.store, generation.params)
        generation.engine = None
        gc.collect()
    return stored_rows(items, generation.store)


def write_scores(rows: Sequence[Mapping], ids: Sequence[str], out_dir: Path) -> dict:
    """Score rows with responses; write report.json, report.md and lengths.png."""
    report = score_records(rows)
    report["records"] = [{"id": i, **r} for i, r in zip(ids, report["records"])]
    atomic_write_text(out_dir / "report.json", report_json(report) + "\n")
    atomic_write_text(out_dir / "report.md", "# LonGen length following\n\n"
                      + markdown_table(report, "longen")
                      + "\n# LongBench-Write length score\n\n"
                      + markdown_table(report, "longbench_write"))
    plot_lengths(report["records"], out_dir / "lengths.png", title="LonGen: requested vs produced length")
    return report


def judge_items(rows: Sequence[Mapping]) -> list[dict]:
    return [{"query": r["query"], "response": r["response"], "language": r["language"]} for r in rows]


def check_judge_prompts(engine: Engine, rows: Sequence[Mapping], wheres: Sequence[str],
                        prompt: str = "reference") -> None:
    """The judge sees query + full response: fail naming the row if one does not fit."""
    items = [PromptItem(f"judge-{k}", where, {}, messages=judge_messages(it["query"], it["response"],
                                                                         it["language"], prompt))
             for k, (it, where) in enumerate(zip(judge_items(rows), wheres))]
    check_prompt_lengths(engine, items)


@dataclasses.dataclass(frozen=True)
class JudgeChoice:
    """A local judge checkpoint (`model`) or an OpenAI-compatible endpoint (`url`, `name`)."""

    model: str = ""
    url: str = ""
    name: str = ""
    prompt: str = "reference"  # eval.judge_prompt

    @property
    def label(self) -> str:
        return self.model or f"{self.name} @ {self.url}"


def judge_choice(cfg: Config, model: str | None, url: str | None, name: str | None) -> JudgeChoice | None:
    """The judge asked for (flags over eval.judge_url / eval.judge_model), or None."""
    url, name = url or cfg.eval.judge_url, name or cfg.eval.judge_model
    if model and url:
        raise ValueError("choose one judge: --judge-model or --judge-url")
    if url and not name:
        raise ValueError("--judge-url needs --judge-name (the model name the server serves)")
    if model:
        check_model(model)
    return JudgeChoice(model or "", url or "", name or "", cfg.eval.judge_prompt) if model or url else None


def engine_judge(cfg: Config, path: str) -> tuple[Engine, Ask]:
    """A local judge model; its prefill room covers a prompt plus a full-length answer."""
    engine_cfg = dataclasses.replace(
        cfg.engine, max_prefill_len=cfg.engine.max_prefill_len + cfg.eval.max_new_tokens)
    engine = build_engine(dataclasses.replace(cfg, engine=engine_cfg), path,
                          max_new_tokens=JUDGE_MAX_NEW_TOKENS)
    return engine, engine_asker(engine, SamplingParams(greedy=True, max_new_tokens=JUDGE_MAX_NEW_TOKENS,
                                                        stop=()))


def url_judge(choice: JudgeChoice, out_dir: Path) -> Ask:
    """The endpoint's `ask`, saving each answer in out_dir/judge_answers.jsonl as it
    arrives (a rerun resumes); a key, if the server needs one, comes from $OPENAI_API_KEY."""
    return openai_asker(choice.url, choice.name, api_key=os.environ.get("OPENAI_API_KEY"),
                        answers=out_dir / JUDGE_ANSWERS)


def write_judgement(rows: Sequence[Mapping], ids: Sequence[str], ask: Ask, judge: str,
                    out_dir: Path, prompt: str = "reference") -> dict:
    """Quality scores (1-10 on seven dimensions) into judge.json; returns its content."""
    scores, stats = judge_all(judge_items(rows), ask, prompt=prompt)
    result = {"judge": judge, "mean": mean_scores(scores), "stats": stats,
              "scores": [{"id": i, "scores": s} for i, s in zip(ids, scores)]}
    atomic_write_json(out_dir / "judge.json", result)
    return result


def summary(report: Mapping, judged: Mapping | None) -> list[str]:
    """Human-readable lines for stdout; the last is always `overall=<LonGen mean>`."""
    lines = [markdown_table(report, "longen").rstrip()]
    lines.append(f"longbench_write={report['overall']['longbench_write']:.2f} "
                 f"n={report['overall']['n']}")
    if judged is not None:
        mean = judged["mean"].get("overall")
        lines.append(f"judge={'n/a' if mean is None else f'{mean:.2f}'} "
                     f"scored={judged['stats']['scored']}/{judged['stats']['items']}")
    longen = report["overall"]["longen"]  # None for a LongBench-Write file: no LonGen bands
    lines.append(f"overall={'n/a' if longen is None else f'{longen:.4f}'}")
    return lines


# -- length-control data --------------------------------------------------------------------
Rewrite = Callable[[Sequence[Plan]], list[str | None]]
LENGTH_CONTROL_FIELDS = ("id", "prompt", "response", "demand", "rewrite")  # in every record written


def read_pairs(path: str | Path) -> list[dict]:
    """Long (instruction|prompt, response) records as plan inputs, every line checked."""
    pairs, wheres = [], []
    for where, line, record in numbered_records(path):
        if ("instruction" in record) == ("prompt" in record):
            raise ValueError(f"{where}: give exactly one of 'instruction' or 'prompt'")
        key = "instruction" if "instruction" in record else "prompt"
        _string_fields(record, (key, "response"), where)
        pair = {"id": record_id(record, where, line), "instruction": record[key],
                "response": record["response"]}
        if "language" in record:
            if record["language"] not in LANGUAGES:
                raise ValueError(f"{where}: language {record['language']!r} is not one of "
                                 f"{', '.join(LANGUAGES)}")
            pair["language"] = record["language"]
        pairs.append(pair)
        wheres.append(where)
    check_unique((p["id"], where) for p, where in zip(pairs, wheres))
    return pairs


def rewrite_params(cfg: Config) -> SamplingParams:
    """Greedy: a rewrite should restate the query, not vary it."""
    return sampling_params(cfg.sampling, greedy=True, max_new_tokens=cfg.pipeline.instruct_max_new_tokens,
                           stop=())


def engine_rewriter(engine: Engine, params: SamplingParams) -> Rewrite:
    """`Rewrite` backed by the engine: one chat request per plan, texts in plan order.

    A query whose rewrite prompt does not fit the engine gets None (the template
    fallback) rather than failing the run: the model rewrite is an improvement, not
    a requirement.
    """
    def rewrite(plans: Sequence[Plan]) -> list[str | None]:
        requests = [Request(id=p.source_id, params=params,
                            messages=rewrite_messages(p.language, p.query, p.demand, p.placement))
                    for p in plans]
        fits = [k for k, r in enumerate(requests)
                if len(engine.prompt_ids(r)) <= engine.section.max_prefill_len]
        texts: list[str | None] = [None] * len(plans)
        for k, completion in zip(fits, engine.generate([requests[k] for k in fits], progress=True)):
            texts[k] = completion.text
        return texts
    return rewrite


def word_bounds(cfg: Config) -> tuple[int, int]:
    """[eval.min_words, eval.max_words], checked: the pairs a run keeps."""
    low, high = cfg.eval.min_words, cfg.eval.max_words
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= eval.min_words <= eval.max_words, got {low} and {high}")
    return low, high


def length_control(pairs: Sequence[Mapping], cfg: Config, rewrite: Rewrite | None = None) -> list[dict]:
    """Plan demands for pairs within [eval.min_words, eval.max_words], rewrite their
    queries with `rewrite` (None: template only) and build the SFT records.

    One generator seeded from `cfg.seed` draws the plans and then the template
    choices, so a rerun with the same inputs and rewrites gives the same file.
    """
    rng = np.random.default_rng(cfg.seed)
    plans = plan_length_control(pairs, rng, *word_bounds(cfg))
    rewritten = rewrite(plans) if rewrite and plans else [None] * len(plans)
    return [{"id": plan.source_id, **finalize_record(plan, text, rng)}
            for plan, text in zip(plans, rewritten)]


def write_jsonl(path: str | Path, records: Sequence[Mapping]) -> None:
    """All records at once, atomically: a reader never sees half a file."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

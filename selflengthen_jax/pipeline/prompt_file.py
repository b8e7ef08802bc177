"""Generation over JSONL files of prompts: check every line first, then generate, appending
each completion to a store the moment it finishes.

A user's file is validated whole before a model is loaded, so a typo on line 9,000 costs
seconds, not a night of generation. Output goes through `JsonlStore`: a crash loses only
unfinished requests, and a rerun skips ids already written. Each request's seed comes
from the run seed and its id, so a resumed run samples exactly what a fresh one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline.store import JsonlStore, read_jsonl
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import Completion, Request, SamplingParams


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One validated input line: what to send, and the fields to echo into the output."""

    id: str
    where: str                       # "file:line", for messages about this item
    record: Mapping
    messages: list[dict] | None = None
    prompt: str | None = None        # raw completion text (no chat template)

    def request(self, params: SamplingParams) -> Request:
        return Request(id=self.id, params=params, messages=self.messages, prompt=self.prompt)


def numbered_records(path: str | Path) -> list[tuple[str, int, dict]]:
    """(`file:line`, line, record) for every non-empty line, via the strict reader."""
    records = read_jsonl(path)
    data = as_path(path).read_bytes().removeprefix(b"\xef\xbb\xbf")
    lines = [n for n, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    return [(f"{path}:{line}", line, record) for line, record in zip(lines, records)]


def record_id(record: Mapping, where: str, line: int) -> str:
    """The record's `id` as a string (a string or an integer), else its line number."""
    value = record.get("id", line)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{where}: 'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


def check_unique(entries: Iterable[tuple[str, str]]) -> None:
    """(id, where) pairs: ids key the resume store, so a repeated one would lose a line."""
    first: dict[str, str] = {}
    for rid, where in entries:
        if rid in first:
            raise ValueError(f"{where}: duplicate id {rid!r} (first at {first[rid]})")
        first[rid] = where


def _text(record: Mapping, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _messages(value: object, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for k, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{where}: messages[{k}] must be an object with string 'role' and 'content'")
    return value


def prompt_item(record: dict, where: str, line: int) -> PromptItem:
    """`{"id"?, "prompt", "raw"?}` or `{"id"?, "messages"}` as an item.

    A prompt string is one user chat turn unless `"raw": true`, which completes it
    as is (base models, or prompts already templated).
    """
    rid = record_id(record, where, line)
    raw = record.get("raw", False)
    if not isinstance(raw, bool):
        raise ValueError(f"{where}: 'raw' must be true or false, got {raw!r}")
    if ("prompt" in record) == ("messages" in record):
        raise ValueError(f"{where}: give exactly one of 'prompt' or 'messages'")
    if "messages" in record:
        if raw:
            raise ValueError(f"{where}: 'raw' applies to 'prompt' only, not to 'messages'")
        return PromptItem(rid, where, record, messages=_messages(record["messages"], where))
    prompt = _text(record, "prompt", where)
    if raw:
        return PromptItem(rid, where, record, prompt=prompt)
    return PromptItem(rid, where, record, messages=[{"role": "user", "content": prompt}])


def read_prompts(path: str | Path) -> list[PromptItem]:
    """Every line of a prompt file as an item; the first bad line raises naming it."""
    items = [prompt_item(record, where, line) for where, line, record in numbered_records(path)]
    check_unique((item.id, item.where) for item in items)
    return items


def record_seed(seed: int, record_id: str) -> int:
    """A per-request seed from the run seed and the id (sha256: stable across processes,
    unlike `hash()`), so resuming or reordering never changes what a request samples."""
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def check_prompt_lengths(engine: Engine, items: Sequence[PromptItem]) -> None:
    """Fail naming the line when a prompt does not fit the engine's prefill room."""
    limit = engine.section.max_prefill_len
    for item in items:
        n = len(engine.prompt_ids(item.request(SamplingParams())))
        if not 0 < n <= limit:
            raise ValueError(f"{item.where}: prompt is {n} tokens; engine.max_prefill_len={limit} "
                             "(raise it with engine.max_prefill_len=N)")


OUTPUT_FIELDS = ("response",)  # what marks an output file's records as answers, not prompts


def output_record(item: PromptItem, completion: Completion) -> dict:
    """The id (always a string) first, the other input fields, then the completion."""
    fields = {k: v for k, v in item.record.items() if k != "id"}
    return {"id": item.id, **fields, "response": completion.text,
            "response_token_ids": list(completion.token_ids),
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason}


def generate_missing(engine: Engine, items: Sequence[PromptItem], store: JsonlStore,
                     params: SamplingParams, progress: bool = True) -> int:
    """Generate for items whose id is not in `store` yet, appending each as it finishes.

    `params.seed` is the run seed; each request gets `record_seed(seed, id)`.
    Returns how many were generated.
    """
    todo = [item for item in items if item.id not in store]
    requests = [item.request(dataclasses.replace(params, seed=record_seed(params.seed, item.id)))
                for item in todo]
    try:
        engine.generate(requests, progress=progress,
                        on_complete=lambda i, completion: store.append(output_record(todo[i], completion)))
    finally:
        store.flush()  # a bucket store's last batch, also when stopped
    return len(todo)

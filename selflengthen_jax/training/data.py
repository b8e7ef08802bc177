"""Supervised fine-tuning data: (prompt, response) records -> fixed-shape token batches.

A record is `{"prompt": str, "response": str}` or `{"messages": [...], "response": str}`.
The prompt is rendered with the checkpoint's chat template (assistant turn opened) and
the response is followed by the tokenizer's EOS, so the model learns where to stop.
Only response tokens are supervised.

Every step's batch has shape [grad_accum, rows, seq] with `seq` taken from a small set
of bucket lengths, so the jitted step compiles a bounded number of times. The order is
a pure function of (seed, epoch): a `DataPosition` (epoch, step index) is enough to
resume exactly, and every process computes the same plan and takes its own rows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import transformers

from selflengthen_jax.checkpoint.tokenizer import chat_prompt, encode
from selflengthen_jax.paths import path as as_path

SMALLEST_BUCKET = 128
WINDOW_STEPS = 16  # examples are sorted by length within windows of this many steps


class DataError(ValueError):
    """The training data is missing, malformed or yields no usable example."""


class Example(NamedTuple):
    tokens: np.ndarray   # int32 [n]: prompt then response (then EOS unless truncated)
    prompt_len: int


class Batch(NamedTuple):
    """One optimizer step's data, each [grad_accum, rows, seq]; padding has segment 0."""

    tokens: np.ndarray       # int32 inputs
    targets: np.ndarray      # int32 next tokens
    weights: np.ndarray      # float32, 1 where the target is a response token
    positions: np.ndarray    # int32, restarting at 0 for each packed example
    segment_ids: np.ndarray  # int32, 1.. per example within a row, 0 = padding


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the next step's batch comes from: `index` steps into `epoch`."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataPosition":
        return cls(int(d["epoch"]), int(d["index"]))


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a step's rows are split: [accum, global_rows], this process owning a column slice."""

    accum: int
    global_rows: int
    process_index: int = 0
    process_count: int = 1

    @property
    def local_rows(self) -> int:
        return self.global_rows // self.process_count

    @property
    def rows_per_step(self) -> int:
        return self.accum * self.global_rows


# -- records -> examples ------------------------------------------------------------------

def read_records(path: str | Path) -> list[dict[str, Any]]:
    """JSON Lines (one record per line) or a JSON list of records, every record checked
    (`check_record`) so a bad one fails naming its file and line before any weight loads."""
    p = as_path(path)
    if not p.is_file():
        raise DataError(f"training data file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: not a JSON list of records: {e.msg}") from None
        if not isinstance(records, list):
            raise DataError(f"{p}: expected a JSON list of records")
        wheres = [f"{p}: record {k + 1}" for k in range(len(records))]
    else:
        records, wheres = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{number}: invalid JSON ({e.msg})") from None
            wheres.append(f"{p}:{number}")
    if not records:
        raise DataError(f"{p} holds no records")
    for record, where in zip(records, wheres):
        check_record(record, where)
    return records


def check_record(record: Any, where: str) -> None:
    """A training record's shape: a string `response`, and a string `prompt` (with an
    optional boolean `raw`) or a non-empty list of {role, content} `messages`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("response"), str):
        raise DataError(f"{where}: 'response' must be a string, got {record.get('response')!r}")
    if ("prompt" in record) == ("messages" in record):
        raise DataError(f"{where}: give exactly one of 'prompt' or 'messages'")
    if "prompt" in record and not isinstance(record["prompt"], str):
        raise DataError(f"{where}: 'prompt' must be a string, got {record['prompt']!r}")
    if not isinstance(record.get("raw", False), bool):
        raise DataError(f"{where}: 'raw' must be true or false, got {record['raw']!r}")
    if record.get("raw") and "prompt" not in record:
        raise DataError(f"{where}: 'raw' applies to 'prompt' only, not to 'messages'")
    messages = record.get("messages", [{"role": "user", "content": ""}])
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise DataError(f"{where}: 'messages' must be a non-empty list of objects with string "
                        "'role' and 'content'")


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in record:
        return list(record["messages"])
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}]
    raise DataError(f"record has neither 'prompt' nor 'messages': keys {sorted(record)}")


def encode_record(record: dict[str, Any], tok: transformers.PreTrainedTokenizerBase,
                  cutoff_len: int) -> Example | None:
    """Prompt + response + EOS, cut at `cutoff_len` tokens from the end of the response.

    None when the prompt alone leaves no room for a response token (such a record
    would supervise nothing).
    """
    if "response" not in record:
        raise DataError(f"record lacks 'response': keys {sorted(record)}")
    if record.get("raw"):  # raw completion: the prompt string as is, no chat template
        prompt = encode(tok, record["prompt"])
    else:
        prompt = encode(tok, chat_prompt(tok, prompt_messages(record)))
    response = encode(tok, record["response"]) + [tok.eos_token_id]
    if len(prompt) >= cutoff_len:
        return None
    tokens = np.asarray((prompt + response)[:cutoff_len], np.int32)
    return Example(tokens, len(prompt))


def encode_dataset(records: Sequence[dict[str, Any]], tok: transformers.PreTrainedTokenizerBase,
                   cutoff_len: int) -> list[Example]:
    examples = [e for r in records if (e := encode_record(r, tok, cutoff_len)) is not None]
    if not examples:
        raise DataError(f"no record fits cutoff_len={cutoff_len} (every prompt is too long)")
    return examples


# -- shapes --------------------------------------------------------------------------------

def bucket_lengths(max_len: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """Powers of two from `smallest`, then `max_len` rounded up to a multiple of `smallest`."""
    top = -(-max_len // smallest) * smallest
    out, b = [], smallest
    while b < top:
        out.append(b)
        b *= 2
    return tuple(out) + (top,)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    return next(b for b in buckets if b >= n)


def input_len(e: Example) -> int:
    """Positions an example occupies in a row: every token but the last is an input."""
    return len(e.tokens) - 1


# -- ordering ------------------------------------------------------------------------------

def _windows_sorted(lengths: np.ndarray, rng: np.random.Generator, window: int) -> list[int]:
    """A random permutation, sorted by length within consecutive windows."""
    order = rng.permutation(len(lengths))
    return [int(i) for start in range(0, len(order), window)
            for i in sorted(order[start:start + window], key=lambda j: -lengths[j])]


def _pack(order: Sequence[int], lengths: np.ndarray, row_len: int) -> list[list[int]]:
    """First-fit: each example goes into the first open row with room for it."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        slot = next((r for r, f in enumerate(free) if f >= n), None)
        if slot is None:
            rows.append([i])
            free.append(row_len - n)
        else:
            rows[slot].append(i)
            free[slot] -= n
    return rows


def plan_epoch(lengths: np.ndarray, rows_per_step: int, seed: int, epoch: int,
               pack_len: int | None) -> list[list[list[int]]]:
    """Steps -> rows -> example indices; the same on every process for (seed, epoch).

    Rows hold one example, or several when packing into rows of `pack_len`. The last
    step is filled up with empty rows; steps are shuffled so length does not trend.
    """
    rng = np.random.default_rng([seed, epoch])
    order = _windows_sorted(lengths, rng, WINDOW_STEPS * rows_per_step)
    rows = _pack(order, lengths, pack_len) if pack_len else [[i] for i in order]
    rows += [[]] * (-len(rows) % rows_per_step)
    steps = [rows[s:s + rows_per_step] for s in range(0, len(rows), rows_per_step)]
    return [steps[i] for i in rng.permutation(len(steps))]


# -- batches -------------------------------------------------------------------------------

def _fill_row(batch: Batch, at: tuple[int, int], examples: Sequence[Example]) -> None:
    col = 0
    for seg, e in enumerate(examples, start=1):
        n = input_len(e)
        span = (*at, slice(col, col + n))
        batch.tokens[span] = e.tokens[:-1]
        batch.targets[span] = e.tokens[1:]
        batch.weights[span] = np.arange(1, n + 1) >= e.prompt_len
        batch.positions[span] = np.arange(n)
        batch.segment_ids[span] = seg
        col += n


def make_batch(examples: Sequence[Example], step_rows: Sequence[Sequence[int]], seq_len: int,
               layout: Layout) -> Batch:
    """This process's [accum, local_rows, seq_len] slice of one step's rows."""
    shape = (layout.accum, layout.local_rows, seq_len)
    batch = Batch(np.zeros(shape, np.int32), np.zeros(shape, np.int32),
                  np.zeros(shape, np.float32), np.zeros(shape, np.int32), np.zeros(shape, np.int32))
    first = layout.process_index * layout.local_rows
    for m in range(layout.accum):
        for r in range(layout.local_rows):
            row = step_rows[m * layout.global_rows + first + r]
            _fill_row(batch, (m, r), [examples[i] for i in row])
    return batch


class SFTData:
    """Deterministic, resumable stream of step batches over encoded examples."""

    def __init__(self, examples: Sequence[Example], layout: Layout, seed: int,
                 cutoff_len: int, packing: bool):
        if layout.global_rows % layout.process_count:
            raise DataError(f"{layout.global_rows} rows per step do not split over "
                            f"{layout.process_count} processes")
        self.examples = list(examples)
        self.layout, self.seed = layout, seed
        self.buckets = bucket_lengths(cutoff_len)
        self.pack_len = self.buckets[-1] if packing else None
        self.lengths = np.asarray([input_len(e) for e in self.examples])
        self._plans: dict[int, list[list[list[int]]]] = {}

    def plan(self, epoch: int) -> list[list[list[int]]]:
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.lengths, self.layout.rows_per_step, self.seed,
                                             epoch, self.pack_len)}
        return self._plans[epoch]

    def num_steps(self, epochs: int) -> int:
        """Steps in the first `epochs` epochs (packing may vary it slightly per epoch)."""
        return sum(len(self.plan(e)) for e in range(epochs))

    def seq_len(self, step_rows: Sequence[Sequence[int]]) -> int:
        if self.pack_len:
            return self.pack_len
        longest = max((self.lengths[i] for row in step_rows for i in row), default=1)
        return bucket_for(int(longest), self.buckets)

    def batch(self, pos: DataPosition) -> Batch:
        step_rows = self.plan(pos.epoch)[pos.index]
        return make_batch(self.examples, step_rows, self.seq_len(step_rows), self.layout)

    def next(self, pos: DataPosition) -> DataPosition:
        if pos.index + 1 < len(self.plan(pos.epoch)):
            return DataPosition(pos.epoch, pos.index + 1)
        return DataPosition(pos.epoch + 1, 0)

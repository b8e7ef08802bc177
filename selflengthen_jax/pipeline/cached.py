"""Generation through a store: every completion is kept, so a rerun recomputes nothing.

Phases are written as deterministic functions of completions: each request has a
stable id and a seed derived from it, and the engine's output for a request does not
depend on its batch. So after a crash, replaying a phase returns the stored
completions at once and generates only the missing ones, and the run ends with the
same records as one never interrupted.

With several processes, each one running its own engine replica (`split`), a request
belongs to one process, chosen from its id alone (`owner`); each process generates
only its own requests into its own shard, `<name>.p<i>.jsonl`, then all meet at a
barrier and read each other's shards, so every process continues with every
completion. A restart (with any subset of processes killed, or a different process
count) reads every shard it finds, so nothing done is generated twice. Likelihood
scores (the likelihood judge) are split the same way, by the prompt's text, and merged
by one gather, since nothing of them is stored. Without `split` (one global engine,
every process sees the same completions) process 0 alone writes `<name>.jsonl`, the
one-process layout.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

from selflengthen_jax import faults
from selflengthen_jax.parallel import hosts
from selflengthen_jax.paths import AnyPath
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline.store import PARTS, JsonlStore
from selflengthen_jax.sampling.request import Completion, Request


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from the run seed and a record's identity (not Python's hash)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def owner(request_id: str, processes: int) -> int:
    """The process that generates `request_id` (the same answer on every process)."""
    return derive_seed("owner", request_id) % processes


def shard_path(path: AnyPath, process: int) -> AnyPath:
    """Process `process`'s shard of the cache at `path` (`x.jsonl` -> `x.p<process>.jsonl`)."""
    return path.parent / f"{path.name.removesuffix('.jsonl')}.p{process}.jsonl"


def shards(path: AnyPath) -> list[AnyPath]:
    """Every store of the cache at `path` that exists: the unsplit file and each shard."""
    if not path.parent.is_dir():
        return []
    stem = re.escape(path.name.removesuffix(".jsonl"))
    pattern = re.compile(rf"{stem}(\.p\d+)?\.jsonl({re.escape(PARTS)})?")
    names = {m.group(0).removesuffix(PARTS) for e in path.parent.iterdir()
             if (m := pattern.fullmatch(e.name))}
    return [path.parent / n for n in sorted(names)]


class CachedGenerator:
    """An engine front that appends each finished completion to a JSONL store."""

    def __init__(self, engine, path: str | AnyPath, progress: bool = True, split: bool = False):
        self.engine = engine
        self.path = as_path(path)
        self.progress = progress
        self.generated_tokens = 0
        self.generated_requests = 0
        self.prompt_too_long = 0  # requests answered prompt_too_long (fresh or from the store)
        self.index, self.count = hosts.index(), hosts.count()
        self.split = split and self.count > 1
        own = shard_path(self.path, self.index) if self.split else self.path
        # the store repairs a torn tail of its own file on open: only its writer opens it
        self.store = JsonlStore(own) if self.split or self.index == 0 else None
        self._own = own if self.store is not None else None
        self._calls = 0
        hosts.barrier(f"cache open {self.path}")
        self.others: dict[str, dict] = {}
        self._read_others()

    def _read_others(self) -> None:
        for shard in shards(self.path):
            if shard != self._own:
                self.others.update({r["id"]: r for r in JsonlStore(shard).records()})

    def _known(self) -> dict[str, dict]:
        mine = {r["id"]: r for r in self.store.records()} if self.store else {}
        return {**self.others, **mine}

    def _load(self, record: dict) -> Completion:
        return Completion(record["id"], record["text"], tuple(record["token_ids"]),
                          record["prompt_tokens"], record["finish_reason"])

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        cached = self._known()
        todo = [r for r in requests if r.id not in cached]
        if self.split:
            todo = [r for r in todo if owner(r.id, self.count) == self.index]

        def keep(_: int, c: Completion) -> None:
            self.generated_tokens += len(c.token_ids)
            self.generated_requests += 1
            record = {"id": c.id, "text": c.text, "token_ids": list(c.token_ids),
                      "prompt_tokens": c.prompt_tokens, "finish_reason": c.finish_reason}
            if self.store is not None:
                self.store.append(record)
            else:  # a process that does not write remembers, so all stay in step
                self.others[c.id] = record
            faults.checkpoint("completion")
        try:
            fresh = {c.id: c for c in self.engine.generate(todo, progress=self.progress,
                                                           on_complete=keep)}
        finally:
            if self.store is not None:
                self.store.flush()  # whatever finished is kept, even when stopped
        self._calls += 1
        hosts.barrier(f"cache {self.path} call {self._calls}")
        if self.split:
            self._read_others()
            cached = self._known()
        missing = [r.id for r in requests if r.id not in fresh and r.id not in cached]
        if missing:
            raise RuntimeError(f"{self.path}: no completion for {missing[:3]} in any shard")
        out = [fresh[r.id] if r.id in fresh else self._load(cached[r.id]) for r in requests]
        self.prompt_too_long += sum(c.finish_reason == "prompt_too_long" for c in out)
        return out

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], adapter: str = "base") -> list[float]:
        """Scores of (head, continuation) pairs. With `split`, each process scores the
        pairs whose head it owns (a head's continuations share one forward, so they
        stay together) and the scores are merged once, by one gather: every process
        returns every score, each computed by exactly one process."""
        if not self.split:
            return self.engine.loglikelihood(pairs, adapter)
        owners = np.array([owner(head, self.count) for head, _ in pairs])
        mine = np.flatnonzero(owners == self.index)
        scores = np.zeros(len(pairs))
        if len(mine):
            scores[mine] = self.engine.loglikelihood([pairs[i] for i in mine], adapter)
        merged = hosts.gather_floats(scores)
        return [float(merged[o, i]) for i, o in enumerate(owners)]

"""Generation through a store: every completion is kept, so a rerun recomputes nothing.

Phases are written as deterministic functions of completions: each request has a
stable id and a seed derived from it, and the engine's output for a request does not
depend on its batch. So after a crash, replaying a phase returns the stored
completions at once and generates only the missing ones, and the run ends with the
same records as one never interrupted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from selflengthen_jax import faults
from selflengthen_jax.pipeline.store import JsonlStore
from selflengthen_jax.sampling.request import Completion, Request


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from the run seed and a record's identity (not Python's hash)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class CachedGenerator:
    """An engine front that appends each finished completion to a JSONL store."""

    def __init__(self, engine, path: str | Path, progress: bool = True):
        self.engine = engine
        self.store = JsonlStore(path)
        self.progress = progress
        self.generated_tokens = 0
        self.prompt_too_long = 0  # requests answered prompt_too_long (fresh or from the store)

    def _load(self, record: dict) -> Completion:
        return Completion(record["id"], record["text"], tuple(record["token_ids"]),
                          record["prompt_tokens"], record["finish_reason"])

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        cached = {r["id"]: r for r in self.store.records()}
        todo = [r for r in requests if r.id not in cached]

        def keep(_: int, c: Completion) -> None:
            self.generated_tokens += len(c.token_ids)
            self.store.append({"id": c.id, "text": c.text, "token_ids": list(c.token_ids),
                               "prompt_tokens": c.prompt_tokens, "finish_reason": c.finish_reason})
            faults.checkpoint("completion")
        fresh = {c.id: c for c in self.engine.generate(todo, progress=self.progress, on_complete=keep)}
        out = [fresh[r.id] if r.id in fresh else self._load(cached[r.id]) for r in requests]
        self.prompt_too_long += sum(c.finish_reason == "prompt_too_long" for c in out)
        return out

    def loglikelihood(self, pairs, adapter: str = "base") -> list[float]:
        return self.engine.loglikelihood(pairs, adapter)

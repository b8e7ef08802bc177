"""Helpers for launch-script tests: one tiny chat checkpoint per session, and running a
script's main() in-process (much faster than `python -m`) with its exit code and output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from chat_fixtures import make_chat_checkpoint

# Small engine: prompts up to 256 tokens, short answers, a few slots.
ENGINE = ["engine.slots=4", "engine.max_prefill_len=256", "engine.max_new_tokens=16",
          "engine.decode_chunk=8"]


def shared_chat_checkpoint(tmp_path_factory) -> Path:
    """The session's tiny chat checkpoint, built once (under a temp name, then renamed)."""
    path = tmp_path_factory.getbasetemp() / "shared-chat-checkpoint"
    if not path.is_dir():
        building = tmp_path_factory.mktemp("building-checkpoint")
        make_chat_checkpoint(building / "ckpt").rename(path)
    return path


def run_main(main: Callable[[Sequence[str]], None], argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of main(argv), as `python -m` would give them."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, records: Sequence[dict | str]) -> Path:
    """Records as JSON lines; a str is written verbatim (to plant a malformed line)."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

"""Fault injection for the kill-and-resume tests: die with SIGKILL at the n-th event.

`SELFLENGTHEN_KILL_AT=completion:7` kills the process right after the 7th stored
completion (likewise `train_step`, `orbax_save`, `phase_written`). Unset (always, outside tests),
`checkpoint()` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ENV = "SELFLENGTHEN_KILL_AT"
_counts: dict[str, int] = {}


def checkpoint(event: str) -> None:
    """Count `event`; SIGKILL this process if it is the configured kill point."""
    spec = os.environ.get(_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

"""A clean stop on SIGTERM: the pod scheduler's preemption notice.

The handler raises `Preempted` in the main thread. Records are appended one line at a
time and fsynced, Orbax saves are awaited in the trainer's `finally`, and markers are
atomic, so the stop loses at most the requests in flight; the launcher then exits
non-zero with a message, and rerunning the same command resumes.
"""

from __future__ import annotations

import signal
from types import FrameType


class Preempted(RuntimeError):
    """SIGTERM arrived; the run stopped cleanly and can be resumed."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Preempted(f"stopped by signal {signal.Signals(signum).name}")


def install() -> None:
    signal.signal(signal.SIGTERM, _raise)

"""A clean stop on SIGTERM (the pod scheduler's preemption notice) or Ctrl-C (SIGINT).

While `stoppable()` is active, either signal raises `Preempted` in the main thread.
Records are appended one line at a time and fsynced, Orbax saves are awaited in the
trainer's `finally`, and markers are atomic, so the stop loses at most the requests in
flight; the launcher then prints one line and exits 128 + the signal number (143 for
SIGTERM, 130 for Ctrl-C), and rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(BaseException):
    """SIGTERM or SIGINT arrived; the run stopped cleanly and can be resumed.

    A BaseException, as KeyboardInterrupt is: the handler raises it wherever the main
    thread happens to be, and libraries guard optional work with `except Exception`
    (jax's persistent compilation cache turns any error while reading or writing an
    entry into a warning), which would swallow the stop and let the run go on."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Preempted(signum)


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Preempted` inside; the previous handlers return after."""
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

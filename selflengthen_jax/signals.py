"""A clean stop on SIGTERM (the pod scheduler's preemption notice) or Ctrl-C (SIGINT).

While `stoppable()` is active, either signal raises `Preempted` in the main thread.
Records are appended one line at a time and fsynced, Orbax saves are awaited in the
trainer's `finally`, and markers are atomic, so the stop loses at most the requests in
flight; the launcher then prints one line and exits 128 + the signal number (143 for
SIGTERM, 130 for Ctrl-C), and rerunning the same command resumes.

The raise can land where the interpreter swallows exceptions: in a garbage-collector
callback (jaxlib registers one), a `__del__` or a weakref callback, which only print it.
So the signal is also kept as pending until `stoppable()` ends, and `check()`, called
at regular points (each decode chunk, each training step, each barrier), raises it
again there.

Inside `deferred()` the handler only records the signal: code that must stop at a point
all processes agree on (the trainer on several processes, which saves one step
everywhere) asks `take()` at that point and raises `Preempted` itself.
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


_deferring = False
_pending = 0  # the first signal received and not yet acted on (0: none)


def _raise(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = _pending or signum
    if not _deferring:
        raise Preempted(_pending)


def check() -> None:
    """Raise the pending stop again, in case its first raise was swallowed (see above);
    free when no signal came, and silent inside `deferred()`."""
    if _pending and not _deferring:
        raise Preempted(_pending)


def take() -> int:
    """The pending signal, now acted on (cleared), else 0."""
    global _pending
    signum, _pending = _pending, 0
    return signum


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside, SIGTERM and SIGINT are recorded for `take()` instead of raised. A signal
    still untaken when the block ends normally is raised then, so no stop is lost."""
    global _deferring
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer
    if not outer and (signum := take()):
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
        take()  # the stop has left the block: nothing stale for a later one

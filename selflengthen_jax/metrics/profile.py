"""`--profile N`: a jax.profiler trace of N decode chunks and N train steps.

The engine calls `tick("decode")` after each decode chunk (once its tokens are on the
host) and the trainer `tick("train")` after each step. For each kind, the trace starts
at its first tick, so the first call's compilation stays out of it, and stops N ticks
later. jax.profiler runs one trace at a time: a kind whose ticks come while the other
is being traced starts at its first tick after that. Traces land in
`<log_dir>/plugins/profile/<time>/`, where TensorBoard's profile plugin (XProf) finds
them. Unarmed (always, unless a launcher passes --profile), `tick` is one lookup.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

_state: dict = {"dir": None, "n": 0, "active": None, "count": 0, "done": set(), "stopped": 0.0}


def arm(log_dir: str | Path, n: int) -> None:
    """Trace the next `n` decode chunks and `n` train steps into `log_dir`."""
    if n < 1:
        raise ValueError(f"--profile {n}: give the number of decode chunks and train steps to trace (>= 1)")
    _state.update(dir=str(log_dir), n=n, active=None, count=0, done=set())


def disarm() -> None:
    """Stop a trace still open (its file is written) and forget the settings."""
    if _state["active"] is not None:
        jax.profiler.stop_trace()
    _state.update(dir=None, active=None, count=0, done=set())


def tick(kind: str) -> None:
    """One decode chunk or train step has finished (its results are on the host)."""
    if _state["dir"] is None or kind in _state["done"]:
        return
    if _state["active"] is None:
        Path(_state["dir"]).mkdir(parents=True, exist_ok=True)
        # jax names a trace's directory by the second it starts: never reuse the last one's
        time.sleep(max(0.0, _state["stopped"] + 1.0 - time.time()))
        jax.profiler.start_trace(_state["dir"])
        _state.update(active=kind, count=0)
    elif _state["active"] == kind:
        _state["count"] += 1
        if _state["count"] >= _state["n"]:
            jax.profiler.stop_trace()
            _state["done"].add(kind)
            _state.update(active=None, stopped=time.time())


def traced() -> set[str]:
    """The kinds whose trace is complete."""
    return set(_state["done"])

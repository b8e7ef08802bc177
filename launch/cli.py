"""What every launch script shares: `--config FILE` plus `key=value` overrides, one
way to report bad input (a single `error: ...` line on stderr, exit code 2), and one
way to stop (Ctrl-C or SIGTERM: one line, progress kept, exit 130 or 143).

Input problems (config keys, JSONL lines, missing files, checkpoint layout, output
paths) all surface as ValueError or OSError from the library; scripts run their
checking phase inside `user_errors()` so the user sees the message, not a traceback,
before any compute, and their compute phase inside `resumable()`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from typing import Iterator, NoReturn, Sequence

from selflengthen_jax.checkpoint.hub import resolve_model
from selflengthen_jax.config import Config, load_config
from selflengthen_jax.pipeline import signals


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """An argument parser for `python -m <module>` that already takes --config and
    trailing key=value overrides."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--config", help="YAML run config (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. sampling.temperature=0.9")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags and overrides may come in any order."""
    return p.parse_intermixed_args(argv)


def config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    """The run config: file, then command-line overrides, then `extra` (from flags); a hub id
    in model.path becomes its local snapshot directory (see checkpoint/hub.py)."""
    cfg = load_config(args.config, [*args.overrides, *extra])
    path = resolve_model(cfg.model.path)
    return cfg if path == cfg.model.path else dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=path))


def init_distributed(flag: bool) -> None:
    """Join a multi-host run: on a TPU pod/GPU cluster with `--distributed` (JAX detects the
    coordinator), or when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are
    set (e.g. several processes on one machine). Call before any other JAX use."""
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        import jax
        if env.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                                   int(env["JAX_PROCESS_ID"]))
    elif flag:
        import jax
        jax.distributed.initialize()


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _one_line(error: BaseException) -> str:
    """The message on one line (the launcher's promise), or the error's type if empty."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) \
        or type(error).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into `fail` (stderr line, exit code 2); a device
    that runs out of memory while loading says so in one line, and Ctrl-C during
    start-up stops with exit 130 (nothing has been written yet)."""
    try:
        yield
    except (ValueError, OSError) as error:
        fail(_one_line(error))
    except KeyboardInterrupt:
        print("error: interrupted during start-up; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    except RuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        first = str(error).strip().splitlines()[0]
        fail(f"out of device memory: {first} (lower engine.slots, engine.max_new_tokens or "
             "train.batch_size, or use more devices)")


@contextlib.contextmanager
def resumable(where: str | object, saved: bool = True) -> Iterator[None]:
    """The compute phase: SIGTERM or Ctrl-C stops it with one line and the exit code
    128 + signal (143, 130). With `saved`, progress kept in `where` lets a rerun
    resume; without, `where` is written whole at the end, so it is untouched."""
    try:
        with signals.stoppable():
            yield
    except signals.Preempted as stop:
        hint = (f"progress is saved in {where}; rerun the same command to resume" if saved
                else f"{where} was not written (it is written whole at the end); rerun the same command")
        print(f"{stop}: {hint}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None

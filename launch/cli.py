"""What every launch script shares: `--config FILE` plus `key=value` overrides, and one
way to report bad input (a single `error: ...` line on stderr, exit code 2).

Input problems (config keys, JSONL lines, missing files, checkpoint layout) all surface
as ValueError or OSError from the library; scripts run their checking phase inside
`user_errors()` so the user sees the message, not a traceback, before any compute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator, NoReturn, Sequence

from selflengthen_jax.config import Config, load_config


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
    """The run config: file, then command-line overrides, then `extra` (from flags)."""
    return load_config(args.config, [*args.overrides, *extra])


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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into `fail` (stderr line, exit code 2)."""
    try:
        yield
    except (ValueError, OSError) as error:
        fail(str(error))

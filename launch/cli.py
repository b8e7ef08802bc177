"""What every launch script shares: `--config FILE` plus `key=value` overrides, and one
way to report bad input (a single `error: ...` line on stderr, exit code 2).

Input problems (config keys, JSONL lines, missing files, checkpoint layout) all surface
as ValueError or OSError from the library; scripts run their checking phase inside
`user_errors()` so the user sees the message, not a traceback, before any compute.
"""

from __future__ import annotations

import argparse
import contextlib
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

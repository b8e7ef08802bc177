"""What every launch script shares: `--config FILE` plus `key=value` overrides (and
`--print-config`) for the run config, or for a command that runs no pipeline (a
benchmark's workload, the demo build's recipe) for its own typed keys; one naming
scheme for a script's own inputs and outputs (`--model` checkpoint in, `--input` data
in, `--adapter` adapter directory, `--output` what it writes; older spellings still
work with a one-line hint); one way to report bad input
(a single `error: ...` line on stderr, exit code 2); and one way to stop (Ctrl-C or
SIGTERM: one line, progress kept, exit 130 or 143).

Input problems (config keys, JSONL lines, missing files, checkpoint layout, output
paths) all surface as ValueError or OSError from the library; scripts run their
checking phase inside `user_errors()` so the user sees the message, not a traceback,
before any compute, and their compute phase inside `resumable()`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Callable, Iterator, Mapping, NoReturn, Sequence

import yaml

from selflengthen_jax.checkpoint.hub import resolve_model
from selflengthen_jax.config import Config, ConfigError, load_config, load_section
from selflengthen_jax.metrics import profile
from selflengthen_jax.parallel.rules import check_rules
from selflengthen_jax import signals


def parser(module: str, doc: str, keys: object | None = None) -> argparse.ArgumentParser:
    """An argument parser for `python -m <module>` whose help is the script's whole
    docstring (usage line included), taking --config, --print-config and trailing
    key=value overrides.

    Without `keys` the config is the run config (`selflengthen_jax.config.Config`). A
    command whose work is not a run (a benchmark's fixed workload, the demo build) passes
    its own config section's defaults as `keys`: then --config and the overrides are
    that section's keys, each listed with its default at the end of --help.
    """
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                epilog=None if keys is None else key_list(keys),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = "YAML run config (a path, or a name in configs/)" if keys is None else \
        "YAML file of this command's config keys (listed below)"
    p.add_argument("--config", help=what)
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config (file + overrides) as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. sampling.temperature=0.9" if keys is None else
                        "config overrides, e.g. " + key_list(keys).splitlines()[1].strip())
    return p


def key_list(section: object) -> str:
    """--help's listing of a config section's keys (dotted), each with its default."""
    lines = [f"  {key}={json.dumps(value) if isinstance(value, str) else _flow(value)}"
             for key, value in _dotted(dataclasses.asdict(section))]
    return "config keys (key=value, or in the --config YAML), with their defaults:\n" + "\n".join(lines)


def _dotted(tree: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out += _dotted(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _flow(value: object) -> str:
    """A value as one line of YAML, as it would be typed in an override."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...").strip()


def renamed(argv: Sequence[str], old_flags: Mapping[str, str],
            old_keys: Mapping[str, str] | None = None) -> list[str]:
    """argv with deprecated spellings rewritten to the current flags, one stderr hint each.

    `old_flags` maps e.g. "--out" -> "--output" (also `--out=X`); `old_keys` maps a
    script-owned `key=` argument, e.g. "out" -> "--output", so `out=DIR` becomes
    `--output DIR`.
    """
    out: list[str] = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in old_flags:
            _hint(flag, old_flags[flag])
            out += [f"{old_flags[flag]}={value}"] if eq else [old_flags[flag]]
        elif eq and old_keys and flag in old_keys:
            _hint(f"{flag}=", old_keys[flag])
            out += [old_keys[flag], value]
        else:
            out.append(arg)
    return out


def _hint(old: str, new: str) -> None:
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, old_flags: Mapping[str, str] | None = None,
          old_keys: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Flags and overrides may come in any order; deprecated spellings are rewritten."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    return p.parse_intermixed_args(renamed(argv, old_flags or {}, old_keys))


def config(args: argparse.Namespace, extra: Sequence[str] = (),
           complete: Callable[[Config], Config] | None = None, also: Sequence[Mapping] = ()) -> Config:
    """The run config: file, then command-line overrides, then `extra` (from flags),
    then `complete` (e.g. the demo model filled in where none is named). A hub id in
    model.path becomes its local snapshot directory (see checkpoint/hub.py).

    The mesh rules are checked here (they name axes of the model and mesh, which the
    config floor does not know). With --print-config the result is printed as YAML
    (followed by the documents in `also`, e.g. a benchmark's own section) and the
    script exits 0 before doing anything else.
    """
    cfg = load_config(args.config, [*args.overrides, *extra])
    check_rules(cfg.mesh.rules)
    path = resolve_model(cfg.model.path)  # a hub id: its snapshot in the local HF cache
    if path != cfg.model.path:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=path))
    cfg = complete(cfg) if complete else cfg
    if getattr(args, "print_config", False):
        print_config(cfg.to_dict(), *also)
    return cfg


def own_config(args: argparse.Namespace, cls: type, base: object | None = None,
               extra: Sequence[str] = (), check: Callable[[object], object] | None = None) -> object:
    """A command's own config section (see `parser(keys=...)`): `base` (default
    `cls()`), then --config FILE, then the key=value overrides, then `extra` (from
    flags), then `check` (its value checks, raising ConfigError). With --print-config
    it is printed as YAML and the script exits 0."""
    try:
        section = load_section(cls, args.config, [*args.overrides, *extra], base=base)
    except ConfigError as error:
        if not str(error).startswith("unknown config key"):
            raise
        raise ConfigError(f"{error} (this command's --config and key=value set its own keys, "
                          "listed in --help; it reads no run config)") from None
    if check is not None:
        check(section)
    if getattr(args, "print_config", False):
        print_config(dataclasses.asdict(section))
    return section


def print_config(*documents: Mapping) -> NoReturn:
    """The effective config as YAML (several documents, `---` between them, when a
    command reads several files), then exit 0 before any work."""
    texts = [yaml.safe_dump(doc, sort_keys=False, allow_unicode=True) for doc in documents]
    print("---\n".join(texts), end="")
    raise SystemExit(0)


def flag_overrides(pairs: Mapping[str, object]) -> list[str]:
    """`key=value` overrides for the flags that were given (a flag wins over --config)."""
    return [f"{key}={json.dumps(str(value))}" for key, value in pairs.items() if value is not None]


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (anything else is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", type=positive_int, metavar="N",
                   help="capture a jax.profiler trace of N decode chunks and N train steps into the "
                        "run's tensorboard/ directory (open it with TensorBoard's profile plugin)")


@contextlib.contextmanager
def profiling(args: argparse.Namespace, log_dir: str | os.PathLike) -> Iterator[None]:
    """Arm the profiler for the compute phase when --profile N was given."""
    if not getattr(args, "profile", None):
        yield
        return
    profile.arm(log_dir, args.profile)
    try:
        yield
    finally:
        profile.disarm()


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
        stop_now(130)
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
        stop_now(stop.exit_code)


class Stopped(SystemExit):
    """The exit of a stop (Ctrl-C, SIGTERM) after its one line: see `program`."""


def stop_now(code: int) -> NoReturn:
    raise Stopped(code) from None


def program(main: Callable[[], int | None]) -> NoReturn:
    """`sys.exit(main())` for a launcher run as `python -m`, except after a stop.

    jaxlib checks for signals while it waits for an XLA compile running on its thread
    pool, so a stop can leave that compile running; a normal exit then destroys the
    PjRt client (its devices, then its thread pool) under the compile, which dies with
    SIGSEGV instead of the exit code. Everything kept is durable by the time a stop gets
    here (stores flushed, Orbax saves awaited, boards closed in the `finally` blocks it
    went through), so after flushing the console the process ends at once, without
    tearing the runtime down."""
    try:
        code = main()
    except Stopped as stop:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(stop.code)
    sys.exit(code)

"""The sharding benchmark's results as a ranked markdown table, CSV, JSON and a chart.

Rows are ranked within each comparable group (the same batch and context for
generation, the same training mode), so the first row of a group is the strategy to
pick for that workload. Numbers are medians with [min-max] of the timed runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from selflengthen_jax.bench.sharding import BenchResult, Measurement, Stat

MiB = 2 ** 20
FILES = ("bench_sharding.md", "bench_sharding.csv", "bench_sharding.json", "bench_sharding.png")


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _stat(s: Stat, scale: float = 1.0) -> str:
    return f"{_num(s.median * scale)} [{_num(s.lo * scale)}-{_num(s.hi * scale)}]"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / MiB:,.1f}"


def _xla(m: Measurement) -> str:
    return "-" if m.xla_memory is None else _mib(m.xla_memory["total"])


def _ranked(rows: list[Measurement], key: Any) -> list[tuple[int, Measurement]]:
    """(rank within group, row), groups in first-seen order, fastest first."""
    groups: dict[Any, list[Measurement]] = {}
    for m in rows:
        groups.setdefault(key(m), []).append(m)
    out = []
    for members in groups.values():
        members.sort(key=lambda m: -m.tokens_per_s.median)
        out += list(enumerate(members, 1))
    return out


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: BenchResult) -> str:
    env = result.environment
    model = env["model"]
    params = env["params"]
    size = f"{params / 1e9:.3g}B" if params >= 1e9 else f"{params / 1e6:.3g}M"
    head = (f"## Sharding benchmark: {model['model_type']} {size} params "
            f"({env['weights']} weights, {model['param_dtype']} / {model['compute_dtype']}) on "
            f"{env['devices']} x {env['device_kind']} ({env['processes']} process(es), "
            f"jax {env['jax']})\n\nUtilisation peaks: {env['peak_source'] or 'unknown device'}. "
            "Times are medians [min-max] of the timed runs; memory is per device.\n")
    options = result.settings.get("bench", {}).get("compile_options")
    if options:
        head += f"\nXLA compile options {options}: timings are not production's.\n"
    parts = [head]
    by = {(m.strategy, m.batch, m.seq): m for m in result.measurements if m.workload == "prefill"}
    decode = [m for m in result.measurements if m.workload == "decode"]
    if decode:
        rows = []
        for rank, d in _ranked(decode, lambda m: (m.batch, m.seq)):
            p = by[(d.strategy, d.batch, d.seq)]
            rows.append([str(rank), d.strategy, d.mesh, str(d.batch), str(d.seq),
                         _stat(p.seconds, 1e3), _stat(p.tokens_per_s), _stat(d.tokens_per_s),
                         _pct(p.mfu), _pct(d.bandwidth_util), f"{p.compile_s + d.compile_s:.1f}",
                         f"{_xla(p)} / {_xla(d)}", _mib(d.planned_bytes), _mib(d.live_peak), d.check])
        parts.append("### Generation (ranked by decode tokens/s per batch and context)\n\n" + _table(
            ["rank", "strategy", "mesh d x f x t", "batch", "context", "TTFT ms", "prefill tok/s",
             "decode tok/s", "prefill MFU", "decode BW util", "compile s",
             "XLA MiB prefill / decode", "planned MiB", "live peak MiB", "tokens"], rows))
    train = [m for m in result.measurements if m.workload.startswith("train")]
    if train:
        rows = [[str(rank), m.strategy, m.mesh, m.workload.removeprefix("train-"),
                 f"{m.batch} x {m.seq}", _stat(m.seconds, 1e3), _stat(m.tokens_per_s), _pct(m.mfu),
                 f"{m.compile_s:.1f}", _xla(m), _mib(m.planned_bytes), _mib(m.live_peak),
                 f"{m.loss:.6f}", m.check]
                for rank, m in _ranked(train, lambda m: m.workload)]
        parts.append("### Training (ranked by tokens/s per mode)\n\n" + _table(
            ["rank", "strategy", "mesh d x f x t", "mode", "rows x seq", "step ms", "tokens/s",
             "MFU", "compile s", "XLA MiB", "planned MiB", "live peak MiB", "first loss",
             "check"], rows))
    parts.append(numerics(result))
    return "\n\n".join(parts) + "\n"


def numerics(result: BenchResult) -> str:
    """The agreement verdict; failures first and impossible to miss."""
    if not result.failures and not result.warnings:
        return ("### Numerics\n\nAll strategies agree with the first: identical greedy tokens "
                "and matching first training loss.")
    lines = ["### Numerics"]
    if result.failures:
        lines.append("**NUMERICS MISMATCH (float32: the strategies must agree):**")
        lines += [f"- {f}" for f in result.failures]
    if result.warnings:
        lines.append("bfloat16 differences (a different reduction order can flip near-ties):")
        lines += [f"- {w}" for w in result.warnings]
    return "\n\n".join(lines[:1] + ["\n".join(lines[1:])])


def _flat(m: Measurement) -> dict[str, Any]:
    row: dict[str, Any] = {k: getattr(m, k) for k in ("strategy", "mesh", "workload", "batch", "seq")}
    for name in ("seconds", "tokens_per_s"):
        for field, value in dataclasses.asdict(getattr(m, name)).items():
            row[f"{name}_{field}"] = value
    row.update(compile_s=m.compile_s, mfu=m.mfu, bandwidth_util=m.bandwidth_util)
    for k in ("argument", "output", "temp", "alias", "total"):
        row[f"xla_{k}_bytes"] = None if m.xla_memory is None else m.xla_memory[k]
    row.update(live_peak_bytes=m.live_peak, planned_bytes=m.planned_bytes, check=m.check, loss=m.loss)
    return row


def chart(result: BenchResult, path: Path) -> None:
    """Bars per strategy, grouped by shape, with min-max whiskers, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("prefill", "prefill tokens/s"), ("decode", "decode tokens/s"),
              ("train", "training tokens/s")]
    panels = [(w, t) for w, t in panels if any(m.workload.startswith(w) for m in result.measurements)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    strategies = list(dict.fromkeys(m.strategy for m in result.measurements))
    width = 0.8 / max(len(strategies), 1)
    for ax, (workload, title) in zip(axes[0], panels):
        rows = [m for m in result.measurements if m.workload.startswith(workload)]
        label = (lambda m: m.workload.removeprefix("train-")) if workload == "train" else \
            (lambda m: f"b{m.batch} ctx{m.seq}")
        groups = list(dict.fromkeys(label(m) for m in rows))
        for i, s in enumerate(strategies):
            mine = {label(m): m for m in rows if m.strategy == s}
            xs = [g + i * width for g, name in enumerate(groups) if name in mine]
            ms = [mine[name] for name in groups if name in mine]
            med = [m.tokens_per_s.median for m in ms]
            err = [[m.tokens_per_s.median - m.tokens_per_s.lo for m in ms],
                   [m.tokens_per_s.hi - m.tokens_per_s.median for m in ms]]
            ax.bar(xs, med, width, yerr=err, capsize=2, label=s)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=30)
        ax.set_title(title)
        ax.set_ylabel("tokens/s (median, min-max)")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: BenchResult, out_dir: str | Path) -> list[Path]:
    """The markdown table, CSV (one row per measurement), JSON (everything) and the PNG."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, json_path, png = (out / f for f in FILES)
    md.write_text(markdown(result), encoding="utf-8")
    rows = [_flat(m) for m in result.measurements]
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["strategy"])
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(
        {"environment": result.environment, "settings": result.settings,
         "measurements": [dataclasses.asdict(m) for m in result.measurements],
         "failures": result.failures, "warnings": result.warnings}, indent=2), encoding="utf-8")
    chart(result, png)
    return [md, csv_path, json_path, png]

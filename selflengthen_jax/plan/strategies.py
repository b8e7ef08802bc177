"""Sharding strategies ranked for a TPU slice without the hardware.

Each strategy's layout (the built-in four via `builtin_layout`, or the run config's own
mesh) is rehearsed: the same executables are compiled for the slice, and ranked by
per-chip memory, collective bytes per step and an estimated step time. The estimate is
a lower bound from the peaks table: the larger of FLOPs / peak FLOP/s and bytes / HBM
bandwidth, plus collective bytes / ICI bandwidth (no overlap of communication assumed
away, no latency counted).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from selflengthen_jax.config import Config
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.parallel.mesh import mesh_shape
from selflengthen_jax.parallel.rules import STRATEGIES
from selflengthen_jax.plan.planner import builtin_layout
from selflengthen_jax.plan.rehearsal import Row, rehearse
from selflengthen_jax.plan.slices import Slice

DEFAULT_ONLY = ("decode chunk", "train step")


@dataclasses.dataclass
class Ranked:
    strategy: str
    row: Row
    estimate_s: float          # lower bound per call (per step for the decode chunk)


def estimate_seconds(row: Row, s: Slice) -> float:
    """max(FLOPs / peak, bytes / HBM bandwidth) + collective bytes / ICI bandwidth, per
    call (per step for the decode chunk, whose collectives are already per step)."""
    spec = s.spec
    compute = max(row.flops / row.steps / spec.flops, row.bytes_accessed / row.steps / spec.bandwidth)
    comm = sum(row.collective_bytes.values()) / spec.ici_bandwidth if spec.ici_bandwidth else 0.0
    return compute + comm


def layouts(cfg: Config, mcfg: ModelConfig, num_devices: int, names: Sequence[str]) -> list[tuple[str, Config]]:
    """(name, config with that mesh) for each strategy; `config` is the run's own mesh."""
    out = []
    for name in names:
        if name == "config":
            out.append(("config", cfg))
            continue
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join([*STRATEGIES, 'config'])}")
        layout = builtin_layout(name, num_devices, mcfg.num_heads)
        mesh_shape(layout, num_devices)
        out.append((name, dataclasses.replace(cfg, mesh=dataclasses.replace(
            layout, replica_per_host=cfg.mesh.replica_per_host, rules=cfg.mesh.rules))))
    return out


def rank(cfg: Config, mcfg: ModelConfig, s: Slice, devices: Sequence[Any],
         names: Sequence[str] = (*STRATEGIES, "config"), only: Sequence[str] = DEFAULT_ONLY,
         log=lambda _: None) -> list[Ranked]:
    """Every strategy's rows, best first by (fits, memory, collectives, estimate)."""
    ranked = []
    for name, trial in layouts(cfg, mcfg, len(devices), names):
        for row in rehearse(trial, mcfg, s, devices, log, only):
            ranked.append(Ranked(name, row, estimate_seconds(row, s)))
    return sorted(ranked, key=lambda r: (r.row.executable.split()[0], not r.row.fits, r.row.peak_bytes,
                                         sum(r.row.collective_bytes.values()), r.estimate_s))


def markdown(ranked: Sequence[Ranked]) -> str:
    cols = ("executable", "strategy", "mesh", "GiB/chip", "fits", "collective MB per step",
            "estimated s (lower bound)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in ranked:
        lines.append(f"| {r.row.executable} | {r.strategy} | {r.row.mesh} | {r.row.peak_bytes / 2 ** 30:.2f} | "
                     f"{'yes' if r.row.fits else 'NO'} | {sum(r.row.collective_bytes.values()) / 2 ** 20:.1f} | "
                     f"{r.estimate_s:.4f} |")
    return "\n".join(lines)


def chart(ranked: Sequence[Ranked], path: Path) -> None:
    """Two panels, bars per strategy grouped by executable: compiled GiB per chip (the
    usable HBM dashed) and the estimated seconds per call or decode step (a lower bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.row.executable for r in ranked))
    names = list(dict.fromkeys(r.strategy for r in ranked))
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = ((lambda r: r.row.peak_bytes / 2 ** 30, "GiB per chip (compiled)"),
              (lambda r: r.estimate_s, "estimated s per call / decode step (lower bound)"))
    for ax, (value, title) in zip(axes, panels):
        for i, name in enumerate(names):
            mine = {r.row.executable: r for r in ranked if r.strategy == name}
            xs = [g + i * width for g, e in enumerate(groups) if e in mine]
            ax.bar(xs, [value(mine[e]) for e in groups if e in mine], width, label=name)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=15)
        ax.set_title(title)
    axes[0].axhline(ranked[0].row.hbm_bytes / 2 ** 30, color="k", linestyle="--", linewidth=1,
                    label="usable HBM")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(ranked: Sequence[Ranked], out_dir: str | Path) -> list[Path]:
    """bench_sharding_topology.{md,csv,json,png} in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"strategy": r.strategy, "estimate_s": r.estimate_s, **dataclasses.asdict(r.row)} for r in ranked]
    paths = [out / f"bench_sharding_topology.{ext}" for ext in ("md", "csv", "json")]
    paths[0].write_text(markdown(ranked) + "\n", encoding="utf-8")
    with paths[1].open("w", newline="", encoding="utf-8") as f:
        flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()} for row in rows]
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    paths[2].write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    paths.append(out / "bench_sharding_topology.png")
    chart(ranked, paths[3])
    return paths

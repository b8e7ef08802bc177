"""Requested vs produced length, one point per answer, the target band drawn behind it.

Reads the per-record rows of `scores.score_records` (`target`, `band_low`,
`band_high`, `length`, `language`). Uses a bare `Figure` rendered by the Agg
canvas, so no display is needed and pyplot's global state is never touched.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path

_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple")


def plot_lengths(scored: Sequence[Mapping], path: str | AnyPath, title: str = "") -> AnyPath:
    """Write a PNG scatter of produced length against requested length (band centre).

    Each point's band [a, b] is a grey vertical bar at its x; the diagonal is
    "exactly as requested". One colour per language.
    """
    fig = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.vlines([r["target"] for r in scored], [r["band_low"] for r in scored],
              [r["band_high"] for r in scored], colors="0.8", linewidth=6, label="target band", zorder=1)
    languages = list(dict.fromkeys(r["language"] for r in scored))
    for index, language in enumerate(languages):
        rows = [r for r in scored if r["language"] == language]
        ax.scatter([r["target"] for r in rows], [r["length"] for r in rows], s=14, alpha=0.7,
                   color=_COLOURS[index % len(_COLOURS)], label=language, zorder=2)
    top = max([r["length"] for r in scored] + [r["band_high"] for r in scored] + [1])
    ax.plot([0, top], [0, top], linestyle="--", color="0.4", linewidth=1, label="requested", zorder=0)
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("requested length (band centre, words)")
    ax.set_ylabel("produced length (words)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = as_path(path)
    if is_remote(path):  # one object, written whole
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        path.write_bytes(buffer.getvalue())
    else:
        fig.savefig(path, format="png")
    return path

"""Per-iteration numbers: counts through every filter, lengths, tokens, time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selflengthen_jax.pipeline.store import read_jsonl, read_marker

PHASES = ("instructions", "initial", "extended")


def _words(records: list[dict]) -> dict[str, float]:
    w = np.array([r["words"] for r in records], float) if records else np.zeros(0)
    if not len(w):
        return {"n": 0, "mean": 0.0, "median": 0.0, "p90": 0.0}
    return {"n": int(len(w)), "mean": round(float(w.mean()), 1),
            "median": float(np.median(w)), "p90": float(np.percentile(w, 90))}


def iteration_summary(k: int, d: Path) -> dict:
    """Read one finished iteration's markers and files into a summary entry."""
    entry: dict = {"iteration": k, "phases": {}}
    for name in PHASES:
        info = read_marker(d, name) or {}
        entry["phases"][name] = {"records": info.get("records", 0), "seconds": info.get("seconds", 0),
                                 "tokens": info.get("tokens", 0), "counts": info.get("counts", {})}
    for name in ("train_gen", "train_ext"):
        entry["phases"][name] = {"seconds": (read_marker(d, name) or {}).get("seconds", 0)}
    for name in ("initial", "extended"):
        entry[f"{name}_words"] = _words(read_jsonl(d / f"{name}.jsonl"))
    # prompts skipped as longer than engine.max_prefill_len, over the iteration's phases
    entry["prompt_too_long"] = sum(entry["phases"][n]["counts"].get("prompt_too_long", 0) for n in PHASES)
    ins = entry["phases"]["instructions"]
    attempts = ins["counts"].get("attempts", 0)
    entry["instruction_acceptance"] = round(ins["records"] / attempts, 3) if attempts else 0.0
    return entry


def summary_table(summaries: list[dict]) -> str:
    """A markdown table, one row per finished iteration."""
    head = ("| iter | instructions | accept | initial | init words mean/med/p90 | extended "
            "| ext words mean/med/p90 | prompts too long | tokens | seconds |")
    rows = [head, "|" + "---|" * 10]
    for s in summaries:
        ph = s["phases"]
        iw, ew = s["initial_words"], s["extended_words"]
        tokens = sum(ph[n]["tokens"] for n in PHASES)
        seconds = sum(v.get("seconds", 0) for v in ph.values())
        rows.append(f"| {s['iteration']} | {ph['instructions']['records']} | "
                    f"{s['instruction_acceptance']:.2f} | {ph['initial']['records']} | "
                    f"{iw['mean']}/{iw['median']}/{iw['p90']} | {ph['extended']['records']} | "
                    f"{ew['mean']}/{ew['median']}/{ew['p90']} | {s.get('prompt_too_long', 0)} | "
                    f"{tokens} | {seconds:.0f} |")
    return "\n".join(rows)


def growth_line(summaries: list[dict]) -> str:
    """The paper's claim in one line: mean words of the initial responses, first
    iteration to last (each last one written by a Generator trained on longer texts)."""
    first, last = summaries[0]["initial_words"]["mean"], summaries[-1]["initial_words"]["mean"]
    ratio = f" ({last / first:.2f}×)" if first else ""
    return (f"initial responses: {first:.0f} → {last:.0f} words{ratio} "
            f"(iteration {summaries[0]['iteration']} → {summaries[-1]['iteration']})")


def plot_lengths(out: Path, summaries: list[dict], path: Path) -> Path:
    """Histograms of initial and extended lengths per iteration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("initial", "extended")):
        for s in summaries:
            recs = read_jsonl(out / f"iter_{s['iteration']}" / f"{name}.jsonl")
            if recs:
                ax.hist([r["words"] for r in recs], bins=20, alpha=0.5, label=f"iter {s['iteration']}")
        ax.set_title(f"{name} responses")
        ax.set_xlabel("words")
        ax.legend()
    axes[0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

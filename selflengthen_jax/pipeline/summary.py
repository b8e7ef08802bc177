"""Per-iteration numbers: counts through every filter, lengths, tokens, time."""

from __future__ import annotations

import io

import numpy as np

from selflengthen_jax.metrics.tensorboard import Board
from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline.store import read_jsonl, read_marker

PHASES = ("instructions", "initial", "extended")


def _words(records: list[dict]) -> dict[str, float]:
    w = np.array([r["words"] for r in records], float) if records else np.zeros(0)
    if not len(w):
        return {"n": 0, "mean": 0.0, "median": 0.0, "p90": 0.0}
    return {"n": int(len(w)), "mean": round(float(w.mean()), 1),
            "median": float(np.median(w)), "p90": float(np.percentile(w, 90))}


def iteration_summary(k: int, d: AnyPath) -> dict:
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
    entry["finish_cut"] = finish_cut(entry)
    return entry


def finish_cut(entry: dict) -> dict[str, dict[str, int]]:
    """Per answering phase, what `pipeline.finish_fraction` cost: accepted records that
    completed after the cut, and tasks still unfinished when the phase stopped."""
    return {name: {"cut": entry["phases"][name]["counts"].get("cut_by_finish_fraction", 0),
                   "unfinished": entry["phases"][name]["counts"].get("unfinished_at_cut", 0)}
            for name in ("initial", "extended")}


def summary_table(summaries: list[dict]) -> str:
    """A markdown table, one row per finished iteration."""
    head = ("| iter | instructions | accept | initial | init words mean/med/p90 | extended "
            "| ext words mean/med/p90 | finish cut (records/unfinished) | prompts too long | tokens | seconds |")
    rows = [head, "|" + "---|" * 11]
    for s in summaries:
        ph = s["phases"]
        iw, ew = s["initial_words"], s["extended_words"]
        cut = s["finish_cut"]
        cuts = sum(c["cut"] for c in cut.values())
        unfinished = sum(c["unfinished"] for c in cut.values())
        tokens = sum(ph[n]["tokens"] for n in PHASES)
        seconds = sum(v.get("seconds", 0) for v in ph.values())
        rows.append(f"| {s['iteration']} | {ph['instructions']['records']} | "
                    f"{s['instruction_acceptance']:.2f} | {ph['initial']['records']} | "
                    f"{iw['mean']}/{iw['median']}/{iw['p90']} | {ph['extended']['records']} | "
                    f"{ew['mean']}/{ew['median']}/{ew['p90']} | {cuts}/{unfinished} | "
                    f"{s.get('prompt_too_long', 0)} | {tokens} | {seconds:.0f} |")
    return "\n".join(rows)


def growth_line(summaries: list[dict]) -> str:
    """The paper's claim in one line: mean words of the initial responses, first
    iteration to last (each last one written by a Generator trained on longer texts)."""
    first, last = summaries[0]["initial_words"]["mean"], summaries[-1]["initial_words"]["mean"]
    ratio = f" ({last / first:.2f}×)" if first else ""
    return (f"initial responses: {first:.0f} → {last:.0f} words{ratio} "
            f"(iteration {summaries[0]['iteration']} → {summaries[-1]['iteration']})")


def plot_lengths(out: AnyPath, summaries: list[dict], path: AnyPath) -> AnyPath:
    """Histograms of initial and extended lengths per iteration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("initial", "extended")):
        for s in summaries:
            recs = read_jsonl(as_path(out) / f"iter_{s['iteration']}" / f"{name}.jsonl")
            if recs:
                ax.hist([r["words"] for r in recs], bins=20, alpha=0.5, label=f"iter {s['iteration']}")
        ax.set_title(f"{name} responses")
        ax.set_xlabel("words")
        ax.legend()
    axes[0].set_ylabel("count")
    fig.tight_layout()
    if is_remote(path):  # one object, written whole
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        as_path(path).write_bytes(buffer.getvalue())
    else:
        fig.savefig(path)
    plt.close(fig)
    return path


def phase_metrics(entry: dict) -> dict[str, dict[str, float]]:
    """Per generation phase of one summary entry: tokens/s (generated tokens over the
    phase's wall time, judging included), acceptance (records kept per attempt), records,
    and for the response phases mean and p90 words."""
    out = {}
    for name in PHASES:
        ph = entry["phases"][name]
        attempts = ph["counts"].get("attempts", 0)
        m = {"records": ph["records"],
             "tokens_per_s": ph["tokens"] / ph["seconds"] if ph["seconds"] else 0.0,
             "acceptance": ph["records"] / attempts if attempts else 0.0}
        if f"{name}_words" in entry:
            m.update(words_mean=entry[f"{name}_words"]["mean"], words_p90=entry[f"{name}_words"]["p90"])
        out[name] = m
    return out


def global_step(out: AnyPath, k: int, role: str | None, roles: tuple[str, ...]) -> int:
    """The run's TensorBoard step where iteration k's training of `role` (a short name,
    trained in the order of `roles`) begins, or with role None where iteration k's
    training begins: the optimizer steps of every training before it, as their
    `train_<role>.done` markers record them (a skipped one took 0)."""
    order = [(j, r) for j in range(1, k + 1) for r in roles]
    before = order[:order.index((k, role))] if role else order[:-len(roles)]
    return sum((read_marker(out / f"iter_{j}", f"train_{r}") or {}).get("steps", 0) for j, r in before)


def board_iteration(board: Board, d: AnyPath, entry: dict, step: int) -> None:
    """One iteration's generation metrics (`generation/<phase>/...`) and word-count
    histograms (`lengths/<phase>_words`) at `step`, plus `progress/iteration`."""
    board.scalars("progress", {"iteration": entry["iteration"]}, step)
    for name, values in phase_metrics(entry).items():
        board.scalars(f"generation/{name}", values, step)
    for name in ("initial", "extended"):
        board.histogram(f"lengths/{name}_words", [r["words"] for r in read_jsonl(d / f"{name}.jsonl")], step)

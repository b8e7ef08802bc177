"""The Self-Lengthen loop: iterations of self-instruct, generate, extend, train.

Iteration 1 uses the base model in both roles; iteration k uses the Generator and
Extender adapters trained in iteration k-1, registered on the one loaded base. New
instructions always come from the base model. Each
phase writes its records under `output_dir/iter_k/` and an atomic `<phase>.done`
marker; generation goes through per-phase caches, so a killed run restarted with the
same command continues where it stopped and ends with the same records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import jax

from selflengthen_jax.config import Config, ConfigError
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.pipeline import phases
from selflengthen_jax.pipeline.cached import CachedGenerator
from selflengthen_jax.pipeline.collect import write_long
from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.pipeline.store import (atomic_write_json, atomic_write_text, is_done, mark_done,
                                             read_jsonl, read_marker)
from selflengthen_jax.pipeline.summary import growth_line, iteration_summary, plot_lengths, summary_table
from selflengthen_jax.training.checkpointing import load_adapter
from selflengthen_jax.training.trainer import train

ROLE_DIRS = {"generator": "gen", "extender": "ext"}
# As in the reference, the base model writes and judges new instructions in every
# iteration: the trained roles answer and extend, they do not invent the tasks.
SELF_INSTRUCT_ROLE = "base"


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class Loop:
    """Runs iterations on one engine (base weights loaded once) and the trainer."""

    def __init__(self, cfg: Config, engine: Any, out: Path, log: Callable[[str], None] = print):
        if cfg.train.mode != "lora":
            raise ConfigError("the loop switches roles as LoRA adapters on one base: set train.mode=lora")
        self.cfg, self.engine, self.out, self.log = cfg, engine, out, log
        self.seeds = load_seeds(cfg.language, cfg.pipeline.seeds_path or None)
        if len(self.seeds) < 2:
            raise ValueError("the seeds file must hold at least 2 instructions (few-shot examples)")
        self.train_mesh = make_mesh(cfg.mesh)

    def iter_dir(self, k: int) -> Path:
        return self.out / f"iter_{k}"

    # -- phases with markers ------------------------------------------------------------------
    def _phase(self, d: Path, name: str, run: Callable[[phases.Phase], list[dict]],
               phase: phases.Phase) -> list[dict]:
        path = d / f"{name}.jsonl"
        if is_done(d, name):
            return read_jsonl(path)
        t0, tokens0, too_long0 = time.perf_counter(), phase.gen.generated_tokens, phase.gen.prompt_too_long
        phase.counts = {}
        records = run(phase)
        if phase.gen.prompt_too_long > too_long0:  # skipped, not fatal: counted in the marker
            phase.count("prompt_too_long", phase.gen.prompt_too_long - too_long0)
        write_jsonl(path, records)
        mark_done(d, name, {"records": len(records), "counts": phase.counts,
                            "roles": {"generator": phase.roles.generator, "extender": phase.roles.extender},
                            "seconds": round(time.perf_counter() - t0, 2),
                            "tokens": phase.gen.generated_tokens - tokens0})
        self.log(f"iter {phase.iteration}: {name}: {len(records)} records")
        return records

    def _phase_obj(self, d: Path, k: int, cache: str, roles: phases.Roles) -> phases.Phase:
        gen = CachedGenerator(self.engine, d / "cache" / f"{cache}.jsonl",
                              progress=jax.process_index() == 0)
        return phases.Phase(self.cfg, k, gen, self.engine.tok, roles)

    def _adapter_dir(self, k: int, short: str) -> Path | None:
        """The adapter a role has after iteration k (None: still the base model)."""
        if k < 1:
            return None
        info = read_marker(self.iter_dir(k), f"train_{short}") or {}
        return Path(info["artifact"]) if info.get("artifact") else None

    def _roles(self, k: int) -> phases.Roles:
        """Register the adapters trained so far; roles without one play the base model."""
        adapters, roles = {}, {}
        for role, short in ROLE_DIRS.items():
            path = self._adapter_dir(k - 1, short)
            if path is None:
                roles[role] = "base"
                continue
            params, meta = load_adapter(path)
            adapters[role] = (params, float(meta["alpha"]) / float(meta["rank"]))
            roles[role] = role
        if adapters:
            self.engine.set_adapters(adapters)
        return phases.Roles(**roles)

    def _pool(self, k: int) -> list[str]:
        pool = list(self.seeds)
        for j in range(1, k):
            pool += [r["instruction"] for r in read_jsonl(self.iter_dir(j) / "instructions.jsonl")]
        return pool

    # -- one iteration ------------------------------------------------------------------------
    def iteration(self, k: int) -> dict:
        d = self.iter_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        roles = self._roles(k)
        p = self.cfg.pipeline
        mk = lambda cache: self._phase_obj(d, k, cache, roles)  # noqa: E731
        instructions = self._phase(d, "instructions", lambda ph: phases.self_instruct(
            ph, self._pool(k), p.instruct_count, f"i{k}", SELF_INSTRUCT_ROLE), mk("instructions"))
        initial = self._phase(d, "initial", lambda ph: phases.initial_responses(ph, instructions),
                              mk("initial"))
        extended = self._phase(d, "extended", lambda ph: phases.extend(ph, initial), mk("extended"))
        if not is_done(d, "sft"):
            gen_sft, ext_sft = phases.sft_data(mk("sft"), extended)
            write_jsonl(d / "gen_sft.jsonl", gen_sft)
            write_jsonl(d / "ext_sft.jsonl", ext_sft)
            mark_done(d, "sft", {"gen": len(gen_sft), "ext": len(ext_sft)})
        for role, short in ROLE_DIRS.items():
            self._train(k, role, short, d)
        return iteration_summary(k, d)

    def _train(self, k: int, role: str, short: str, d: Path) -> None:
        name = f"train_{short}"
        if is_done(d, name):
            return
        data = d / f"{short}_sft.jsonl"
        previous = self._adapter_dir(k - 1, short)
        if not read_jsonl(data):
            self.log(f"WARNING iter {k}: no {role} training data survived the filters (see the "
                     f"counts in {d}/*.done); the {role} keeps its previous weights")
            mark_done(d, name, {"skipped": "no training data",
                                "artifact": str(previous) if previous else None})
            return
        init = load_adapter(previous)[0] if previous else None
        t0 = time.perf_counter()
        model = self.engine.model
        artifact = train(self.cfg, role, data, d / "checkpoints" / short, model.params, model.cfg,
                         model.tokenizer, self.train_mesh, init_adapters=init)
        mark_done(d, name, {"artifact": str(artifact), "seconds": round(time.perf_counter() - t0, 2)})
        self.log(f"iter {k}: trained the {role}: {artifact}")

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> list[dict]:
        summaries = []
        for k in range(1, self.cfg.pipeline.max_iter + 1):
            summaries.append(self.iteration(k))
            if jax.process_index() == 0:
                atomic_write_json(self.out / "summary.json", summaries)
                plot_lengths(self.out, summaries, self.out / "lengths.png")
            self.log(summary_table(summaries))
        self._collect_more()
        if jax.process_index() == 0:
            n, dropped = write_long(self.out, self.out / "long.jsonl")
            self.log(growth_line(summaries))
            self.log(f"{self.out / 'long.jsonl'}: {n} pairs ({dropped} duplicates dropped); "
                     f"length histograms: {self.out / 'lengths.png'}")
        return summaries

    def _collect_more(self) -> None:
        """The reference's extra data rounds: more instructions + answers from the final adapters."""
        count = self.cfg.pipeline.collect_count
        if count <= 0:
            return
        d = self.out / "collect"
        d.mkdir(exist_ok=True)
        k = self.cfg.pipeline.max_iter + 1
        roles = self._roles(k)
        ph = lambda cache: self._phase_obj(d, k, cache, roles)  # noqa: E731
        instructions = self._phase(d, "instructions", lambda p: phases.self_instruct(
            p, self._pool(k), count, "c", SELF_INSTRUCT_ROLE), ph("instructions"))
        self._phase(d, "initial", lambda p: phases.initial_responses(p, instructions), ph("initial"))


"""The Self-Lengthen loop: iterations of self-instruct, generate, extend, train.

Iteration 1 uses the base model in both roles; iteration k uses the Generator and
Extender adapters trained in iteration k-1, registered on the one loaded base. New
instructions always come from the base model. Each
phase writes its records under `output_dir/iter_k/` and an atomic `<phase>.done`
marker; generation goes through per-phase caches, so a killed run restarted with the
same command continues where it stopped and ends with the same records.

On several processes every one runs this same loop; each generates its share of the
requests (see `cached.py`), and process 0 alone writes phase files, markers and
summaries, each after a barrier that all shards are complete, then all meet again
before anyone reads them. `output_dir` may be local (shared by all hosts) or `gs://`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from selflengthen_jax import faults
from selflengthen_jax.config import Config, ConfigError
from selflengthen_jax.metrics.tensorboard import TB_DIR, Board, TrainingCurve
from selflengthen_jax.parallel import hosts
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.paths import AnyPath
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.pipeline import phases
from selflengthen_jax.pipeline.cached import CachedGenerator
from selflengthen_jax.pipeline.collect import collect_round_dir, write_long
from selflengthen_jax.pipeline.seeds import load_seeds
from selflengthen_jax.pipeline.store import (atomic_write_json, atomic_write_text, is_done, mark_done,
                                             read_jsonl, read_marker)
from selflengthen_jax.pipeline.summary import (board_iteration, global_step, growth_line, iteration_summary,
                                               plot_lengths, summary_table)
from selflengthen_jax.training.checkpointing import load_adapter
from selflengthen_jax.training.trainer import train

ROLE_DIRS = {"generator": "gen", "extender": "ext"}
# As in the reference, the base model writes and judges new instructions in every
# iteration: the trained roles answer and extend, they do not invent the tasks.
SELF_INSTRUCT_ROLE = "base"


def write_jsonl(path: AnyPath, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class Loop:
    """Runs iterations on one engine (base weights loaded once) and the trainer."""

    def __init__(self, cfg: Config, engine: Any, out: AnyPath, log: Callable[[str], None] = print):
        if cfg.train.mode != "lora":
            raise ConfigError("the loop switches roles as LoRA adapters on one base: set train.mode=lora")
        self.cfg, self.engine, self.out, self.log = cfg, engine, as_path(out), log
        self.writer = hosts.index() == 0
        self.seeds = load_seeds(cfg.language, cfg.pipeline.seeds_path or None)
        if len(self.seeds) < 2:
            raise ValueError("the seeds file must hold at least 2 instructions (few-shot examples)")
        self.train_mesh = make_mesh(cfg.mesh)
        self.board: Board | None = None  # the run's TensorBoard, open while run() runs

    def iter_dir(self, k: int) -> AnyPath:
        return self.out / f"iter_{k}"

    # -- phases with markers ------------------------------------------------------------------
    def _phase(self, d: AnyPath, name: str, run: Callable[[phases.Phase], list[dict]],
               phase: phases.Phase) -> list[dict]:
        path = d / f"{name}.jsonl"
        if is_done(d, name):
            records = read_jsonl(path)
        else:
            t0, tokens0 = time.perf_counter(), phase.gen.generated_tokens
            requests0, too_long0 = phase.gen.generated_requests, phase.gen.prompt_too_long
            phase.counts = {}
            records = run(phase)
            if phase.gen.prompt_too_long > too_long0:  # skipped, not fatal: counted in the marker
                phase.count("prompt_too_long", phase.gen.prompt_too_long - too_long0)
            tokens = sum(hosts.gather(phase.gen.generated_tokens - tokens0))
            if self.writer:  # every shard is complete: the last generate call ended in a barrier
                write_jsonl(path, records)
                faults.checkpoint("phase_written")  # tests kill here: file written, no marker yet
                mark_done(d, name, {"records": len(records), "counts": phase.counts,
                                    "roles": {"generator": phase.roles.generator,
                                              "extender": phase.roles.extender},
                                    "seconds": round(time.perf_counter() - t0, 2), "tokens": tokens})
            mine = f" (process {hosts.index()} generated {phase.gen.generated_requests - requests0} " \
                   "requests)" if hosts.count() > 1 else ""
            self.log(f"iter {phase.iteration}: {name}: {len(records)} records{mine}")
        hosts.barrier(f"phase {d}/{name}")
        return records

    def _phase_obj(self, d: AnyPath, k: int, cache: str, roles: phases.Roles) -> phases.Phase:
        gen = CachedGenerator(self.engine, d / "cache" / f"{cache}.jsonl", progress=self.writer,
                              split=self.cfg.mesh.replica_per_host)
        return phases.Phase(self.cfg, k, gen, self.engine.tok, roles, scope=d.name)

    def _adapter_dir(self, k: int, short: str) -> AnyPath | None:
        """The adapter a role has after iteration k (None: still the base model)."""
        if k < 1:
            return None
        info = read_marker(self.iter_dir(k), f"train_{short}") or {}
        return as_path(info["artifact"]) if info.get("artifact") else None

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

    def _seen(self, k: int, rounds: int = 0) -> list[str]:
        """Instructions a new one must not repeat: the seeds, iterations 1..k-1's and the
        first `rounds` extra rounds'."""
        dirs = [self.iter_dir(j) for j in range(1, min(k, self.cfg.pipeline.max_iter + 1))]
        dirs += [collect_round_dir(self.out, r) for r in range(rounds)]
        return list(self.seeds) + [r["instruction"] for d in dirs
                                   for r in read_jsonl(d / "instructions.jsonl")]

    def _self_instruct(self, k: int, count: int, prefix: str,
                       rounds: int = 0) -> Callable[[phases.Phase], list[dict]]:
        return lambda ph: phases.self_instruct(ph, self.seeds, self._seen(k, rounds), count, prefix,
                                               SELF_INSTRUCT_ROLE)

    # -- one iteration ------------------------------------------------------------------------
    def iteration(self, k: int) -> dict:
        d = self.iter_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        roles = self._roles(k)
        p = self.cfg.pipeline
        mk = lambda cache: self._phase_obj(d, k, cache, roles)  # noqa: E731
        instructions = self._phase(d, "instructions", self._self_instruct(k, p.instruct_count, f"i{k}"),
                                   mk("instructions"))
        initial = self._phase(d, "initial", lambda ph: phases.initial_responses(ph, instructions),
                              mk("initial"))
        extended = self._phase(d, "extended", lambda ph: phases.extend(ph, initial), mk("extended"))
        if not is_done(d, "sft") and self.writer:  # no generation: no cache, no barrier inside
            gen_sft, ext_sft = phases.sft_data(phases.Phase(self.cfg, k, None, self.engine.tok, roles),
                                               extended)
            write_jsonl(d / "gen_sft.jsonl", gen_sft)
            write_jsonl(d / "ext_sft.jsonl", ext_sft)
            mark_done(d, "sft", {"gen": len(gen_sft), "ext": len(ext_sft)})
        hosts.barrier(f"sft {d}")
        if self.board is not None:  # generation metrics where this iteration's training begins
            board_iteration(self.board, d, iteration_summary(k, d), self.global_step(k))
        for role, short in ROLE_DIRS.items():
            self._train(k, role, short, d)
        return iteration_summary(k, d)

    def _train(self, k: int, role: str, short: str, d: AnyPath) -> None:
        name = f"train_{short}"
        if not is_done(d, name):
            self._train_role(k, role, short, d, name)
        hosts.barrier(f"train {d}/{name}")

    def _train_role(self, k: int, role: str, short: str, d: AnyPath, name: str) -> None:
        data = d / f"{short}_sft.jsonl"
        previous = self._adapter_dir(k - 1, short)
        if not read_jsonl(data):
            self.log(f"WARNING iter {k}: no {role} training data survived the filters (see the "
                     f"counts in {d}/*.done); the {role} keeps its previous weights")
            if self.writer:
                mark_done(d, name, {"skipped": "no training data",
                                    "artifact": str(previous) if previous else None})
            return
        init = load_adapter(previous)[0] if previous else None
        t0 = time.perf_counter()
        model = self.engine.model
        curve = None if self.board is None else TrainingCurve(
            self.board, f"train/iter_{k}/{role}", self.global_step(k, role))
        artifact = train(self.cfg, role, data, d / "checkpoints" / short, model.params, model.cfg,
                         model.tokenizer, self.train_mesh, init_adapters=init, curve=curve)
        if self.writer:
            mark_done(d, name, {"artifact": str(artifact), "seconds": round(time.perf_counter() - t0, 2),
                                **({"steps": curve.steps} if curve else {})})
        self.log(f"iter {k}: trained the {role}: {artifact}")

    def global_step(self, k: int, role: str | None = None) -> int:
        return global_step(self.out, k, ROLE_DIRS[role] if role else None, tuple(ROLE_DIRS.values()))

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.board = Board(self.out / TB_DIR, enabled=self.writer)
        try:
            return self._run()
        finally:
            self.board.close()
            self.board = None

    def _run(self) -> list[dict]:
        summaries = []
        for k in range(1, self.cfg.pipeline.max_iter + 1):
            summaries.append(self.iteration(k))
            if self.writer:
                atomic_write_json(self.out / "summary.json", summaries)
                plot_lengths(self.out, summaries, self.out / "lengths.png")
            self.log(summary_table(summaries))
        self._collect_more()
        if self.writer:
            n, dropped = write_long(self.out, self.out / "long.jsonl")
            self.log(growth_line(summaries))
            self.log(f"{self.out / 'long.jsonl'}: {n} pairs ({dropped} duplicates dropped); "
                     f"length histograms: {self.out / 'lengths.png'}")
        return summaries

    def _collect_more(self) -> None:
        """The reference's extra data rounds (`run_collect_data.sh`): rounds of
        `collect_round` new instructions from the base model, each answered by the final
        Generator, with the same filters and down-sampling, in `collect/round_r/`."""
        p = self.cfg.pipeline
        if p.collect_count <= 0:
            return
        k = p.max_iter + 1
        roles = self._roles(k)
        for r, start in enumerate(range(0, p.collect_count, p.collect_round)):
            d = collect_round_dir(self.out, r)
            d.mkdir(parents=True, exist_ok=True)
            ph = lambda cache: self._phase_obj(d, k, cache, roles)  # noqa: E731
            count = min(p.collect_round, p.collect_count - start)
            instructions = self._phase(d, "instructions", self._self_instruct(k, count, f"c{r}", r),
                                       ph("instructions"))
            self._phase(d, "initial", lambda ph_: phases.initial_responses(ph_, instructions),
                        ph("initial"))

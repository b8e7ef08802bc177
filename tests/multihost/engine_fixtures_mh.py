"""What both the 2-process run and the single-process reference compute."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.config import EngineSection, MeshSection, from_dict
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import Request, SamplingParams

PROMPTS = ["The quick brown fox", "Write a long essay about rivers.", "写一篇关于春天的长文章。", "A"]
MESH = MeshSection(data=2, fsdp=4, tensor=1, strategy="fsdp")


def run_generation(ckpt: str) -> list[list[int]]:
    """Greedy and sampled requests on a global 8-device fsdp mesh."""
    mesh = make_mesh(MESH)
    rules = strategy_rules(MESH.strategy)
    engine = Engine(load_model(ckpt, mesh, rules), EngineSection(slots=8, max_prefill_len=64,
                    max_new_tokens=32, decode_chunk=8), mesh, rules)
    reqs = [Request(id=str(i), prompt=p, params=SamplingParams(max_new_tokens=24, seed=i, stop=(),
                                                               greedy=i % 2 == 0))
            for i, p in enumerate(PROMPTS)]
    return [list(c.token_ids) for c in engine.generate(reqs)]


def run_training(ckpt: str, out: str) -> dict:
    """Two LoRA steps with an Orbax save, then a restore; returns loss and a param checksum."""
    from selflengthen_jax.training.checkpointing import load_adapter
    from selflengthen_jax.training.trainer import train

    data = Path(out) / "data.jsonl"
    if jax.process_index() == 0:
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"prompt": p, "response": p + " and more."}) + "\n"
                                for p in PROMPTS))
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("data written")
    cfg = from_dict({"seed": 0, "mesh": dataclasses.asdict(MESH),
                     "train": {"mode": "lora", "epochs": 1, "batch_size": 1, "cutoff_len": 64,
                               "save_every": 1, "log_every": 1, "max_steps": 2}})
    mesh = make_mesh(MESH)
    model = load_model(ckpt, mesh, strategy_rules(MESH.strategy))
    artifact = train(cfg, "gen", data, Path(out) / "gen", model.params, model.cfg, model.tokenizer, mesh)
    adapters, _ = load_adapter(artifact)
    leaves = [np.asarray(jax.device_get(x)) if x.is_fully_addressable else
              np.asarray(jax.experimental.multihost_utils.process_allgather(x, tiled=True))
              for x in jax.tree.leaves(adapters)]
    metrics = [json.loads(line) for line in (Path(out) / "gen" / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [m["loss"] for m in metrics if "loss" in m],
            "checksum": float(sum(np.abs(x).sum() for x in leaves))}

"""Shared set-up for engine tests: a tiny chat checkpoint loaded on a chosen mesh."""

from __future__ import annotations

import dataclasses

import jax

from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.config import EngineSection, MeshSection
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.sampling.engine import Engine
from selflengthen_jax.sampling.request import Request, SamplingParams

GREEDY = SamplingParams(greedy=True, repetition_penalty=1.0, max_new_tokens=64, stop=())


def build_engine(path, strategy="dp", data=1, fsdp=1, tensor=1, attention_impl="auto", eos=True,
                 **section) -> Engine:
    """`eos=False` drops the checkpoint's EOS ids, so only budgets end raw-prompt rows."""
    mesh_cfg = MeshSection(data=data, fsdp=fsdp, tensor=tensor, strategy=strategy)
    mesh = make_mesh(mesh_cfg, jax.devices()[: data * fsdp * tensor])
    rules = strategy_rules(strategy)
    kw = dict(slots=4, max_prefill_len=64, max_new_tokens=128, decode_chunk=16) | section
    model = load_model(path, mesh, rules)
    if not eos:
        model = dataclasses.replace(model, eos_ids=[])
    return Engine(model, EngineSection(**kw), mesh, rules, attention_impl=attention_impl)


def raw_requests(prompts, params=GREEDY):
    return [Request(id=f"r{i}", prompt=p, params=params) for i, p in enumerate(prompts)]

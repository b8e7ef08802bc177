"""The engine makes its device state on the devices: nothing comes back to the host or
hops between devices implicitly (the KV cache of a 7B config is ~90 GB: made on one
chip and copied through the host it would never fit). Only inputs go up: the loaded
weights and each prompt's rows."""

import jax
import numpy as np

from chat_fixtures import make_chat_checkpoint
from engine_fixtures import GREEDY, raw_requests
from selflengthen_jax.checkpoint.loader import load_model
from selflengthen_jax.config import EngineSection, MeshSection
from selflengthen_jax.models.lora import init_lora
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules
from selflengthen_jax.sampling.engine import Engine


def test_engine_construction_and_generate_make_no_implicit_transfers(tmp_path):
    path = make_chat_checkpoint(tmp_path / "ckpt", "qwen2")
    mesh = make_mesh(MeshSection(data=1, fsdp=2, strategy="fsdp"), jax.devices()[:2])
    rules = strategy_rules("fsdp")
    model = load_model(path, mesh, rules)
    adapter = jax.tree.map(np.asarray, init_lora(model.cfg, 4, 0))  # as read from disk
    with jax.transfer_guard_device_to_host("disallow"), jax.transfer_guard_device_to_device("disallow"):
        engine = Engine(model, EngineSection(slots=4, max_prefill_len=64, max_new_tokens=32,
                                             decode_chunk=8), mesh, rules)
        engine.set_adapters({"generator": (adapter, 2.0)})
        out = engine.generate(raw_requests(["hello there"], GREEDY))
    assert len(out) == 1 and out[0].finish_reason in ("eos", "length", "stop")

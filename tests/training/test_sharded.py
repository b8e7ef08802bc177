"""Training sharded over 8 (fake) devices gives the single-device result.

The global batch is the same 8 rows everywhere: batch_size 8 on one device, 8 / (data x
fsdp) per shard of the batch axes otherwise (tensor-parallel devices share their rows).
"""

import json

import jax
import numpy as np
import pytest

from selflengthen_jax.checkpoint import orbax_params
from selflengthen_jax.config import MeshSection
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.training.checkpointing import load_adapter
from selflengthen_jax.training.trainer import train

LAYOUTS = {
    "fsdp": (["mesh.data=1", "mesh.fsdp=8", "mesh.strategy=fsdp"], MeshSection(data=1, fsdp=8)),
    "fsdp_tp": (["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2", "mesh.strategy=fsdp_tp"],
                MeshSection(data=1, fsdp=4, tensor=2)),
}


def trained(tiny, cfg, data, out, mesh):
    artifact = train(cfg, "generator", data, out, tiny.params, tiny.cfg, tiny.tok, mesh)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    if cfg.train.mode == "full":
        return orbax_params.load_params(artifact, tiny.cfg), losses
    return load_adapter(artifact)[0], losses


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(4)
    words = lambda n: " ".join(f"w{i}" for i in rng.integers(0, 100, n))  # noqa: E731
    path = tmp_path_factory.mktemp("sharded") / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": words(4), "response": words(int(rng.integers(5, 30)))})
                            + "\n" for _ in range(16)))
    return path


@pytest.fixture(scope="module")
def one_device_result(tiny, data, tmp_path_factory, one_device):
    """mode -> (trainable, losses) of the single-device run, computed once per mode."""
    cache = {}

    def get(config, mode):
        if mode not in cache:
            cfg = config(*common(mode), "train.batch_size=8")
            cache[mode] = trained(tiny, cfg, data, tmp_path_factory.mktemp(f"one-{mode}"), one_device)
        return cache[mode]
    return get


def common(mode):
    return [f"train.mode={mode}", "train.max_steps=2", "train.learning_rate=0.001", "train.lora.rank=4"]


@pytest.mark.parametrize("layout,mode", [("fsdp", "full"), ("fsdp_tp", "full"), ("fsdp_tp", "lora")])
def test_sharded_training_matches_one_device(tiny, config, data, tmp_path, one_device_result,
                                             layout, mode):
    overrides, section = LAYOUTS[layout]
    rows = 8 // (section.data * section.fsdp)
    cfg = config(*common(mode), *overrides, f"train.batch_size={rows}")
    params, losses = trained(tiny, cfg, data, tmp_path / layout, make_mesh(section))
    want_params, want_losses = one_device_result(config, mode)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), params, want_params)

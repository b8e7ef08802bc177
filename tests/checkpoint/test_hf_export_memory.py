"""The HF export streams: a host holds one output shard plus one tensor, never the model.

A 312 MiB random model, sharded over 4 CPU devices, is exported in its own process with
16 MiB shards; the process's high-water mark of resident memory (VmHWM, reset just
before the export) may grow by at most one shard plus the largest tensor (12 MiB), plus
8 MiB for the runtime. It grows ~25 MiB; the earlier export, which gathered each
stacked leaf whole, grew 153 MiB here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SHARD = 16 << 20
SLACK = 8 << 20  # allocator and runtime noise; the model is over 8x the whole bound

SCRIPT = r"""
import json, math, sys
from pathlib import Path
import jax
from selflengthen_jax.bench.random_model import random_params
from selflengthen_jax.checkpoint.hf_export import export_hf
from selflengthen_jax.config import MeshSection
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.parallel.rules import strategy_rules

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

out, shard = Path(sys.argv[1]), int(sys.argv[2])
cfg = ModelConfig(model_type="llama", vocab_size=4096, hidden_size=768, intermediate_size=3072,
                  num_layers=8, num_heads=12, num_kv_heads=12, head_dim=64, rms_norm_eps=1e-6,
                  rope_theta=1e4, max_position_embeddings=1024, tie_word_embeddings=False,
                  attention_bias=False)
params = jax.block_until_ready(random_params(cfg, make_mesh(MeshSection(data=1, fsdp=-1)),
                                             strategy_rules("fsdp")))
export_hf(params, cfg, out / "warm-up", max_shard_bytes=shard)  # compiles the gathers once
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
before = status("VmRSS")
export_hf(params, cfg, out / "measured", max_shard_bytes=shard)
per_tensor = [x.nbytes // x.shape[0] for x in jax.tree.leaves(params["layers"])]  # stacked
per_tensor += [x.nbytes for k, x in params.items() if k != "layers"]
print(json.dumps({"before": before, "peak": status("VmHWM"), "devices": jax.device_count(),
                  "model": sum(x.nbytes for x in jax.tree.leaves(params)), "largest": max(per_tensor)}))
"""


def test_export_peak_memory_is_one_shard_plus_one_tensor(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(Path(__file__).parents[2]),
           # a fixed mmap threshold: freed big buffers leave RSS, so it measures what is live
           "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(SHARD)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads(run.stdout.strip().splitlines()[-1])
    grew, bound = m["peak"] - m["before"], SHARD + m["largest"] + SLACK
    print(f"model {m['model'] / 2**20:.0f} MiB on {m['devices']} devices; export peak grew "
          f"{grew / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB (shard {SHARD >> 20} + largest tensor "
          f"{m['largest'] / 2**20:.1f} + slack {SLACK >> 20})")
    assert m["model"] > 5 * bound
    assert grew <= bound
    index = json.loads((tmp_path / "measured" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == m["model"]
    assert len(set(index["weight_map"].values())) >= m["model"] // SHARD

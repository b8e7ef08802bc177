"""One process of a 2-process JAX run on this machine (a stand-in for a pod host).

Usage: python worker.py PROCESS_ID PORT CHECKPOINT OUT_DIR
Each process has 4 fake CPU devices; together they form a global mesh of 8.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, ckpt, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

sys.path[:0] = [os.path.dirname(os.path.dirname(__file__)), os.path.dirname(__file__)]
from engine_fixtures_mh import run_generation, run_preemption, run_training  # noqa: E402
from selflengthen_jax.parallel import hosts  # noqa: E402

result = {"devices": jax.device_count(), "local": jax.local_device_count(),
          "gathered": hosts.gather_floats(np.array([pid + 0.1, 1 / 3])).tolist(),
          "tokens": run_generation(ckpt), "train": run_training(ckpt, os.path.join(out, "train"))}
result["preemption"] = run_preemption(ckpt, os.path.join(out, "preempt"), result["train"].pop("adapters"))
with open(os.path.join(out, f"preemption.p{pid}.json"), "w") as f:  # each process's own view
    json.dump(result.pop("preemption"), f)
if pid == 0:
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
jax.distributed.shutdown()

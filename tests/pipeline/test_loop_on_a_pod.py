"""The loop on a pod in miniature: two processes sharing the work with output_dir in a
bucket (a GCS emulator), then both killed and restarted (local output_dir).

Every run is the reduced demo cut to one iteration, so the records depend on generation
alone and must match the single-process, local reference exactly (training still runs,
on the global mesh, and its adapters are written). The two-process runs are 2 x 4 CPU
devices joined with gloo, replica_per_host=true (the default): each process's engine
generates only the requests it owns.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gcs_fixtures import gcs_dir, gcs_emulator  # noqa: F401  (fixtures)
from selflengthen_jax import paths

ROOT = Path(__file__).resolve().parents[2]
ONE_ITERATION = ["pipeline.max_iter=1", "pipeline.instruct_count=3", "pipeline.extension_rounds=2",
                 "train.max_steps=2", "train.save_every=1"]
FILES = ("instructions", "initial", "extended", "gen_sft", "ext_sft")
KILL_POINTS = ["completion:3", "phase_written:2", "train_step:1"]  # generation, merge, training
WALL: dict[str, float] = {}


def run_env(devices: int, **extra: str) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}
    e.pop("SELFLENGTHEN_KILL_AT", None)
    return e


def command(out: str) -> list[str]:
    return [sys.executable, "-m", "launch.iterate", f"output_dir={out}", *ONE_ITERATION]


def iterate_one(out: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(out), cwd=ROOT, env=run_env(8), capture_output=True, text=True,
                          timeout=900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iterate_two(out: str | Path, logs: Path, kill_at: str | None = None) -> tuple[list[int], list[str]]:
    """Both processes of one run; when one dies, the other is killed too (a pod loses its
    slice), as a host blocked at a barrier would otherwise wait for the dead one."""
    port, handles, procs = free_port(), [], []
    for i in range(2):
        extra = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                 "JAX_PROCESS_ID": str(i), **({"SELFLENGTHEN_KILL_AT": kill_at} if kill_at else {})}
        env = run_env(4)
        env.update(extra)  # after run_env, which drops an inherited kill point
        handles.append(open(logs / f"p{i}-{kill_at or 'final'}.log", "w"))
        procs.append(subprocess.Popen(command(str(out)), cwd=ROOT, env=env, stdout=handles[-1],
                                      stderr=subprocess.STDOUT))
    deadline = time.time() + 900
    while time.time() < deadline and any(p.poll() is None for p in procs):
        if any(p.returncode not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    for h in handles:
        h.close()
    return [p.returncode for p in procs], [(logs / h.name).read_text() for h in handles]


def records(out: str | Path) -> dict[str, list[dict]]:
    d = paths.path(out) / "iter_1"
    return {name: [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()]
            for name in FILES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    t0 = time.perf_counter()
    done = iterate_one(str(out))
    WALL["1 process x 8 devices, local"] = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    return records(out)


def generated(log: str) -> int:
    return sum(int(n) for n in re.findall(r"process \d generated (\d+) requests", log))


def test_two_processes_in_a_bucket_share_the_work_and_end_with_the_local_records(reference, gcs_dir,
                                                                                 tmp_path):
    """The pod's usual layout in one run: output_dir in a bucket, two processes each
    generating its own share into its own shard objects, process 0 merging."""
    t0 = time.perf_counter()
    codes, logs = iterate_two(gcs_dir, tmp_path)
    WALL["2 processes x 4 devices, gs://"] = time.perf_counter() - t0
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert records(gcs_dir) == reference
    mine = [generated(log) for log in logs]
    total = sum(mine)
    print(f"requests generated per process: {mine}; wall times: "
          + ", ".join(f"{k}: {v:.0f} s" for k, v in WALL.items()))
    assert all(0.3 * total <= n <= 0.7 * total for n in mine), mine
    out = paths.path(gcs_dir)
    shards = sorted(p.name for p in (out / "iter_1" / "cache").iterdir())
    assert "initial.p0.jsonl.parts" in shards and "initial.p1.jsonl.parts" in shards, shards
    for name in ("summary.json", "lengths.png", "long.jsonl", "run_config.json"):
        assert (out / name).is_file(), name
    events = [p.name for p in (out / "tensorboard").iterdir() if p.name.startswith("events.out.tfevents.")]
    assert events  # the run's TensorBoard, uploaded as complete event files
    from selflengthen_jax.training.checkpointing import load_adapter
    for short in ("gen", "ext"):
        load_adapter(out / "iter_1" / "checkpoints" / short / "adapter")
    assert not (ROOT / "gs:").exists()


def test_both_processes_killed_anywhere_and_restarted_lose_and_duplicate_nothing(reference, tmp_path):
    out = tmp_path / "killed"
    reached = []
    for point in KILL_POINTS:
        codes, logs = iterate_two(out, tmp_path, point)
        if -signal.SIGKILL in codes:
            reached.append(point)
        else:
            assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    codes, logs = iterate_two(out, tmp_path)
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    got = records(out)
    assert got == reference
    for name, rows in got.items():
        assert len({r["id"] for r in rows}) == len(rows), name
    print(f"kill points reached: {reached} of {KILL_POINTS}")
    assert len(reached) >= 2, reached

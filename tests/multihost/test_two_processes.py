"""Two JAX processes x 4 CPU devices (a pod in miniature) match one process x 8 devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chat_fixtures import make_chat_checkpoint
from engine_fixtures_mh import run_generation, run_training

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mh")
    ckpt = make_chat_checkpoint(root / "ckpt")
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE.parent)])}
    shared = root / "shared"  # one directory both hosts see, as a pod's bucket
    shared.mkdir()
    procs = [subprocess.Popen([sys.executable, str(HERE / "worker.py"), str(i), port, str(ckpt),
                               str(shared)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    return ckpt, json.loads((shared / "result.json").read_text()), root


def test_processes_form_one_global_mesh(two_process_run):
    _, result, _ = two_process_run
    assert (result["devices"], result["local"]) == (8, 4)


def test_generation_matches_single_process(two_process_run):
    ckpt, result, _ = two_process_run
    assert result["tokens"] == run_generation(str(ckpt))


def test_training_and_orbax_round_trip_match_single_process(two_process_run, tmp_path):
    ckpt, result, _ = two_process_run
    single = run_training(str(ckpt), str(tmp_path / "single"))
    assert result["train"]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert result["train"]["checksum"] == pytest.approx(single["checksum"], rel=1e-5)

"""Two JAX processes x 4 CPU devices (a pod in miniature) match one process x 8 devices,
and a preemption notice (SIGTERM) during training stops both after one agreed step."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chat_fixtures import make_chat_checkpoint
from engine_fixtures_mh import PREEMPT_AT, PREEMPT_STEPS, run_generation, run_training

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


def test_floats_are_gathered_from_every_process_bit_for_bit(two_process_run):
    _, result, _ = two_process_run
    assert result["gathered"] == [[0.1, 1 / 3], [1.1, 1 / 3]]


def test_generation_matches_single_process(two_process_run):
    ckpt, result, _ = two_process_run
    assert result["tokens"] == run_generation(str(ckpt))


def test_training_and_orbax_round_trip_match_single_process(two_process_run, tmp_path):
    ckpt, result, _ = two_process_run
    single = run_training(str(ckpt), str(tmp_path / "single"))
    single.pop("adapters")
    assert result["train"]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert result["train"]["checksum"] == pytest.approx(single["checksum"], rel=1e-5)


@pytest.mark.parametrize("case", ["both", "one"])
def test_sigterm_during_training_saves_one_agreed_step_everywhere_and_the_restart_resumes_from_it(
        two_process_run, case):
    """SIGTERM while step 2 runs, on both processes or on process 0 alone: both finish
    step 2, save it (the emergency checkpoint, no periodic save before the end), stop
    with 143 and the resume line; the restart runs only step 3 and ends where an
    uninterrupted run does, bit for bit."""
    _, _, root = two_process_run
    views = [json.loads((root / "shared" / f"preemption.p{i}.json").read_text())[case] for i in range(2)]
    for got in views:
        assert got["code"] == 143, got
        assert "stopped by signal SIGTERM" in got["stderr"], got["stderr"]
        assert "rerun the same command to resume" in got["stderr"]
        assert got["saved"] == [PREEMPT_AT]
        assert got["identical"]
    assert f"emergency checkpoint: step {PREEMPT_AT} saved" in views[0]["stdout"]
    assert views[0]["logged"] == list(range(1, PREEMPT_STEPS + 1))  # none ran twice, none skipped

"""On several hosts, a local output_dir that is each host's own disk (here: a relative
path, resolved in a different working directory by each process) is refused at start-up
by every process, in one line, and left as it was found."""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_output_dir_not_every_host_sees_is_refused_by_all(tmp_path):
    port = free_port()
    procs = []
    for i in range(2):
        host = tmp_path / f"host{i}"
        host.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen([sys.executable, "-m", "launch.iterate", "output_dir=run"],
                                      cwd=host, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 2, err[-2000:]
        assert err.strip().splitlines()[-1] == (
            "error: output_dir run is not shared by all hosts: process(es) 1 cannot see the file "
            "process 0 wrote there; give a directory on a shared file system, or a gs:// bucket")
    assert not (tmp_path / "host0" / "run").exists() and not (tmp_path / "host1" / "run").exists()

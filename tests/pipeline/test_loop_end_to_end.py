"""The demo loop end to end shows Self-Lengthen working, and killed anywhere (SIGKILL)
then resumed, it loses nothing.

One uninterrupted run of two iterations on the shipped demo model is the reference: every
stage yields data in both iterations, every extension is more than 1.2x its initial
answer, and iteration 2's Generator (trained in iteration 1) writes at least 1.3x longer.
A second run of the same config is killed at several points (mid self-instruct, mid
generation, mid extension, mid training step, mid Orbax save), restarted each time with
the same command, and must end with exactly the reference's records and restorable
adapters. Counts are smaller than the demo's; the training and the thresholds are not.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REDUCED = ["pipeline.max_iter=2", "pipeline.instruct_count=3", "pipeline.extension_rounds=2",
           "train.save_every=2"]
KILL_POINTS = ["completion:2", "train_step:2", "orbax_save:1", "completion:30"]
FILES = ("instructions", "initial", "extended", "gen_sft", "ext_sft")


def run_env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    e.pop("SELFLENGTHEN_KILL_AT", None)
    return e


def iterate(out: Path, kill_at: str | None = None, *flags: str) -> subprocess.CompletedProcess:
    env = run_env()
    if kill_at:
        env["SELFLENGTHEN_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "launch.iterate", f"output_dir={out}", *REDUCED, *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def records(out: Path) -> dict[str, list[dict]]:
    got = {}
    for k in (1, 2):
        for name in FILES:
            path = out / f"iter_{k}" / f"{name}.jsonl"
            got[f"{k}/{name}"] = [json.loads(line) for line in path.read_text().splitlines()]
    return got


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    done = iterate(out, None, "--profile", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "stdout.txt").write_text(done.stdout)
    return out


def mean_words(rows: list[dict]) -> float:
    return sum(r["words"] for r in rows) / len(rows)


def test_every_stage_yields_data_in_both_iterations(reference):
    recs = records(reference)
    for key, rows in recs.items():
        assert rows, f"{key} is empty"
        assert len({r["id"] for r in rows}) == len(rows), f"duplicate ids in {key}"
    summary = json.loads((reference / "summary.json").read_text())
    assert [s["iteration"] for s in summary] == [1, 2]
    assert (reference / "lengths.png").stat().st_size > 0
    assert len((reference / "long.jsonl").read_text().splitlines()) >= len(recs["1/initial"])


def test_every_extension_is_more_than_1_2_times_its_initial_answer(reference):
    for k in (1, 2):
        for r in records(reference)[f"{k}/extended"]:
            assert r["words"] > 1.2 * r["initial_words"], r["id"]


def test_the_trained_generator_writes_longer(reference):
    recs = records(reference)
    first, second = mean_words(recs["1/initial"]), mean_words(recs["2/initial"])
    assert second >= 1.3 * first, (first, second)
    printed = (reference / "stdout.txt").read_text()
    assert f"initial responses: {first:.0f} → {second:.0f} words ({second / first:.2f}×)" in printed
    assert str(reference / "long.jsonl") in printed and str(reference / "lengths.png") in printed


def test_iteration_2_generates_with_iteration_1_adapters(reference):
    from selflengthen_jax.pipeline.store import read_marker
    for short, role in (("gen", "generator"), ("ext", "extender")):
        assert not read_marker(reference / "iter_1", f"train_{short}").get("skipped")
        for phase in ("initial", "extended"):
            assert read_marker(reference / "iter_2", phase)["roles"][role] == role
        assert (reference / "iter_1" / "checkpoints" / short / "adapter").is_dir()


def test_one_tensorboard_run_on_one_global_step(reference):
    """Both iterations' generator and extender curves follow each other on one step axis,
    each iteration's generation metrics and histograms sit where its training begins, and
    --profile 2 left one decode and one train trace."""
    from selflengthen_jax.pipeline.store import read_marker
    from tb_fixtures import histograms, scalars

    tb = reference / "tensorboard"
    got = scalars(tb)
    end = 0
    for k in (1, 2):
        assert [s for s, v in got["progress/iteration"] if v == k] == [end]
        for phase in ("instructions", "initial", "extended"):
            assert [s for s, _ in got[f"generation/{phase}/tokens_per_s"]][k - 1] == end
        for role, short in (("generator", "gen"), ("extender", "ext")):
            steps = [s for s, _ in got[f"train/iter_{k}/{role}/loss"]]
            assert steps == sorted(set(steps)) and steps[0] > end, (k, role, steps)
            end += read_marker(reference / f"iter_{k}", f"train_{short}")["steps"]
            assert steps[-1] == end
    assert [s for s, _, _ in histograms(tb)["lengths/initial_words"]] == [s for s, _ in got["progress/iteration"]]
    assert not list((reference / "iter_1").rglob("events.out.tfevents.*"))  # no per-role runs any more
    assert len(list((tb / "plugins" / "profile").rglob("*.xplane.pb"))) == 2


def test_killed_anywhere_and_resumed_loses_and_duplicates_nothing(reference, tmp_path):
    out = tmp_path / "killed"
    kills = 0
    for point in KILL_POINTS:
        run = iterate(out, point)
        if run.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert run.returncode == 0, run.stderr[-3000:]
    final = iterate(out)
    assert final.returncode == 0, final.stderr[-3000:]
    assert records(out) == records(reference)
    print(f"kill points tried: {len(KILL_POINTS)}, reached: {kills}")
    assert kills >= 2, f"only {kills} kill points were reached"
    from selflengthen_jax.training.checkpointing import load_adapter
    for adapter in out.glob("iter_*/checkpoints/*/adapter"):
        load_adapter(adapter)


def test_sigterm_stops_cleanly_with_a_message(tmp_path):
    """With a cold compilation cache the stop lands while XLA compiles the next kernel on
    jaxlib's thread pool: the process must still end with 143 and its line (it used to
    die with SIGSEGV when the exit tore the runtime down under that compile)."""
    env = {**run_env(), "XDG_CACHE_HOME": str(tmp_path / "cold-cache")}
    proc = subprocess.Popen([sys.executable, "-m", "launch.iterate", f"output_dir={tmp_path / 'run'}",
                             *REDUCED], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    import time
    deadline = time.time() + 600
    cache_file = tmp_path / "run" / "iter_1" / "cache" / "instructions.jsonl"
    while time.time() < deadline and not (cache_file.is_file() and cache_file.stat().st_size):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "rerun the same command to resume" in err

"""The generation cache across processes: every request has one owner, chosen from its id;
each process's shard is its own file; a restart (any process count) reads every shard."""

from fake_engine import FakeEngine
from selflengthen_jax.pipeline.cached import CachedGenerator, owner, shard_path, shards
from selflengthen_jax.pipeline.store import JsonlStore
from selflengthen_jax.sampling.request import Request, SamplingParams


def requests(n):
    return [Request(id=f"r{i}", messages=[{"role": "user", "content": f"q{i}"}],
                    params=SamplingParams(seed=i, max_new_tokens=8)) for i in range(n)]


def test_every_request_has_one_owner_and_the_owners_share_the_work():
    ids = [f"i1-{s:05d}-r{j}-t0" for s in range(200) for j in range(2)]
    counts = [sum(owner(i, 2) == p for i in ids) for p in range(2)]
    assert sum(counts) == len(ids) and min(counts) > 0.4 * len(ids)
    assert all(owner(i, 2) == owner(i, 2) for i in ids)  # a pure function of the id


def test_shards_are_named_per_process_and_all_are_found(tmp_path):
    base = tmp_path / "cache" / "initial.jsonl"
    assert shard_path(base, 1) == tmp_path / "cache" / "initial.p1.jsonl"
    for p in (0, 1):
        JsonlStore(shard_path(base, p)).append({"id": f"x{p}"})
    JsonlStore(tmp_path / "cache" / "initial_more.jsonl").append({"id": "other phase"})
    assert shards(base) == [shard_path(base, 0), shard_path(base, 1)]


def test_a_single_process_resumes_from_the_shards_of_a_two_process_run(tmp_path):
    base = tmp_path / "cache" / "initial.jsonl"
    reqs = requests(6)
    fresh = FakeEngine().generate(reqs)
    for p in (0, 1):  # what two processes left, each its own share
        store = JsonlStore(shard_path(base, p))
        for c in fresh:
            if owner(c.id, 2) == p and c.id != "r5":
                store.append({"id": c.id, "text": c.text, "token_ids": list(c.token_ids),
                              "prompt_tokens": c.prompt_tokens, "finish_reason": c.finish_reason})
    engine = FakeEngine()
    got = CachedGenerator(engine, base, progress=False, split=True).generate(reqs)
    assert engine.calls == ["r5"]  # only the one no shard held
    assert [c.text for c in got] == [c.text for c in fresh]


class ScoringEngine(FakeEngine):
    def __init__(self):
        super().__init__()
        self.scored = []

    def loglikelihood(self, pairs, adapter="base"):
        self.scored += pairs
        return super().loglikelihood(pairs, adapter)


def test_likelihood_scores_are_split_by_prompt_and_every_process_gets_them_all(tmp_path, monkeypatch):
    """Two processes (threads here, meeting at the same barriers and gather the real ones
    would): each scores only the prompts it owns, all of a prompt's continuations together,
    and both return exactly the scores one process alone computes."""
    import threading

    import numpy as np

    from selflengthen_jax.parallel import hosts
    local, meet, board = threading.local(), threading.Barrier(2), {}

    def gather_floats(values):
        board[local.index] = values
        meet.wait()
        stacked = np.stack([board[0], board[1]])
        meet.wait()
        return stacked
    monkeypatch.setattr(hosts, "index", lambda: local.index)
    monkeypatch.setattr(hosts, "count", lambda: 2)
    monkeypatch.setattr(hosts, "barrier", lambda name: meet.wait())
    monkeypatch.setattr(hosts, "gather_floats", gather_floats)
    pairs = [(f"instruction {i}{' lantern' if i % 3 == 0 else ''}", a) for i in range(12) for a in ("yes", "no")]
    engines, results = [ScoringEngine(), ScoringEngine()], {}

    def process(i):
        local.index = i
        results[i] = CachedGenerator(engines[i], tmp_path / "cache" / "judge.jsonl", progress=False,
                                     split=True).loglikelihood(pairs)
    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results[0] == results[1] == FakeEngine().loglikelihood(pairs)
    assert sorted(engines[0].scored + engines[1].scored) == sorted(pairs)  # each pair once
    for i in range(2):
        assert engines[i].scored and all(owner(head, 2) == i for head, _ in engines[i].scored)

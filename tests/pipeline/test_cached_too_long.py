"""A request the engine skips as too long is counted, fresh or replayed from the store."""

from selflengthen_jax.pipeline.cached import CachedGenerator
from selflengthen_jax.sampling.request import Completion, Request


class TooLongForSome:
    def generate(self, requests, progress=False, on_complete=None):
        out = []
        for i, r in enumerate(requests):
            c = Completion(r.id, "", (), 99, "prompt_too_long") if "long" in r.id else \
                Completion(r.id, "ok", (1,), 3, "eos")
            on_complete(i, c)
            out.append(c)
        return out


def test_prompt_too_long_is_counted_and_kept_for_resume(tmp_path):
    reqs = [Request(id=i, prompt="x") for i in ("a", "long-1", "b", "long-2")]
    gen = CachedGenerator(TooLongForSome(), tmp_path / "c.jsonl", progress=False)
    assert [c.finish_reason for c in gen.generate(reqs)][1::2] == ["prompt_too_long"] * 2
    assert gen.prompt_too_long == 2
    again = CachedGenerator(TooLongForSome(), tmp_path / "c.jsonl", progress=False)
    assert [c.text for c in again.generate(reqs)] == ["ok", "", "ok", ""]
    assert again.prompt_too_long == 2

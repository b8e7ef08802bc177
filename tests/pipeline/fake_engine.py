"""A deterministic stand-in for the engine, to test the phases' logic quickly.

Its answers depend only on a request's id and seed (as the real engine's do), so
replays are exact. Texts are shaped to pass or fail the filters on purpose.
"""

from __future__ import annotations

import random

from selflengthen_jax.sampling.request import Completion

WORDS = ("river mountain harbour lantern orchard meadow quarry violin glacier comet archive "
         "bridge pottery compass falcon tundra canyon festival parchment beacon").split()


class FakeTokenizer:
    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return body + ("<assistant>" if add_generation_prompt else "")


def prose(rng: random.Random, paragraphs: int, words: int = 30) -> str:
    """Paragraphs of distinct word sequences ending in a full stop."""
    out = []
    for _ in range(paragraphs):
        out.append(" ".join(f"{rng.choice(WORDS)}{rng.randrange(10**6)}" for _ in range(words)) + ".")
    return "\n\n".join(out)


class FakeEngine:
    def __init__(self, bad_every: int = 3):
        self.tok = FakeTokenizer()
        self.bad_every = bad_every
        self.calls: list[str] = []
        self.requests: dict[str, object] = {}  # id -> the request, prompt and adapter as sent
        self.adapter_sets: list[dict] = []  # every set_adapters call

    def _answer(self, req) -> str:
        rng = random.Random(req.params.seed)
        if req.prompt is not None and req.prompt.endswith("Instruction 3:"):  # self-instruct
            return f" Write a long {rng.choice(WORDS)} story of {rng.randrange(3000, 9000)} words.\nInstruction 4: x"
        if req.prompt is not None and req.prompt.endswith("指令3："):
            return f"写一篇关于{rng.choice(WORDS)}的{rng.randrange(3000, 9000)}字长篇故事。\n指令4：x"
        if req.messages is not None and "2,000 words" in req.messages[-1]["content"]:  # judge
            return "No" if "lantern" in req.messages[-1]["content"] else "Yes"
        if req.messages is not None and "2000字" in req.messages[-1]["content"]:
            return "否" if "lantern" in req.messages[-1]["content"] else "是"
        if req.params.seed % self.bad_every == 0:
            return "an unfinished answer without final punctuation"
        if req.prompt is not None:  # extension stage 2: continue the assistant turn
            return prose(rng, 3)
        return prose(rng, 4)

    def generate(self, requests, progress=False, on_complete=None):
        out = []
        for i, r in enumerate(requests):
            self.calls.append(r.id)
            self.requests[r.id] = r
            text = self._answer(r)
            for stop in r.params.stop:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            c = Completion(r.id, text, tuple(range(len(text.split()))), 5, "eos")
            if on_complete:
                on_complete(i, c)
            out.append(c)
        return out

    def set_adapters(self, adapters):
        self.adapter_sets.append(dict(adapters))

    def loglikelihood(self, pairs, adapter="base"):
        # "yes" wins unless the instruction mentions a lantern
        return [(-1.0 if ("yes" in a.lower() or "是" in a) != ("lantern" in p) else -2.0)
                for p, a in pairs]

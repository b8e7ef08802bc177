"""What callers hand the generation engine and what they get back.

The pipeline, evaluation and launch scripts only ever see these types: never
slots, caches or devices (the engine <-> pipeline seam).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

# Self-Lengthen's default stop strings (the chat end tokens are added by the engine
# from the tokenizer).
DEFAULT_STOP: tuple[str, ...] = ("\n\n---", "\n---", "---", "\n\n\n")

# prompt_too_long: the prompt exceeds engine.max_prefill_len; that request alone comes
# back at once, with no tokens, and the rest of its batch runs.
FinishReason = Literal["eos", "stop", "length", "prompt_too_long"]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; defaults mirror the reference Self-Lengthen run."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.1
    max_new_tokens: int = 2048
    stop: tuple[str, ...] = DEFAULT_STOP
    seed: int = 0
    greedy: bool = False


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation request.

    Exactly one of `messages` (chat: rendered with the checkpoint's chat template,
    generation prompt appended) or `prompt` (raw completion: continued as is) is set.
    `adapter` names the weights to use: "base" or a LoRA adapter registered with the
    engine (e.g. "generator", "extender").
    """

    id: str
    params: SamplingParams = SamplingParams()
    messages: Sequence[dict] | None = None
    prompt: str | None = None
    adapter: str = "base"

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError(f"request {self.id!r}: set exactly one of 'messages' or 'prompt'")


@dataclasses.dataclass(frozen=True)
class Completion:
    """A finished request: decoded text (stop string cut) and its token ids."""

    id: str
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: FinishReason

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

"""A tiny Qwen-style tokenizer for the embedded demo checkpoint.

The demo must go through the same import path as a real Qwen2 checkpoint, so the
tokenizer mirrors Qwen2's design at toy scale: NFC normalization, Qwen's
pre-tokenizer split (single digits, letter runs, punctuation runs), byte-level BPE
(so any NFC string, Chinese included, round-trips exactly), the ChatML special
tokens, the Qwen chat template, and `tokenizer_class: Qwen2Tokenizer` in the saved
config. It is trained here from the demo corpus because nothing can be downloaded.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Trained in this order, so these are their ids in every demo tokenizer.
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2

DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2's split pattern: contractions, letter runs with one leading non-letter,
# single digits, punctuation runs, and whitespace handled so "\n\n" stays whole.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML as Qwen2 renders it: a default system turn when none is given, and
# "<|im_start|>assistant\n" as the generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_chatml(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Render messages exactly as CHAT_TEMPLATE does, without needing jinja.

    Used to put chat-formatted text into the tokenizer's training data (so the
    merges cover the ChatML scaffolding) before any HF tokenizer exists.
    """
    parts = []
    if messages and messages[0]["role"] != "system":
        parts.append(f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n")
    parts += [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages]
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def _empty_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # Qwen2Tokenizer re-applies NFC when loaded, so the raw tokenizer.json must too
    # or the two would disagree on non-NFC input.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Train a byte-level BPE on `texts`; same texts give the same tokenizer.

    The full 256-byte alphabet is seeded so characters absent from the corpus
    still encode (as bytes) instead of failing.
    """
    tokenizer = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    for expected, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token!r} did not get id {expected}")
    return tokenizer


def write_hf_tokenizer(
    tokenizer: Tokenizer, out_dir: str | Path, model_max_length: int = 4096
) -> None:
    """Save `tokenizer` so `AutoTokenizer.from_pretrained(out_dir)` loads it offline.

    Wrapped as a Qwen2Tokenizer so loading resolves the same class as a real
    Qwen2 checkpoint. eos is <|im_end|> (what ends a chat turn), pad is
    <|endoftext|> and there is no bos or unk, as in Qwen2-Instruct. Decoding
    leaves spaces untouched so text round-trips.
    """
    from transformers import Qwen2Tokenizer

    hf = Qwen2Tokenizer(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    hf.save_pretrained(str(out_dir))

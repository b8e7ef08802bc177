"""The checkpoint's own tokenizer and chat template, from local files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import transformers

from selflengthen_jax.checkpoint.bucket_source import local_files
from selflengthen_jax.checkpoint.hf_import import CheckpointError

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_tokenizer(model_dir: str | Path) -> transformers.PreTrainedTokenizerBase:
    """AutoTokenizer from the directory (for gs://, a local copy of its small files),
    offline, never running remote code."""
    d = local_files(model_dir)
    if not any((d / f).is_file() for f in TOKENIZER_MARKERS):
        raise CheckpointError(f"{d} has no tokenizer (expected one of: {', '.join(TOKENIZER_MARKERS)})")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True,
                                                         trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}: cannot load the tokenizer: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _declared_eos(path: Path) -> list[int] | None:
    """`eos_token_id` of a JSON config file (an int or a list), None when it declares none."""
    if not path.is_file():
        return None
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if eos is None:
        return None
    return [eos] if isinstance(eos, int) else [int(t) for t in eos]


def eos_token_ids(model_dir: str | Path, tok: transformers.PreTrainedTokenizerBase) -> list[int]:
    """The checkpoint's own end-of-sequence ids, as transformers' `generate` reads them:
    generation_config.json's `eos_token_id` (an int or a list), else config.json's; the
    tokenizer's EOS only when neither file declares one. A special token that is only a
    pad token (e.g. Qwen's <|endoftext|> on some checkpoints) does not end generation."""
    d = local_files(model_dir)  # a bucket checkpoint's small files, cached locally
    for name in ("generation_config.json", "config.json"):
        ids = _declared_eos(d / name)
        if ids is not None:
            return ids
    return [] if tok.eos_token_id is None else [tok.eos_token_id]


_TURN_MARK = "\u2063turn-end-probe\u2063"


def end_of_turn_ids(tok: transformers.PreTrainedTokenizerBase) -> list[int]:
    """The special token the chat template closes an assistant turn with (Qwen's
    <|im_end|>, Llama 3's <|eot_id|>), found by rendering a one-turn conversation; []
    without a template or when the template closes turns with plain text."""
    from jinja2 import TemplateError

    if not getattr(tok, "chat_template", None):
        return []
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": _TURN_MARK}], tokenize=False)
    except (TemplateError, ValueError, TypeError):  # a template may refuse this conversation
        return []
    if _TURN_MARK not in text:
        return []
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    tail = tok.encode(text.split(_TURN_MARK, 1)[1], add_special_tokens=False)
    return next(([t] for t in tail if t in special), [])


def special_token_ids(model_dir: str | Path | None) -> dict[str, Any]:
    """bos_token_id and eos_token_id for a config.json we write: each from the directory's
    generation_config.json, else its config.json, else its tokenizer; None if none has it."""
    ids: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None}
    d = Path(model_dir) if model_dir is not None else None
    for name in ("generation_config.json", "config.json") if d is not None else ():
        if (d / name).is_file():
            declared = json.loads((d / name).read_text(encoding="utf-8"))
            ids.update({k: declared[k] for k in ids if ids[k] is None and declared.get(k) is not None})
    if d is not None and None in ids.values() and any((d / f).is_file() for f in TOKENIZER_MARKERS):
        tok = load_tokenizer(d)
        ids["bos_token_id"] = ids["bos_token_id"] if ids["bos_token_id"] is not None else tok.bos_token_id
        ids["eos_token_id"] = ids["eos_token_id"] if ids["eos_token_id"] is not None else tok.eos_token_id
    return ids


def chat_prompt(tok: transformers.PreTrainedTokenizerBase, messages: Sequence[dict],
                assistant_prefix: str = "") -> str:
    """Render messages with the checkpoint's chat template, opening the assistant turn.

    `assistant_prefix` is text already written at the start of the assistant turn: the
    model continues it (the extender's second stage needs this).
    """
    if not getattr(tok, "chat_template", None):
        raise CheckpointError("the tokenizer has no chat template; use raw prompts instead")
    text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def encode(tok: transformers.PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of text exactly as written (templates already hold special tokens)."""
    return tok.encode(text, add_special_tokens=False)

"""A tiny checkpoint with a real byte-level BPE tokenizer and a ChatML template (tests only)."""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hf_fixtures import make_checkpoint

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = ["The quick brown fox jumps over the lazy dog. ---\n\nA long story begins here.",
        "Write a long essay about rivers, mountains and the sea.\n\n\n",
        "写一篇关于春天的长文章。河流、山川和大海。"] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_chat_checkpoint(path: Path, kind: str = "qwen2", vocab_size: int = 384, **overrides) -> Path:
    """Random tiny model + trained BPE tokenizer (ids < vocab_size) + generation config."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    eos = fast.convert_tokens_to_ids("<|im_end|>")
    make_checkpoint(path, kind, vocab_size=vocab_size, eos_token_id=eos, **overrides)
    fast.save_pretrained(path)
    gen = json.loads((Path(path) / "generation_config.json").read_text())
    gen["eos_token_id"] = eos
    (Path(path) / "generation_config.json").write_text(json.dumps(gen))
    return Path(path)

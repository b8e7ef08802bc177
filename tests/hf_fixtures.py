"""Tiny random Hugging Face checkpoints built with transformers + torch (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def make_checkpoint(path: Path, kind: str = "qwen2", seed: int = 0, **overrides) -> Path:
    """Save a random-init tiny Qwen2/Llama causal LM with save_pretrained (safetensors)."""
    torch.manual_seed(seed)
    kw = {**TINY, **overrides}
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # HF inits biases and norms trivially; perturb so they matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return Path(path)


def hf_model(path: Path) -> transformers.PreTrainedModel:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return model.eval()


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOKENIZER_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def add_tokenizer(path: Path, vocab_size: int = 128) -> Path:
    """Save a byte-level BPE ChatML tokenizer (EOS <|im_end|>) into the checkpoint `path`.

    Trained on ChatML turns of words "w0" ... "w99", so such text (and the roles user,
    assistant, system) encodes with ids < vocab_size and decodes back exactly. BPE with
    byte-level pre-tokenization is what transformers rebuilds for a Qwen2 checkpoint.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    words = " ".join(f"w{i}" for i in range(100))
    corpus = [f"<|im_start|>{role}\n{words}<|im_end|>\n" for role in ("system", "user", "assistant")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TOKENIZER_SPECIALS, show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(path)
    return Path(path)

"""Tiny random Hugging Face checkpoints built with transformers + torch (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


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

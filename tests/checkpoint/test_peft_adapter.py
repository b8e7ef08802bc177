"""Our LoRA adapters in PEFT's format: peft loads them onto the transformers base with the
logits of our merged export, under the names and config peft itself writes."""

import json

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from hf_fixtures import hf_model, make_checkpoint
from selflengthen_jax.checkpoint.hf_export import export_hf
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.checkpoint.peft_adapter import PEFT_CONFIG, export_peft
from selflengthen_jax.models.lora import init_lora, merge_lora
from selflengthen_jax.models.transformer import PROJECTIONS

TOKENS = torch.tensor(np.random.default_rng(0).integers(0, 128, (2, 24)))
RANK, ALPHA = 4, 8.0


def trained_looking(cfg, targets):
    """Fresh adapters with a non-zero B, so the adapter changes the logits."""
    rng = np.random.default_rng(1)
    return {k: {"a": v["a"], "b": jnp.asarray(0.2 * rng.standard_normal(v["b"].shape), jnp.float32)}
            for k, v in init_lora(cfg, RANK, 0, targets).items()}


@pytest.mark.parametrize("kind,targets", [("qwen2", PROJECTIONS), ("llama", ("wq", "wv", "w_down"))])
def test_peft_loads_our_adapter_with_the_logits_of_our_merged_export(tmp_path, kind, targets):
    base = make_checkpoint(tmp_path / kind, kind, tie_word_embeddings=False)
    cfg = read_config(base)
    adapters = trained_looking(cfg, targets)
    adapter_dir = export_peft(tmp_path / "peft", adapters, RANK, ALPHA, str(base))
    merged = export_hf(merge_lora(load_params(base, cfg), adapters, ALPHA / RANK), cfg, tmp_path / "merged")
    with torch.no_grad():
        want = hf_model(merged)(TOKENS).logits.numpy()
        plain = hf_model(base)(TOKENS).logits.numpy()
        model = peft.PeftModel.from_pretrained(hf_model(base), adapter_dir).eval()
        got = model(TOKENS).logits.numpy()
    diff = float(np.abs(got - want).max())
    print(f"{kind}: max |peft - merged export| = {diff:.2e}")
    assert np.abs(got - plain).max() > 1e-2  # the adapter really acts
    assert diff < 1e-4
    # our file holds exactly the keys peft itself would save for this adapter
    ours = set(peft.utils.load_peft_weights(str(adapter_dir)))
    assert ours == set(peft.get_peft_model_state_dict(model))
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in ours


def test_the_config_is_a_plain_causal_lm_lora_config(tmp_path):
    cfg = read_config(make_checkpoint(tmp_path / "q", "qwen2"))
    export_peft(tmp_path / "peft", trained_looking(cfg, ("wq", "w_up")), RANK, ALPHA, "org/base")
    loaded = peft.LoraConfig.from_pretrained(str(tmp_path / "peft"))
    assert (loaded.r, loaded.lora_alpha, loaded.use_rslora) == (RANK, ALPHA, False)
    assert loaded.task_type == "CAUSAL_LM" and loaded.base_model_name_or_path == "org/base"
    assert set(loaded.target_modules) == {"q_proj", "up_proj"}
    assert json.loads((tmp_path / "peft" / PEFT_CONFIG).read_text())["peft_type"] == "LORA"

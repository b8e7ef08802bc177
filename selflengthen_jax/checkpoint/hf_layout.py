"""How each of our parameters maps onto Hugging Face tensor names and layouts.

HF stores projections as torch Linear weights [out, in]; we store [in..., out...] with
heads split out (e.g. wq: [embed, heads, head_dim]) and layers stacked. A `Mapping` says
which HF tensor holds a leaf, and how many of our (per-layer) dims come from HF's
*input* side, so a slice of our array can be translated into a slice of HF's.
"""

from __future__ import annotations

import dataclasses

from selflengthen_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Mapping:
    hf_name: str          # with "{i}" for the layer index when stacked
    stacked: bool         # our leaf has a leading layers axis
    n_in: int             # of our per-layer dims, how many form HF's input (last) dim;
                          # -1: not a matrix, HF holds our dims flattened as one vector/as is


LAYER = "model.layers.{i}."
# Our projection -> its torch module inside a decoder layer (also what PEFT and vLLM name
# LoRA targets by).
PROJECTION_MODULES = {
    "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
    "w_down": "mlp.down_proj",
}
_N_IN = {"wo": 2}  # of our per-layer dims, how many are HF's input (q/k/v/MLP: 1)


def leaf_mappings(cfg: ModelConfig) -> dict[tuple[str, ...], Mapping]:
    """Our params-tree path -> where it lives in a Hugging Face checkpoint."""
    lay = LAYER
    m = {
        ("embed",): Mapping("model.embed_tokens.weight", False, -1),
        ("final_norm",): Mapping("model.norm.weight", False, -1),
        ("layers", "attn_norm"): Mapping(lay + "input_layernorm.weight", True, -1),
        ("layers", "mlp_norm"): Mapping(lay + "post_attention_layernorm.weight", True, -1),
        **{("layers", name): Mapping(lay + module + ".weight", True, _N_IN.get(name, 1))
           for name, module in PROJECTION_MODULES.items()},
    }
    if cfg.attention_bias:
        for p in "qkv":
            m[("layers", f"b{p}")] = Mapping(lay + f"self_attn.{p}_proj.bias", True, -1)
    if not cfg.tie_word_embeddings:
        m[("lm_head",)] = Mapping("lm_head.weight", False, 1)
    return m

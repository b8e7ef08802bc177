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


def leaf_mappings(cfg: ModelConfig) -> dict[tuple[str, ...], Mapping]:
    """Our params-tree path -> where it lives in a Hugging Face checkpoint."""
    lay = "model.layers.{i}."
    m = {
        ("embed",): Mapping("model.embed_tokens.weight", False, -1),
        ("final_norm",): Mapping("model.norm.weight", False, -1),
        ("layers", "attn_norm"): Mapping(lay + "input_layernorm.weight", True, -1),
        ("layers", "mlp_norm"): Mapping(lay + "post_attention_layernorm.weight", True, -1),
        ("layers", "wq"): Mapping(lay + "self_attn.q_proj.weight", True, 1),
        ("layers", "wk"): Mapping(lay + "self_attn.k_proj.weight", True, 1),
        ("layers", "wv"): Mapping(lay + "self_attn.v_proj.weight", True, 1),
        ("layers", "wo"): Mapping(lay + "self_attn.o_proj.weight", True, 2),
        ("layers", "w_gate"): Mapping(lay + "mlp.gate_proj.weight", True, 1),
        ("layers", "w_up"): Mapping(lay + "mlp.up_proj.weight", True, 1),
        ("layers", "w_down"): Mapping(lay + "mlp.down_proj.weight", True, 1),
    }
    if cfg.attention_bias:
        for p in "qkv":
            m[("layers", f"b{p}")] = Mapping(lay + f"self_attn.{p}_proj.bias", True, -1)
    if not cfg.tie_word_embeddings:
        m[("lm_head",)] = Mapping("lm_head.weight", False, 1)
    return m

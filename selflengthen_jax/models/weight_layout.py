"""The layout the engine reads its weights in, chosen once per platform.

* `stacked`: the params as loaded, each layer weight stacked on a leading `layers` axis
  and run under `lax.scan`. The engine shares them with training: no second copy.
* `per_layer`: one dict of buffers per layer, run unrolled, with the output projection
  materialised as [embed, vocab]. XLA:CPU copies a scanned layer's weight slice before
  every matmul that reads it, and multiplies by a transposed tied embedding at about
  two-thirds speed; at decode batch sizes those copies cost as much as the matmuls.
  Unrolled, every matmul reads its weight in place, at the price of a second copy of
  the weights (the loaded params stay for training).

`choose` is the one place the `engine.weight_layout` setting is resolved (`auto`:
`per_layer` on CPU, `stacked` elsewhere). A layout knows its tree (`tree`: logical axes
and shapes, which the planner and the rehearsal size and shard) and how to build it
from the loaded params (`convert`; `parallel.placement.arrange_weights` runs that on
device, shard by shard). `forward` runs either: it unrolls when `params["layers"]` is a list.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params, abstract_model, lm_head, logical_axes

SETTINGS = ("auto", "stacked", "per_layer")


def per_layer(params: Params, cfg: ModelConfig) -> Params:
    """Stacked params (or their logical-axis tree, whose leaves are tuples of names) in
    the per-layer layout."""
    def take(leaf: Any, i: int) -> Any:
        return leaf[1:] if isinstance(leaf, tuple) else leaf[i]

    stacked = params["layers"]
    out = {k: v for k, v in params.items() if k != "layers"}
    out["layers"] = [{k: take(v, i) for k, v in stacked.items()} for i in range(cfg.num_layers)]
    head = params.get("lm_head", params["embed"])
    out["lm_head"] = ("embed", "vocab") if isinstance(head, tuple) else lm_head(params, cfg)
    return out


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    name: str   # "stacked" or "per_layer"

    @property
    def copies(self) -> bool:
        """Whether the engine holds its own copy of the weights in this layout."""
        return self.name == "per_layer"

    def tree(self, cfg: ModelConfig) -> tuple[Params, Params]:
        """(logical axes, shapes) of the params in this layout, from the config alone."""
        axes, shapes = logical_axes(cfg), nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()
        if not self.copies:
            return axes, shapes
        return per_layer(axes, cfg), jax.eval_shape(lambda p: per_layer(p, cfg), shapes)

    def convert(self, params: Params, cfg: ModelConfig) -> Params:
        """The loaded (stacked) params in this layout."""
        return per_layer(params, cfg) if self.copies else params


STACKED, PER_LAYER = WeightLayout("stacked"), WeightLayout("per_layer")


def choose(setting: str, platform: str) -> WeightLayout:
    """The layout `engine.weight_layout=setting` means on `platform` ("cpu", "gpu", "tpu")."""
    if setting not in SETTINGS:
        raise ValueError(f"engine.weight_layout={setting!r} is not known; choose one of {', '.join(SETTINGS)}")
    if setting == "auto":
        return PER_LAYER if platform == "cpu" else STACKED
    return WeightLayout(setting)

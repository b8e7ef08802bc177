"""Per-device memory for a run on a mesh that need not exist here (a v5p-64, 8×H100).

Before renting a pod slice the question is which sharding strategy lets a 7B or 72B
model train and generate without running out of device memory. The planner answers it
from shapes alone: the abstract parameter tree (`abstract_model`, no weights), the
logical axis names, the strategy's rules and a `jax.sharding.AbstractMesh`, so every
shard shape is exactly what `spec_for` would give on the real mesh (dimensions the mesh
does not divide stay replicated, as there).

What is counted, per device:
  * weights: the model as loaded (`model.param_dtype`). The loop keeps the base model
    loaded across roles and the trainer never donates it, so full fine-tuning holds
    it next to its float32 master copy;
  * trainable: float32 master weights (full fine-tuning) or the float32 LoRA adapters;
    optimizer: AdamW's two float32 moments of the trainable tree; grads: one float32
    gradient tree (two with gradient accumulation: the running sum and the micro-batch's);
  * activations (training): what the TPU compiler keeps, read from its buffer
    assignment (`training_activations`). Each remat policy keeps some of each layer's
    tensors for all layers; on top, one layer is rematerialised and differentiated at a
    time, and its MLP backward, attention backward or the loss, whichever is larger,
    sets the peak;
  * KV cache and workspace (generation): keys and values for every slot at
    `max_prefill_len + max_new_tokens` (rounded up to whole cache blocks, as the engine
    allocates), plus a full-slots prefill (which returns every layer's keys/values at
    once) and the per-slot sampling state;
  * FSDP gathers (workspace): with weights sharded over `fsdp`, XLA all-gathers one
    layer at a time inside the layer scan: about one gathered layer (and, in the
    engine, the whole output head for the logits) for a forward pass and three (forward and backward gathers plus the unreduced gradient) for a
    training step, as measured on XLA:CPU.

Transient buffers of the optimizer update and XLA's own fragmentation are not modelled;
`headroom` (default 90% of HBM usable) leaves room for them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding

from selflengthen_jax.config import Config, EngineSection, MeshSection, TrainSection
from selflengthen_jax.models.attention import Backend, choose
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.lora import adapter_shapes, lora_logical_axes
from selflengthen_jax.models import weight_layout
from selflengthen_jax.models.transformer import abstract_model, logical_axes
from selflengthen_jax.parallel.mesh import AXES, generation_layout, mesh_shape, per_host
from selflengthen_jax.parallel.peaks import DEVICES, GiB, DeviceSpec, device_spec
from selflengthen_jax.parallel.rules import STRATEGIES, Rules, spec_for, strategy_rules
from selflengthen_jax.sampling.engine import cache_length, piece_tokens, prefill_rows
from selflengthen_jax.training.step import LOSS_CHUNK

TRAIN_MODES = ("lora", "full")
AnyMesh = Mesh | AbstractMesh


# -- which layouts to consider --------------------------------------------------------

def _tensor_sizes(num_devices: int, num_heads: int) -> list[int]:
    """Tensor-axis sizes that divide both the devices and the attention heads."""
    return [t for t in range(1, num_devices + 1) if num_devices % t == 0 and num_heads % t == 0]


def builtin_layout(strategy: str, num_devices: int, num_heads: int) -> MeshSection:
    """The mesh a built-in strategy gets on `num_devices` devices.

    dp: all devices on `data`; fsdp: all on `fsdp`; tp: the widest tensor axis the
    heads allow, the rest data parallel; fsdp_tp: a tensor axis of about sqrt(devices)
    (8 on a 64-chip slice, 2 on 8 devices), the rest fsdp.
    """
    n = num_devices
    if strategy == "dp":
        return MeshSection(data=n, fsdp=1, tensor=1, strategy="dp")
    if strategy == "fsdp":
        return MeshSection(data=1, fsdp=n, tensor=1, strategy="fsdp")
    sizes = _tensor_sizes(n, num_heads)
    if strategy == "tp":
        t = sizes[-1]
        return MeshSection(data=n // t, fsdp=1, tensor=t, strategy="tp")
    if strategy == "fsdp_tp":
        t = max(s for s in sizes if s * s <= n)
        return MeshSection(data=1, fsdp=n // t, tensor=t, strategy="fsdp_tp")
    raise ValueError(f"unknown sharding strategy {strategy!r}; built in: {', '.join(STRATEGIES)}")


def abstract_mesh(shape: Sequence[int]) -> AbstractMesh:
    """A device-free mesh with the project's axes: shard shapes without the hardware."""
    return AbstractMesh(tuple(shape), AXES)


# -- bytes of sharded values ------------------------------------------------------------

def shard_shape(names: tuple[str | None, ...], shape: tuple[int, ...], mesh: AnyMesh,
                rules: Rules) -> tuple[int, ...]:
    """The shape one device holds of a value with logical `names`, sharded by `rules`."""
    return NamedSharding(mesh, spec_for(names, shape, mesh, rules)).shard_shape(shape)


def shard_bytes(names: tuple[str | None, ...], shape: tuple[int, ...], dtype: Any,
                mesh: AnyMesh, rules: Rules) -> int:
    """Bytes one device holds of a value with logical `names`, sharded by `rules`."""
    return math.prod(shard_shape(names, shape, mesh, rules)) * jnp.dtype(dtype).itemsize


def tree_bytes(axes_tree: Any, shapes_tree: Any, mesh: AnyMesh, rules: Rules,
               dtype: Any = None) -> int:
    """Per-device bytes of a tree; `dtype` overrides the leaves' own (e.g. float32 moments)."""
    sizes = jax.tree.map(
        lambda names, x: shard_bytes(names, tuple(x.shape), dtype or x.dtype, mesh, rules),
        axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, tuple))
    return sum(jax.tree.leaves(sizes))


@functools.lru_cache(maxsize=32)
def _param_tree(cfg: ModelConfig) -> tuple[Any, Any]:
    shapes = nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()
    return logical_axes(cfg), shapes


def param_bytes(cfg: ModelConfig, mesh: AnyMesh, rules: Rules, dtype: Any = None) -> int:
    """Per-device bytes of the model's weights (in `dtype`, default `cfg.param_dtype`)."""
    axes, shapes = _param_tree(cfg)
    return tree_bytes(axes, shapes, mesh, rules, dtype)


def _without(axes: Any, axis: str) -> Any:
    """A rule's mesh axes with `axis` removed (None when nothing is left)."""
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    kept = tuple(a for a in names if a != axis)
    return None if not kept else kept[0] if len(kept) == 1 else kept


def _gathered_rules(mesh: AnyMesh, rules: Rules) -> Rules | None:
    """The rules of weights as FSDP all-gathers them for compute; None without fsdp."""
    unsharded = {name: _without(axes, "fsdp") for name, axes in rules.items()}
    return None if mesh.shape["fsdp"] == 1 or unsharded == rules else unsharded


def gathered_layer_bytes(cfg: ModelConfig, mesh: AnyMesh, rules: Rules, dtype: Any) -> int:
    """One decoder layer's weights as FSDP all-gathers them for compute (0 without fsdp)."""
    unsharded = _gathered_rules(mesh, rules)
    if unsharded is None:
        return 0
    axes, shapes = _param_tree(cfg)
    return tree_bytes(axes["layers"], shapes["layers"], mesh, unsharded, dtype) // cfg.num_layers


def gathered_head_bytes(cfg: ModelConfig, mesh: AnyMesh, rules: Rules, dtype: Any) -> int:
    """The [embed, vocab] output head as the engine's logits gather it over fsdp (0
    without fsdp): the TPU compiler all-gathers the whole head for each sampling step."""
    unsharded = _gathered_rules(mesh, rules)
    if unsharded is None:
        return 0
    return shard_bytes(("embed", "vocab"), (cfg.hidden_size, cfg.vocab_size), dtype, mesh, unsharded)


def relaid_embedding_bytes(cfg: ModelConfig, mesh: AnyMesh, rules: Rules, dtype: Any) -> int:
    """What the TPU compiler adds in the decode loop for a tied embedding that fsdp shards:
    two copies of the local shard in other layouts (it is stored [vocab, embed] and read
    transposed as the head). Read from the buffer assignment of qwen2-0.5b's decode, fsdp 4
    on v5e:2x2: two [151936, 224] bf16 buffers; none under dp or tp, none when untied."""
    if not cfg.tie_word_embeddings or _gathered_rules(mesh, rules) is None:
        return 0
    return 2 * shard_bytes(("vocab", "embed"), (cfg.vocab_size, cfg.hidden_size), dtype, mesh, rules)


TPU_LANES = 128  # the minor dimension of a TPU tile


def unaligned_layer_bytes(cfg: ModelConfig, mesh: AnyMesh, rules: Rules, dtype: Any) -> int:
    """Stacked layer weights whose per-device shard has a minor dimension that is not a
    multiple of the TPU's 128 lanes. The TPU compiler gives such an argument a transposed
    layout and copies the whole stack into the decode loop's own (read from the buffer
    assignment of qwen2-72b's decode under tp 4: `w_gate` and `w_up`, [80, 8192, 7392]
    each, 18.1 GiB; the aligned stacks of qwen2-7b and llama-3.1-8b are read in place)."""
    axes, shapes = _param_tree(cfg)
    total = 0
    for name, names in axes["layers"].items():
        shape = tuple(shapes["layers"][name].shape)
        if shard_shape(names, shape, mesh, rules)[-1] % TPU_LANES:
            total += shard_bytes(names, shape, dtype, mesh, rules)
    return total


def adapter_bytes(cfg: ModelConfig, rank: int, mesh: AnyMesh, rules: Rules) -> int:
    """Float32 LoRA adapters on every projection, sharded by their logical names."""
    return tree_bytes(lora_logical_axes(), adapter_shapes(cfg, rank), mesh, rules)


# -- what a run holds -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Breakdown:
    """Bytes per device, by what holds them."""

    weights: int = 0
    trainable: int = 0
    optimizer: int = 0
    grads: int = 0
    activations: int = 0
    kv_cache: int = 0
    workspace: int = 0

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclasses.dataclass(frozen=True)
class _Acts:
    """Per-device bytes of one layer's tensors for `rows` sequences of `seq` tokens."""

    x: int        # [b, s, embed]: the residual stream, a layer's input
    qkv: int      # q, k, v projections
    attn: int     # attention output, [b, s, heads, head_dim]
    mlp: int      # one [b, s, mlp] tensor
    scores: int   # float32 attention scores alive at once
    kept_scores: int  # float32 attention scores kept for the backward pass
    mask: int     # bool [b, s, t]

    @property
    def linear_working(self) -> int:
        """Norm outputs, rope'd q/k, attention output, gate/up/activation of one layer."""
        return 4 * self.x + 2 * self.qkv + self.attn + 3 * self.mlp


def _acts(cfg: ModelConfig, rows: int, seq: int, scores: tuple[int, int], dtype: Any,
          mesh: AnyMesh, rules: Rules) -> _Acts:
    """`scores`: (alive, kept) score entries per row and head (see `score_entries`)."""
    b = functools.partial(shard_bytes, mesh=mesh, rules=rules)
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads = ("batch", None, "heads", "head_dim")
    kv = ("batch", None, "kv_heads", "head_dim")
    return _Acts(
        x=b(("batch", None, None), (rows, seq, cfg.hidden_size), dtype),
        qkv=b(heads, (rows, seq, H, Dh), dtype) + 2 * b(kv, (rows, seq, K, Dh), dtype),
        attn=b(heads, (rows, seq, H, Dh), dtype),
        mlp=b(("batch", None, "mlp"), (rows, seq, cfg.intermediate_size), dtype),
        scores=b(("batch", "heads", None), (rows, H, scores[0]), jnp.float32),
        kept_scores=b(("batch", "heads", None), (rows, H, scores[1]), jnp.float32),
        mask=b(("batch", None), (rows, scores[0]), jnp.bool_))


def _saved_per_layer(a: _Acts, remat: str) -> int:
    """What the backward pass keeps from each layer's forward under a remat policy."""
    if remat == "full":
        return a.x
    kept_dots = a.x + a.qkv + 2 * a.x + 2 * a.mlp          # projections' outputs
    if remat == "dots_no_batch":
        return kept_dots
    if remat == "dots":                                       # + the attention einsums
        return kept_dots + a.kept_scores + a.attn
    return a.x + a.linear_working + 2 * a.kept_scores       # none: everything


def training_activations(cfg: ModelConfig, rows: int, seq: int, remat: str,
                         mesh: AnyMesh, rules: Rules, attention: Backend = Backend()) -> int:
    """Peak activation bytes per device of one micro-batch's forward + backward, with
    `attention`'s score buffers (none for the fused kernels).

    What each remat policy keeps of every layer stays alive for the whole backward
    pass. It is counted twice: the compiler's `memory_analysis()` temp exceeds its own
    buffer-assignment dump (which shows one copy at the peak) by about that much
    (qwen2-7b LoRA at 16k tokens on v5p-16, 4k on v5e-16: within 7% with it, 25-35%
    under without). A measured fit, not an explained one. On top comes the largest of
    three phases that do not overlap in time: the MLP backward of the layer being
    differentiated (gate, up, activation and their gradients: five [rows, seq, mlp]
    tensors and seven of the residual stream's size, as the dump's peak shows), its
    attention backward (one query block's float32 scores and their gradient, with q/k/v
    and the output; the blocks' score buffers are reused, never all alive; for the fused
    splash backward, its dq partials, one per KV block), or the loss
    (two float32 [chunk, vocab] logit buffers).
    """
    a = _acts(cfg, rows, seq, attention.score_entries(seq), cfg.compute_dtype, mesh, rules)
    dq_partials = shard_bytes(("batch", "heads", None),
                              (rows, cfg.num_heads, attention.backward_partial_positions(seq) * cfg.head_dim),
                              cfg.compute_dtype, mesh, rules)
    mlp_phase = 5 * a.mlp + 7 * a.x
    attention_phase = 2 * a.scores + dq_partials + a.qkv + a.attn + 4 * a.x
    loss = 2 * shard_bytes(("batch", None, "vocab"), (rows, min(seq, LOSS_CHUNK), cfg.vocab_size),
                           jnp.float32, mesh, rules)
    return 2 * cfg.num_layers * _saved_per_layer(a, remat) + max(mlp_phase, attention_phase, loss) + a.mask


def training_breakdown(cfg: ModelConfig, train: TrainSection, mode: str, mesh: AnyMesh,
                       rules: Rules, rows: int | None = None, seq: int | None = None,
                       attention: Backend = Backend()) -> Breakdown:
    """One training step's memory; `rows` global sequences (default: batch_size per
    data shard), `seq` tokens each (default: cutoff_len). `cfg` carries the weights'
    dtype; the step computes in `train.compute_dtype`; `attention` is the training
    mesh's backend (`attention_for`)."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose from {', '.join(TRAIN_MODES)}")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = train.batch_size * shards if rows is None else rows
    seq = train.cutoff_len if seq is None else seq
    trainable = (adapter_bytes(cfg, train.lora.rank, mesh, rules) if mode == "lora"
                 else param_bytes(cfg, mesh, rules, jnp.float32))
    acts_cfg = dataclasses.replace(cfg, compute_dtype=train.compute_dtype)
    gathers = 2 * gathered_layer_bytes(cfg, mesh, rules, train.compute_dtype)
    if mode == "full":
        gathers += gathered_layer_bytes(cfg, mesh, rules, jnp.float32)
    return Breakdown(
        weights=param_bytes(cfg, mesh, rules), trainable=trainable, optimizer=2 * trainable,
        grads=trainable * (2 if train.grad_accum > 1 else 1),
        activations=training_activations(acts_cfg, rows, seq, train.remat, mesh, rules, attention),
        workspace=gathers)


def engine_copy_bytes(cfg: ModelConfig, layout: weight_layout.WeightLayout, mesh: AnyMesh, rules: Rules) -> int:
    """Per-device bytes of the engine's own copy of the weights in `layout` (0 when it
    shares the loaded params)."""
    return tree_bytes(*layout.tree(cfg), mesh, rules) if layout.copies else 0


def attention_for(impl: str, platform: str) -> Backend:
    """The backend (kernels, cache layout) a run with `model.attention_impl=impl` uses on
    `platform`, for its shapes: the planner works on abstract meshes, so it is unsharded."""
    return choose(impl, platform)


def kernel_breakdowns(cfg: ModelConfig, engine: EngineSection, mesh: AnyMesh, rules: Rules,
                      platform: str, attention_impl: str = "auto") -> dict[str, Breakdown]:
    """The engine's memory while each of its kernels runs: weights and the slots' KV
    cache, plus the kernel's own workspace: for "prefill", the largest prefill the
    engine admits (`prefill_rows` rows, bounded by `engine.prefill_tokens`); for
    "decode", the sampling state; for "piece", the largest prompt piece (one row of
    `piece_tokens`, over its slot's layer gathered once) and the sampling state of the
    decode step it carries under `engine.mixed_batches`.

    The cache holds `compute_dtype` keys/values (the engine's default cache dtype). On a
    `platform` where the engine decodes from a per-layer copy, the weights count twice
    (the loaded params stay for training). On TPU with XLA attention the compiler keeps a
    second copy of the cache inside the decode loop (measured with `--rehearse`: temp = one
    cache + a little); the backend says how many (`decode_cache_copies`).
    """
    b = functools.partial(shard_bytes, mesh=mesh, rules=rules)
    V = cfg.vocab_size
    n, P = engine.slots, engine.max_prefill_len
    rows = prefill_rows(engine)
    attention = attention_for(attention_impl, platform)
    layout = attention.layout

    def kv_bytes(slots: int, length: int) -> int:
        (k_axes, v_axes), (k_shape, v_shape) = layout.axes(), layout.shapes(cfg, slots, length)
        return b(k_axes, k_shape, cfg.compute_dtype) + b(v_axes, v_shape, cfg.compute_dtype)

    cache_len = cache_length(engine)
    cache = kv_bytes(n, cache_len)
    a = _acts(cfg, rows, P, (attention.forward_score_entries(P), 0), cfg.compute_dtype, mesh, rules)
    prefill = (kv_bytes(rows, P)   # every layer's k/v
               + a.linear_working + 2 * a.scores + a.mask)
    sampling = 2 * b(("batch", None), (n, V), jnp.bool_) + 3 * b(("batch", None), (n, V), jnp.float32)
    # The decode loop's sampling step gathers the whole output head over fsdp; the
    # prefill, whose rows `forward` pins to the batch axes, does not (measured with
    # --rehearse on qwen2-0.5b, fsdp 4 on v5e:2x2: 0.45 GiB compiled, 0.44 planned without it).
    decode = (sampling + cache * attention.decode_cache_copies(platform)
              + gathered_head_bytes(cfg, mesh, rules, cfg.compute_dtype)
              + relaid_embedding_bytes(cfg, mesh, rules, cfg.compute_dtype)
              + (unaligned_layer_bytes(cfg, mesh, rules, cfg.param_dtype) if platform == "tpu" else 0))
    c = piece_tokens(engine)
    pa = _acts(cfg, 1, c, (attention.piece_score_entries(c, cache_len), 0), cfg.compute_dtype,
               mesh, rules)
    # A decode step riding the piece is one step, not a loop: the compiler keeps no copy of
    # the cache or of the gathered head for it (qwen2-0.5b, fsdp 4 on v5e:2x2: temp 34 MiB
    # against the decode chunk's 552), so it adds only its sampling state.
    piece = (kv_bytes(1, cache_len) // cfg.num_layers   # the row's slot, one layer
             + pa.linear_working + 2 * pa.scores + sampling)
    gathers = gathered_layer_bytes(cfg, mesh, rules, cfg.compute_dtype)
    weights = param_bytes(cfg, mesh, rules) + engine_copy_bytes(
        cfg, weight_layout.choose(engine.weight_layout, platform), mesh, rules)
    return {kernel: Breakdown(weights=weights, kv_cache=cache, workspace=work + gathers)
            for kernel, work in (("prefill", prefill), ("decode", decode), ("piece", piece))}


def generation_breakdown(cfg: ModelConfig, engine: EngineSection, mesh: AnyMesh,
                         rules: Rules, platform: str, attention_impl: str = "auto") -> Breakdown:
    """The engine's peak: the larger of its kernels' (`kernel_breakdowns`)."""
    return max(kernel_breakdowns(cfg, engine, mesh, rules, platform, attention_impl).values(),
               key=lambda k: k.total)


# -- the plan ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StrategyPlan:
    name: str
    mesh: tuple[int, int, int]                 # training mesh (data, fsdp, tensor)
    generation_mesh: tuple[int, int, int] | None
    generation: Breakdown | None               # None: the layout does not fit one host
    training: dict[str, Breakdown]             # by mode


@dataclasses.dataclass(frozen=True)
class Plan:
    description: str
    device: DeviceSpec
    num_devices: int
    usable_bytes: int
    train_mode: str                            # the configured mode (marked in the table)
    strategies: tuple[StrategyPlan, ...]

    def strategy(self, name: str) -> StrategyPlan:
        return next(s for s in self.strategies if s.name == name)

    def fits(self, name: str, workload: str) -> bool:
        """Whether `workload` ("generation", "lora", "full") fits per device under `name`."""
        s = self.strategy(name)
        b = s.generation if workload == "generation" else s.training[workload]
        return b is not None and b.total <= self.usable_bytes


def _layouts(cfg: Config, model_cfg: ModelConfig, num_devices: int) -> list[tuple[str, MeshSection]]:
    """The built-in strategies, plus the configured mesh when it is not one of them."""
    out = [(s, builtin_layout(s, num_devices, model_cfg.num_heads)) for s in STRATEGIES]
    configured = cfg.mesh
    try:
        sizes = mesh_shape(configured, num_devices)
    except ValueError:
        return out  # the configured mesh is for another device count
    default = builtin_layout(configured.strategy, num_devices, model_cfg.num_heads)
    if configured.rules or sizes != mesh_shape(default, num_devices):
        out.append((f"config:{configured.strategy}", configured))
    return out


def _generation_mesh(layout: MeshSection, spec: DeviceSpec,
                     num_devices: int) -> tuple[AbstractMesh, Rules] | None:
    """The mesh the engine builds (`generation_layout`: one replica per host of
    `spec.devices_per_host` devices, or the global mesh); None if it cannot be built."""
    host = min(num_devices, spec.devices_per_host)
    gen = generation_layout(layout, num_devices, host)
    try:
        shape = mesh_shape(gen, host if per_host(layout, num_devices, host) else num_devices)
    except ValueError:
        return None
    return abstract_mesh(shape), strategy_rules(gen.strategy, gen.rules)   # generation's own table


def plan(cfg: Config, model_cfg: ModelConfig, device_kind: str, num_devices: int,
         headroom: float = 0.9) -> Plan:
    """Per-device memory of generation and LoRA/full training under every strategy.

    `device_kind` is a table name ("v5p", "h100") or a jax `device_kind` string. The
    weights' and compute dtypes come from `cfg.model`, overriding `model_cfg`'s.
    """
    spec = device_spec(device_kind)
    if spec is None:
        raise ValueError(f"unknown device {device_kind!r}; known: {', '.join(DEVICES)}")
    mcfg = dataclasses.replace(model_cfg, param_dtype=cfg.model.param_dtype,
                               compute_dtype=cfg.model.compute_dtype)
    strategies = []
    attention = attention_for(cfg.model.attention_impl, spec.platform)
    for name, layout in _layouts(cfg, mcfg, num_devices):
        layout = dataclasses.replace(layout, replica_per_host=cfg.mesh.replica_per_host,
                                     generation=cfg.mesh.generation)
        rules = strategy_rules(layout.strategy, layout.rules)
        mesh = abstract_mesh(mesh_shape(layout, num_devices))
        gen = _generation_mesh(layout, spec, num_devices)
        strategies.append(StrategyPlan(
            name=name, mesh=tuple(mesh.shape.values()),
            generation_mesh=None if gen is None else tuple(gen[0].shape.values()),
            generation=None if gen is None else generation_breakdown(
                mcfg, cfg.engine, *gen, platform=spec.platform, attention_impl=cfg.model.attention_impl),
            training={m: training_breakdown(mcfg, cfg.train, m, mesh, rules, attention=attention)
                      for m in TRAIN_MODES}))
    description = (f"{mcfg.model_type} {mcfg.num_params() / 1e9:.2f}B params, "
                   f"{mcfg.param_dtype} weights, {mcfg.compute_dtype} generation / "
                   f"{cfg.train.compute_dtype} training compute")
    return Plan(description, spec, num_devices, int(spec.hbm_bytes * headroom), cfg.train.mode,
                tuple(strategies))


# -- the table --------------------------------------------------------------------------

def fmt_bytes(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= 2 ** 20:
        return f"{n / 2 ** 20:.1f} MiB"
    return f"{n / 2 ** 10:.1f} KiB"


def _mesh_str(shape: tuple[int, int, int] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape))


def format_plan(p: Plan) -> str:
    """A markdown table: one row per strategy and workload, bytes per device, fit or not."""
    head = (f"Memory plan: {p.description}\n"
            f"on {p.num_devices} x {p.device.name} ({fmt_bytes(p.device.hbm_bytes)} each, "
            f"{fmt_bytes(p.usable_bytes)} usable); * = configured training mode\n\n")
    cols = ("strategy", "mesh d x f x t", "workload", "weights", "trainable", "optimizer",
            "grads", "activations", "KV cache", "workspace", "total / device", "fits")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def row(s: StrategyPlan, workload: str, mesh: tuple[int, int, int] | None,
            b: Breakdown | None) -> None:
        if b is None:
            lines.append(f"| {s.name} | {_mesh_str(mesh)} | {workload} | "
                         + " | ".join(["-"] * 8) + " | layout needs more than one host |")
            return
        fit = "yes" if b.total <= p.usable_bytes else f"NO ({b.total / p.usable_bytes:.1f}x)"
        cells = [b.weights, b.trainable, b.optimizer, b.grads, b.activations, b.kv_cache,
                 b.workspace]
        lines.append(f"| {s.name} | {_mesh_str(mesh)} | {workload} | "
                     + " | ".join(fmt_bytes(c) if c else "-" for c in cells)
                     + f" | {fmt_bytes(b.total)} | {fit} |")

    for s in p.strategies:
        row(s, "generation", s.generation_mesh, s.generation)
        for mode in TRAIN_MODES:
            mark = "*" if mode == p.train_mode else ""
            row(s, f"train {mode}{mark}", s.mesh, s.training[mode])
    return head + "\n".join(lines)

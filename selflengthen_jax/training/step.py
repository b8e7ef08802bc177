"""The jitted training step: masked next-token NLL, gradient accumulation, AdamW update.

The loss is the mean NLL over response tokens of the whole step (all micro-batches,
all devices), as HF Trainer computes it. Logits are formed in sequence chunks from the
final hidden states and recomputed in the backward pass, so a 16k-token sequence never
holds [seq, vocab] float32 logits at once. In LoRA mode only the adapters are
differentiated and carry optimizer state; the base params are a frozen argument.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import Params, forward, lm_head
from selflengthen_jax.parallel.rules import Rules, named
from selflengthen_jax.training.data import Batch
from selflengthen_jax.training.optimizer import to_master

LOSS_CHUNK = 1024  # sequence positions per logits chunk


class TrainState(NamedTuple):
    step: jax.Array       # int32 scalar: optimizer steps taken
    trainable: Any        # adapters (LoRA) or float32 params (full fine-tuning)
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the step computes; hashable so it can be a static jit argument."""

    model: ModelConfig
    lora_scale: float | None = None   # None: full fine-tuning
    remat: str = "none"
    attention_impl: str = "xla"
    loss_chunk: int = LOSS_CHUNK
    lora_dropout: float = 0.0         # PEFT's lora_dropout, on each adapter's input
    dropout_seed: int = 0             # masks derive from (seed, step, micro-batch): resumable
    activation_sharding: Any = None   # the residual stream's [rows, seq, hidden] sharding

    @property
    def is_lora(self) -> bool:
        return self.lora_scale is not None


def _chunk_size(seq: int, target: int) -> int:
    c = target
    while seq % c:
        c //= 2
    return c


def _nll_sum(hidden: jax.Array, head: jax.Array, targets: jax.Array,
             weights: jax.Array) -> jax.Array:
    logits = jnp.einsum("bsd,dv->bsv", hidden, head, preferred_element_type=jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - picked) * weights)


def token_nll(hidden: jax.Array, head: jax.Array, targets: jax.Array, weights: jax.Array,
              chunk: int = LOSS_CHUNK) -> jax.Array:
    """Sum over positions of weights * NLL(targets), one sequence chunk of logits at a time."""
    b, s, _ = hidden.shape
    c = _chunk_size(s, chunk)
    if c == s:
        return _nll_sum(hidden, head, targets, weights)
    split = lambda x: x.reshape(b, s // c, c, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731
    body = jax.checkpoint(_nll_sum)  # keep only the chunk's inputs for the backward pass

    def add(total, xs):
        h, t, w = xs
        return total + body(h, head, t, w), None

    total, _ = jax.lax.scan(add, jnp.zeros((), jnp.float32),
                            (split(hidden), split(targets), split(weights)))
    return total


def micro_loss(trainable: Any, base: Params | None, micro: Batch, spec: StepSpec,
               key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum of response-token NLL, number of response tokens) for one micro-batch;
    `key` draws the LoRA dropout masks (unused without dropout)."""
    params, lora = (base, trainable) if spec.is_lora else (trainable, None)
    out = forward(params, spec.model, micro.tokens, positions=micro.positions,
                  segment_ids=micro.segment_ids, return_hidden=True, lora=lora,
                  lora_scale=spec.lora_scale or 1.0, lora_dropout=spec.lora_dropout,
                  dropout_key=key if spec.is_lora and spec.lora_dropout else None,
                  remat=spec.remat, attention_impl=spec.attention_impl,
                  activation_sharding=spec.activation_sharding)
    head = lm_head(params, spec.model).astype(out.hidden.dtype)
    nll = token_nll(out.hidden, head, micro.targets, micro.weights, spec.loss_chunk)
    return nll, jnp.sum(micro.weights)


def accumulate(trainable: Any, base: Params | None, batch: Batch, spec: StepSpec,
               step: jax.Array | int = 0) -> tuple[jax.Array, jax.Array, Any]:
    """Summed NLL, response-token count and gradient of the NLL sum over micro-batches."""
    grad_fn = jax.value_and_grad(partial(micro_loss, spec=spec), has_aux=True)
    step_key = jax.random.fold_in(jax.random.key(spec.dropout_seed), step)

    def one(micro: Batch, index: jax.Array | int) -> tuple[jax.Array, jax.Array, Any]:
        (nll, n), g = grad_fn(trainable, base, micro, key=jax.random.fold_in(step_key, index))
        return nll, n, g

    if batch.tokens.shape[0] == 1:
        return one(jax.tree.map(lambda x: x[0], batch), 0)
    zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
            jax.tree.map(jnp.zeros_like, trainable))
    total, _ = jax.lax.scan(lambda acc, m: (jax.tree.map(jnp.add, acc, one(*m)), None), zero,
                            (batch, jnp.arange(batch.tokens.shape[0])))
    return total


def train_step(state: TrainState, base: Params | None, batch: Batch, *, spec: StepSpec,
               optimizer: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    nll, n, grad_sum = accumulate(state.trainable, base, batch, spec, state.step)
    denom = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grad_sum)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    metrics = {"loss": nll / denom, "grad_norm": optax.global_norm(grads),
               "lr": schedule(state.step), "tokens": jnp.sum(batch.segment_ids != 0),
               "targets": n}
    new = TrainState(state.step + 1, optax.apply_updates(state.trainable, updates), opt_state)
    return new, metrics


# -- shardings and compilation ----------------------------------------------------------

def state_shardings(optimizer: optax.GradientTransformation, trainable_shardings: Any,
                    trainable_shapes: Any, mesh: Mesh) -> TrainState:
    """Optimizer moments shard like their params; counters are replicated."""
    rep = NamedSharding(mesh, P())
    abstract = jax.eval_shape(optimizer.init, trainable_shapes)
    opt = optax.tree_map_params(optimizer, lambda _, s: s, abstract, trainable_shardings,
                                transform_non_params=lambda _: rep,
                                is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return TrainState(rep, trainable_shardings, opt)


def batch_shardings(mesh: Mesh, rules: Rules, shape: tuple[int, int, int]) -> Batch:
    """[accum, rows, seq] arrays with rows split over the batch mesh axes."""
    s = named(mesh, rules, (None, "batch", None), shape)
    return Batch(s, s, s, s, s)


def fresh_state(source: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0: a float32 master copy of `source` (adapters or base params), zero moments."""
    trainable = to_master(source)
    return TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable))


def init_state(source: Any, optimizer: optax.GradientTransformation,
               shardings: TrainState) -> TrainState:
    return jax.jit(partial(fresh_state, optimizer=optimizer), out_shardings=shardings)(source)


def make_train_step(spec: StepSpec, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, shardings: TrainState, base_shardings: Any,
                    batch_sharding: Batch) -> Callable[..., tuple[TrainState, dict]]:
    """jit(train_step) with explicit shardings; the state's buffers are donated."""
    rep = NamedSharding(batch_sharding.tokens.mesh, P())
    fn = partial(train_step, spec=spec, optimizer=optimizer, schedule=schedule)
    return jax.jit(fn, in_shardings=(shardings, base_shardings, batch_sharding),
                   out_shardings=(shardings, rep), donate_argnums=(0,))

"""A decoder-only transformer for the Qwen2 and Llama 3 families (Flax NNX).

The NNX module owns the parameter tree: shapes, initialisers and the logical axis names
(`logical_axes` metadata) that `parallel/` maps to a mesh. The computation is a pure
function of a plain params dict (`forward`), so hot paths split the module once and
jit `forward` with explicit shardings. Layers are stacked on a leading `layers` axis and
run with `lax.scan`, so compile time does not grow with depth; `forward` also runs the
unrolled per-layer layout that decoding on CPU prefers (`models.weight_layout`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selflengthen_jax.models.attention import CPU, Backend
from selflengthen_jax.models.attention.cache import KVCache
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.rope import apply_rope, inverse_frequencies

Params = dict[str, Any]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# Projections LoRA may adapt: name -> (input dims, output dims) as param-shape slices.
PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype: Any,
           init: str = "normal") -> nnx.Param:
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class DecoderLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = jnp.dtype(cfg.param_dtype)
        self.attn_norm = _param(rngs, (L, D), ("layers", "norm"), dt, "ones")
        self.wq = _param(rngs, (L, D, H, Dh), ("layers", "embed", "heads", "head_dim"), dt)
        self.wk = _param(rngs, (L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.wv = _param(rngs, (L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim"), dt)
        if cfg.attention_bias:
            self.bq = _param(rngs, (L, H, Dh), ("layers", "heads", "head_dim"), dt, "zeros")
            self.bk = _param(rngs, (L, K, Dh), ("layers", "kv_heads", "head_dim"), dt, "zeros")
            self.bv = _param(rngs, (L, K, Dh), ("layers", "kv_heads", "head_dim"), dt, "zeros")
        self.wo = _param(rngs, (L, H, Dh, D), ("layers", "heads", "head_dim", "embed"), dt)
        self.mlp_norm = _param(rngs, (L, D), ("layers", "norm"), dt, "ones")
        self.w_gate = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), dt)
        self.w_up = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), dt)
        self.w_down = _param(rngs, (L, F, D), ("layers", "mlp", "embed"), dt)


class Transformer(nnx.Module):
    """Qwen2 / Llama 3 causal LM. Call it like a function, or use `forward` on its params."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = jnp.dtype(cfg.param_dtype)
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt)
        self.layers = DecoderLayers(cfg, rngs)
        self.final_norm = _param(rngs, (cfg.hidden_size,), ("norm",), dt, "ones")
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt)

    def params(self) -> Params:
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, tokens: jnp.ndarray, **kwargs: Any) -> jnp.ndarray:
        return forward(self.params(), self.cfg, tokens, **kwargs).logits


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The module with abstract (shape-only) params: free to build for a 72B config."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def logical_axes(cfg: ModelConfig) -> Params:
    """The params tree with each leaf replaced by its tuple of logical axis names."""
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()


def init_params(cfg: ModelConfig, seed: int = 0) -> Params:
    return Transformer(cfg, rngs=nnx.Rngs(seed)).params()


class Output(NamedTuple):
    logits: jnp.ndarray | None       # [b, s, vocab] float32 (None when hidden requested)
    hidden: jnp.ndarray | None       # [b, s, d] final-normed hidden states
    cache: KVCache | None            # updated cache (decode mode)
    kv: KVCache | None               # this call's keys/values per layer, cache layout (prefill mode)


def rms_norm(x: jnp.ndarray, w: jnp.ndarray, eps: float) -> jnp.ndarray:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * xf.astype(x.dtype)


def lm_head(params: Params, cfg: ModelConfig) -> jnp.ndarray:
    """The [embed, vocab] output projection: the embedding's transpose when tied, unless
    the params are in the per-layer layout, which holds it materialised."""
    if "lm_head" in params or not cfg.tie_word_embeddings:
        return params["lm_head"]
    return params["embed"].T


def _lora_delta(x: jnp.ndarray, adapter: dict | None, onehot: jnp.ndarray | None,
                scale: float, out_shape: tuple[int, ...],
                dropout: tuple[float, jax.Array] | None = None) -> jnp.ndarray | float:
    """x @ A[id] @ B[id] per token, adapters stacked [n_adapters, in, r] / [n, r, out].

    No per-row gather of the adapters: every token runs through all n adapters at once
    (one [in, n*r] and one [n*r, out] matmul, in x's dtype) and a mask `onehot` [b, s, n]
    keeps each token's own one. n is a handful (base, generator, extender) and r is
    small, so this costs a few percent of the base matmul where gathering [batch, in, r]
    copies per row per step would move the adapters through memory once per row.

    `dropout` (rate, key) drops the adapter's input as PEFT's lora_dropout does (inverted
    dropout: kept values scaled by 1 / (1 - rate)); the base projection sees all of x.
    """
    if adapter is None:
        return 0.0
    a, b = adapter["a"].astype(x.dtype), adapter["b"].astype(x.dtype)   # [n, in, r], [n, r, out]
    xf = x.reshape(*x.shape[:2], -1)
    if dropout is not None:
        rate, key = dropout
        keep = jax.random.bernoulli(key, 1.0 - rate, xf.shape)
        xf = jnp.where(keep, xf / (1.0 - rate), 0.0).astype(x.dtype)
    if a.shape[0] == 1:  # one adapter (training): no mask
        y = jnp.einsum("bsr,ro->bso", jnp.einsum("bsi,ir->bsr", xf, a[0]), b[0])
    else:
        y = jnp.einsum("bsnr,nro->bso", jnp.einsum("bsi,nir->bsnr", xf, a) * onehot[..., None], b)
    return (scale * y).reshape(*x.shape[:2], *out_shape)


def _adapter_mask(lora: Params | None, adapter_ids: jnp.ndarray | None, b: int, dtype: Any) -> jnp.ndarray | None:
    """[b, 1, n]: each row's adapter as a one-hot mask over the stacked adapters."""
    if lora is None:
        return None
    n_adapters = next(iter(lora.values()))["a"].shape[1]
    ids = jnp.zeros((b,), jnp.int32) if adapter_ids is None else adapter_ids
    return jax.nn.one_hot(ids, n_adapters, dtype=dtype)[:, None, :]


# attend(q, k, v, cache k, cache v, layer) -> (cache k, cache v, attention output, this
# layer's new keys/values or None): the one step of a layer that depends on how rows
# relate to the cache.
Attend = Callable[..., tuple[Any, Any, jnp.ndarray, Any]]


def _decoder(params: Params, cfg: ModelConfig, tokens: jnp.ndarray, positions: jnp.ndarray,
             onehot: jnp.ndarray | None, attend: Attend, cache: KVCache | None, lora: Params | None, *,
             lora_scale: float, lora_dropout: float, dropout_key: jax.Array | None, remat: str,
             attention: Backend) -> tuple[jnp.ndarray, KVCache | None, Any]:
    """The layers over tokens [b, s]: final-normed hidden states, the carried cache and
    the layers' stacked new keys/values (whatever `attend` returns per layer)."""
    cdt = jnp.dtype(cfg.compute_dtype)
    inv_freq = jnp.asarray(inverse_frequencies(cfg))
    embed = lambda t: attention.constrain(t, ("batch", "seq", "embed"))  # noqa: E731  the residual stream
    H, K, Dh, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size

    def layer(carry, xs):
        x, ck, cv = carry
        p, ad, li = xs
        ad = ad or {}
        w = lambda name: p[name].astype(cdt)  # noqa: E731
        drop = lambda name: None if dropout_key is None or not lora_dropout else (  # noqa: E731
            lora_dropout, jax.random.fold_in(jax.random.fold_in(dropout_key, li), PROJECTIONS.index(name)))
        delta = lambda name, inp, shape: _lora_delta(inp, ad.get(name), onehot,  # noqa: E731
                                                     lora_scale, shape, drop(name))
        h = rms_norm(x, p["attn_norm"].astype(cdt), cfg.rms_norm_eps)
        heads = lambda t: attention.constrain(t, ("batch", "seq", "heads", "head_dim"))  # noqa: E731
        q = heads(jnp.einsum("bsd,dhk->bshk", h, w("wq")) + delta("wq", h, (H, Dh)))
        k = heads(jnp.einsum("bsd,dhk->bshk", h, w("wk")) + delta("wk", h, (K, Dh)))
        v = heads(jnp.einsum("bsd,dhk->bshk", h, w("wv")) + delta("wv", h, (K, Dh)))
        if cfg.attention_bias:
            q, k, v = q + w("bq"), k + w("bk"), v + w("bv")
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        ck, cv, o, new = attend(q, k, v, ck, cv, li)
        x = embed(x + jnp.einsum("bshk,hkd->bsd", o, w("wo")) + delta("wo", o, (D,)))
        h = rms_norm(x, p["mlp_norm"].astype(cdt), cfg.rms_norm_eps)
        g = jnp.einsum("bsd,df->bsf", h, w("w_gate")) + delta("w_gate", h, (cfg.intermediate_size,))
        u = jnp.einsum("bsd,df->bsf", h, w("w_up")) + delta("w_up", h, (cfg.intermediate_size,))
        a = jax.nn.silu(g) * u
        x = embed(x + jnp.einsum("bsf,fd->bsd", a, w("w_down")) + delta("w_down", a, (D,)))
        return (x, ck, cv), new

    if remat != "none":
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat], prevent_cse=False)
    x = embed(params["embed"].astype(cdt)[tokens])
    carry = (x, None, None) if cache is None else (x, cache.k, cache.v)
    if isinstance(params["layers"], list):  # per-layer layout: unrolled
        news = []
        for li, p in enumerate(params["layers"]):
            ad = None if lora is None else jax.tree.map(lambda a: a[li], lora)  # noqa: B023
            carry, n = layer(carry, (p, ad, li))
            news.append(n)
        x, ck, cv = carry
        new = jax.tree.map(lambda *a: jnp.stack(a), *news)  # None when the layers return none
    else:
        (x, ck, cv), new = jax.lax.scan(layer, carry, (params["layers"], lora, jnp.arange(cfg.num_layers)))
    x = rms_norm(x, params["final_norm"].astype(cdt), cfg.rms_norm_eps)
    return x, (None if cache is None else KVCache(ck, cv)), new


def forward(params: Params, cfg: ModelConfig, tokens: jnp.ndarray, *,
            positions: jnp.ndarray | None = None,
            segment_ids: jnp.ndarray | None = None,
            cache: KVCache | None = None,
            write_index: jnp.ndarray | None = None,
            cache_slots: jnp.ndarray | None = None,
            return_kv: bool = False,
            return_hidden: bool = False,
            lora: Params | None = None,
            adapter_ids: jnp.ndarray | None = None,
            lora_scale: float = 1.0,
            lora_dropout: float = 0.0,
            dropout_key: jax.Array | None = None,
            remat: str = "none",
            attention: Backend = CPU) -> Output:
    """Run the decoder.

    Without `cache`, tokens [b, s] attend causally within their segment (`segment_ids`,
    0 = padding; packed examples get distinct ids). With `cache`, the tokens are written
    at `write_index[b]` onwards and attend to everything cached before them; row i uses
    cache slot `cache_slots[i]` (default: slot i; out-of-range slots are not written).
    `lora` holds per-projection adapters stacked [layers, n_adapters, ...]; `adapter_ids`
    [b] picks one per row. With `lora_dropout` > 0 and a `dropout_key` (training only),
    each adapter's input is dropped, a fresh mask per layer and projection (as PEFT's
    lora_dropout; the base projection sees the whole input). `params` may be stacked
    (layers run under `lax.scan`) or per layer (a list, unrolled: `models.weight_layout`).
    `attention` is the backend (kernels and the cache's layout), chosen once per mesh.
    """
    b, s = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    layout = attention.layout
    if cache is None:
        segment_ids = jnp.ones((b, s), jnp.int32) if segment_ids is None else segment_ids

        def attend(q, k, v, ck, cv, li):
            return ck, cv, attention.attention(q, k, v, segment_ids), ((k, v) if return_kv else None)
    else:
        q_index = write_index[:, None] + jnp.arange(s)[None, :]

        def attend(q, k, v, ck, cv, li):  # write into the carried cache in place, then attend over it
            ck, cv = layout.write(KVCache(ck, cv), li, q_index, k, v, cache_slots)
            return ck, cv, attention.cached(q, KVCache(ck, cv), li, q_index, cache_slots), None

    onehot = _adapter_mask(lora, adapter_ids, b, jnp.dtype(cfg.compute_dtype))
    x, new_cache, new = _decoder(params, cfg, tokens, positions, onehot, attend, cache, lora,
                                 lora_scale=lora_scale, lora_dropout=lora_dropout, dropout_key=dropout_key,
                                 remat=remat, attention=attention)
    kv = layout.stack_new(*new) if (cache is None and return_kv) else None
    if return_hidden:
        return Output(None, x, new_cache, kv)
    return Output(to_logits(params, cfg, x), None, new_cache, kv)


def to_logits(params: Params, cfg: ModelConfig, hidden: jnp.ndarray) -> jnp.ndarray:
    """float32 logits [..., vocab] of final-normed hidden states [..., d]."""
    return jnp.einsum("...d,dv->...v", hidden, lm_head(params, cfg).astype(hidden.dtype),
                      preferred_element_type=jnp.float32)


class Part(NamedTuple):
    """One group of rows in a mixed batch (`forward_parts`): rows of equal length s whose
    tokens go into the cache at `positions` (consecutive per row)."""

    tokens: jnp.ndarray              # [b, s] int32
    positions: jnp.ndarray           # [b, s] int32: each token's position = its cache index
    slots: jnp.ndarray | None        # [b] int32: each row's cache slot (None: row i is slot i)
    adapter_ids: jnp.ndarray | None  # [b] int32


def forward_parts(params: Params, cfg: ModelConfig, parts: Sequence[Part], cache: KVCache, *,
                  lora: Params | None = None, attention: Backend = CPU) -> tuple[list[jnp.ndarray], KVCache]:
    """Groups of rows of different lengths over one cache in one pass (vLLM's mixed
    batch: one token for every decoding slot plus a piece of a prompt): the norms and
    every matmul run once over all their tokens, flattened into one row, so the weights
    are read once; each group writes its keys/values and attends over the cache in its
    own shape. Returns each group's final-normed hidden states [b, s, d] and the cache.

    Groups write in order, all before any attends, so a later group's write wins where
    two land on one position (a decode step's idle write into a slot being prefilled).
    """
    shapes = [p.tokens.shape for p in parts]
    flat = lambda a: a.reshape(1, -1, *a.shape[2:])  # noqa: E731
    tokens = jnp.concatenate([flat(p.tokens) for p in parts], axis=1)
    positions = jnp.concatenate([flat(p.positions) for p in parts], axis=1)
    cdt = jnp.dtype(cfg.compute_dtype)
    onehot = None
    if lora is not None:
        masks = [_adapter_mask(lora, p.adapter_ids, b, cdt) for p, (b, _) in zip(parts, shapes)]
        onehot = jnp.concatenate([flat(jnp.broadcast_to(m, (b, s, m.shape[-1])))
                                  for m, (b, s) in zip(masks, shapes)], axis=1)
    bounds = np.cumsum([0] + [b * s for b, s in shapes])
    layout = attention.layout

    def attend(q, k, v, ck, cv, li):
        split = lambda t, i: t[0, bounds[i]:bounds[i + 1]].reshape(*shapes[i], *t.shape[2:])  # noqa: E731
        for i, p in enumerate(parts):
            ck, cv = layout.write(KVCache(ck, cv), li, p.positions, split(k, i), split(v, i), p.slots)
        outs = [attention.cached(split(q, i), KVCache(ck, cv), li, p.positions, p.slots)
                for i, p in enumerate(parts)]
        return ck, cv, jnp.concatenate([flat(o) for o in outs], axis=1), None

    x, new_cache, _ = _decoder(params, cfg, tokens, positions, onehot, attend, cache, lora,
                               lora_scale=1.0, lora_dropout=0.0, dropout_key=None, remat="none",
                               attention=attention)
    hidden = [x[0, bounds[i]:bounds[i + 1]].reshape(*shapes[i], -1) for i in range(len(parts))]
    return hidden, new_cache

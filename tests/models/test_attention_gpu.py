"""The GPU decode path lowers for CUDA on this CPU host: jax's Triton lowering turns the
Pallas paged-attention kernel into Triton IR inside the HLO, which checks its block shapes
and dtypes without a GPU. Compiling that IR to PTX and running it needs a GPU (none here);
cuDNN attention cannot even lower without one ("cuDNN is not detected")."""

import functools
import re

import jax
import jax.numpy as jnp

from selflengthen_jax.models.attention import Backend, paged
from selflengthen_jax.models.attention.cache import PAGED, KVCache
from selflengthen_jax.models.presets import model_config_from_name
from selflengthen_jax.models.transformer import init_params
from selflengthen_jax.sampling import kernels

GPU = Backend("cudnn", PAGED)   # what `choose` gives on a GPU (it refuses cudnn on this CPU host)


def custom_calls(lowered) -> list[str]:
    return re.findall(r"custom_call @([\w$.]+)", lowered.as_text())


def test_paged_decode_lowers_to_one_triton_kernel_at_qwen2_7b_shapes():
    slots, layers, t, h, kv, d = 4, 2, 2048, 28, 4, 128
    cache = KVCache(*(jax.ShapeDtypeStruct((kv, layers, slots, t, d), jnp.bfloat16) for _ in range(2)))
    q = jax.ShapeDtypeStruct((slots, 1, h, d), jnp.bfloat16)
    pos = jax.ShapeDtypeStruct((slots, 1), jnp.int32)
    step = jax.jit(lambda q, c, pos: paged.decode_attention(
        q, c, jnp.int32(1), pos, kernel="gpu", page_size=PAGED.page_size, mesh=None, batch_axes=None,
        head_axes=None, interpret=False))
    assert custom_calls(step.trace(q, cache, pos).lower(lowering_platforms=("cuda",))) == ["__gpu$xla.gpu.triton"]


def test_the_engines_decode_chunk_lowers_for_cuda_with_an_fp32_model_over_a_bf16_cache():
    """The whole decode loop (forward, sampling, finish codes) of qwen2-0.5b: one Triton
    kernel in the scanned layer. An fp32 model over a bf16 cache is the case that needs q
    cast to the cache's dtype (Triton's dots take one element type)."""
    cfg = model_config_from_name("qwen2-0.5b")
    params = jax.eval_shape(lambda: init_params(cfg))
    state = jax.eval_shape(lambda: kernels.empty_state(cfg, 4, 512, jnp.bfloat16, GPU))
    ends = kernels.Ends(jnp.array([-1], jnp.int32), jnp.array([-1], jnp.int32))
    decode = jax.jit(functools.partial(kernels.decode, cfg=cfg, chunk=8, k_cap=20, attention=GPU))
    lowered = decode.trace(params, None, state, ends, jnp.int32(8), jnp.bool_(False)).lower(
        lowering_platforms=("cuda",))
    assert custom_calls(lowered) == ["__gpu$xla.gpu.triton"]

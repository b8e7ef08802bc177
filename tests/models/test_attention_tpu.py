"""The Pallas backend's kernels compile with XLA's TPU compiler for a v5e:2x2 slice, sharded
as the engine and trainer shard them (batch over data, heads over tensor); libtpu is in
the test extra, so CI runs these. Seconds each: tiny shapes, nothing runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

pytest.importorskip("libtpu")

from selflengthen_jax.models.attention import choose  # noqa: E402
from selflengthen_jax.models.attention.cache import PAGED, KVCache  # noqa: E402
from selflengthen_jax.plan import hlo, slices  # noqa: E402


@pytest.fixture(scope="module")
def mesh():
    devices = slices.topology_devices(slices.parse_slice("v5e:2x2"))
    return Mesh(np.array(devices).reshape(2, 1, 2), ("data", "fsdp", "tensor"))


def spec(mesh, shape, dtype, *axes):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P(*axes)))


def kernels_in(compiled) -> int:
    return compiled.as_text().count("tpu_custom_call")


def test_splash_attention_and_its_gradient_compile_for_the_slice(mesh):
    backend = choose("pallas", "tpu", mesh, batch_axes=("data", "fsdp"), head_axes="tensor")
    b, s, h, kv, d = 4, 1024, 8, 2, 128
    q = spec(mesh, (b, s, h, d), jnp.bfloat16, ("data", "fsdp"), None, "tensor")
    k = spec(mesh, (b, s, kv, d), jnp.bfloat16, ("data", "fsdp"), None, "tensor")
    seg = spec(mesh, (b, s), jnp.int32, ("data", "fsdp"))
    loss = lambda q, k, v, seg: jnp.sum(backend.attention(q, k, v, seg).astype(jnp.float32))  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, seg).compile()
    assert kernels_in(compiled) >= 2                  # forward and fused backward kernels
    scores = b * h * s * s * 4 // 4                   # one float32 [s, s] score matrix per head, per chip
    assert compiled.memory_analysis().temp_size_in_bytes < scores


def test_the_fused_splash_backward_holds_one_dq_per_kv_block_as_the_planner_counts(mesh):
    backend = choose("pallas", "tpu", mesh, batch_axes=("data", "fsdp"), head_axes="tensor")
    b, s, h, kv, d = 2, 4096, 8, 2, 128               # one row and 4 heads per chip: 8 KV blocks of 512
    q = spec(mesh, (b, s, h, d), jnp.bfloat16, ("data", "fsdp"), None, "tensor")
    k = spec(mesh, (b, s, kv, d), jnp.bfloat16, ("data", "fsdp"), None, "tensor")
    seg = spec(mesh, (b, s), jnp.int32, ("data", "fsdp"))
    loss = lambda q, k, v, seg: jnp.sum(backend.attention(q, k, v, seg).astype(jnp.float32))  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, seg).compile()
    partials = backend.backward_partial_positions(s) * d * (h // 2) * 2   # bf16, per chip
    assert backend.backward_partial_positions(s) == 8 * s
    written = [hlo.array_bytes(line.split("custom-call(")[0]) for line in compiled.as_text().splitlines()
               if "tpu_custom_call" in line and "= (" in line]   # what each Pallas call writes
    assert partials in {int(x) for arrays in written for x in arrays}


def test_paged_decode_compiles_for_the_slice(mesh):
    backend = choose("pallas", "tpu", mesh, batch_axes=("data", "fsdp"), head_axes="tensor")
    assert backend.layout == PAGED
    slots, layers, t, h, kv, d = 8, 2, 1024, 8, 2, 128
    cache_axes = ("tensor", None, ("data", "fsdp"), None, None)
    cache = KVCache(*(spec(mesh, (kv, layers, slots, t, d), jnp.bfloat16, *cache_axes) for _ in range(2)))
    q = spec(mesh, (slots, 1, h, d), jnp.bfloat16, ("data", "fsdp"), None, "tensor")
    pos = spec(mesh, (slots, 1), jnp.int32, ("data", "fsdp"))
    step = jax.jit(lambda q, c, pos: backend.cached(q, c, jnp.int32(1), pos))
    compiled = step.lower(q, cache, pos).compile()
    assert kernels_in(compiled) == 1
    hlo = compiled.as_text()
    assert "all-gather" not in hlo and "all-reduce" not in hlo   # each chip reads its own slots and heads

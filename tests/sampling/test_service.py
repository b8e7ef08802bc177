"""The service builds engines and sampling params from the run config alone."""

import jax
import pytest

from cli_fixtures import shared_chat_checkpoint
from selflengthen_jax.config import ConfigError, SamplingSection, load_config
from selflengthen_jax.sampling.request import DEFAULT_STOP, SamplingParams
from selflengthen_jax.sampling.service import build_engine, check_model, sampling_params


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return shared_chat_checkpoint(tmp_path_factory)


def test_engine_takes_mesh_sizes_and_dtypes_from_the_config(checkpoint):
    cfg = load_config(None, ["engine.slots=4", "engine.max_prefill_len=64", "mesh.strategy=fsdp",
                             "mesh.fsdp=2", "model.compute_dtype=bfloat16", f"model.path={checkpoint}"])
    engine = build_engine(cfg)
    assert engine.mesh.shape == {"data": jax.device_count() // 2, "fsdp": 2, "tensor": 1}
    assert engine.section.slots == 4 and engine.section.max_prefill_len == 64
    assert engine.section.max_new_tokens == cfg.engine.max_new_tokens
    assert engine.cfg.compute_dtype == "bfloat16"
    assert engine.attention.impl == "xla" and engine.attention.layout.kind == "transposed"  # auto on CPU
    assert engine.rules["embed"] == "fsdp"


def test_max_new_tokens_caps_the_cache_room_only_downwards(checkpoint):
    cfg = load_config(None, ["engine.max_prefill_len=64", "engine.max_new_tokens=128"])
    assert build_engine(cfg, str(checkpoint), max_new_tokens=16).section.max_new_tokens == 16
    assert build_engine(cfg, str(checkpoint), max_new_tokens=4096).section.max_new_tokens == 128


def test_config_problems_fail_before_weights_are_read(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="no model given"):
        build_engine(load_config())
    with pytest.raises(ConfigError, match="mesh.tensor=3 does not divide num_attention_heads=4"):
        build_engine(load_config(None, ["mesh.tensor=3", "mesh.data=1"]), str(checkpoint))
    with pytest.raises(ValueError, match="does not exist"):
        check_model(str(tmp_path / "missing"))
    check_model(str(checkpoint))


def test_sampling_params_mirror_the_config_section_with_overrides():
    params = sampling_params(SamplingSection())
    assert params == SamplingParams(max_new_tokens=16384)
    assert params.stop == DEFAULT_STOP and isinstance(params.stop, tuple)
    section = SamplingSection(temperature=0.9, stop=["END"])
    tuned = sampling_params(section, seed=5, greedy=True, max_new_tokens=32)
    assert (tuned.temperature, tuned.stop, tuned.seed, tuned.greedy, tuned.max_new_tokens) == \
        (0.9, ("END",), 5, True, 32)
    assert sampling_params(section, stop=()).stop == ()


def test_kv_heads_the_tensor_axis_does_not_divide_are_named_with_their_cost():
    """tiny has 4 KV heads: a tensor axis of 8 replicates them, and the warning says so."""
    import jax as _jax
    from selflengthen_jax.config import EngineSection, MeshSection
    from selflengthen_jax.models.presets import model_config_from_name
    from selflengthen_jax.parallel.mesh import make_mesh
    from selflengthen_jax.parallel.rules import strategy_rules
    from selflengthen_jax.sampling.service import kv_replication
    cfg = model_config_from_name("tiny")
    section = EngineSection(slots=8, max_prefill_len=64, max_new_tokens=192)
    tp8 = make_mesh(MeshSection(data=1, tensor=8, strategy="tp"), _jax.devices()[:8])
    message = kv_replication(cfg, section, tp8, strategy_rules("tp"))
    assert "does not divide the model's 4 KV heads" in message and "replicated" in message
    assert "GiB of cache per device instead of" in message
    tp4 = make_mesh(MeshSection(data=2, tensor=4, strategy="tp"), _jax.devices()[:8])
    assert kv_replication(cfg, section, tp4, strategy_rules("tp")) is None

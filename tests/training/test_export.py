"""launch.export: HF -> HF, HF <-> our Orbax directory, and merged LoRA, all loadable by transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from cli_fixtures import run_main
from hf_fixtures import hf_model
from launch import export
from selflengthen_jax.checkpoint import orbax_params
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.models.lora import init_lora
from selflengthen_jax.models.transformer import forward
from selflengthen_jax.training.checkpointing import save_adapter

TOKENS = (np.arange(1, 41) * 7 % 100)[None]


def hf_logits(path):
    with torch.no_grad():
        return hf_model(path)(input_ids=torch.tensor(TOKENS)).logits.numpy()


def exported(capsys, *argv):
    code, out, err = run_main(export.main, argv, capsys)
    assert code == 0, err
    return out.strip().splitlines()[-1]


def test_a_hf_round_trip_loads_in_transformers_with_the_same_logits(tiny, tmp_path, capsys):
    out = exported(capsys, "--model", tiny.path, "--output", tmp_path / "hf")
    np.testing.assert_allclose(hf_logits(out), hf_logits(tiny.path), atol=1e-5)
    assert load_tokenizer(out).encode("w1 w2") == tiny.tok.encode("w1 w2")


def test_our_orbax_directory_holds_the_same_params_and_converts_back(tiny, tmp_path, capsys):
    ours = exported(capsys, "--model", tiny.path, "--output", tmp_path / "ours", "--format", "orbax")
    assert orbax_params.is_params_dir(ours)
    jax.tree.map(np.testing.assert_array_equal, orbax_params.load_params(ours, tiny.cfg), tiny.params)
    back = exported(capsys, "--model", ours, "--output", tmp_path / "hf")
    np.testing.assert_allclose(hf_logits(back), hf_logits(tiny.path), atol=1e-5)


def test_a_merged_lora_export_gives_the_logits_of_base_plus_adapter(tiny, tmp_path, capsys):
    rng = np.random.default_rng(1)
    adapters = {k: {"a": v["a"], "b": jnp.asarray(0.2 * rng.standard_normal(v["b"].shape), jnp.float32)}
                for k, v in init_lora(tiny.cfg, rank=4, seed=0).items()}
    save_adapter(tmp_path / "adapter", adapters, {"rank": 4, "alpha": 8.0, "base_model": str(tiny.path)})
    out = exported(capsys, "--model", tiny.path, "--output", tmp_path / "merged",
                   "--adapter", tmp_path / "adapter")
    ours = jax.jit(lambda p, ad: forward(p, tiny.cfg, TOKENS, lora=ad, lora_scale=2.0).logits)(
        tiny.params, adapters)
    assert np.abs(hf_logits(out) - hf_logits(tiny.path)).max() > 1e-2
    np.testing.assert_allclose(hf_logits(out), np.asarray(ours), atol=1e-4)


def test_a_missing_source_is_one_clear_error_line(tmp_path, capsys):
    code, out, err = run_main(export.main, ["--model", tmp_path / "missing", "--output", tmp_path / "x"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: model directory {tmp_path / 'missing'} does not exist"]


def test_an_adapter_for_another_model_is_refused(tiny, tmp_path, capsys):
    other = init_lora(tiny.cfg.__class__(**{**tiny.cfg.__dict__, "hidden_size": 32}), rank=2, seed=0)
    save_adapter(tmp_path / "adapter", other, {"rank": 2, "alpha": 4.0, "base_model": "elsewhere"})
    code, _, err = run_main(export.main, ["--model", tiny.path, "--output", tmp_path / "x",
                                          "--adapter", tmp_path / "adapter"], capsys)
    assert code == 2 and err.startswith("error: adapter w") and "but the model needs" in err
    assert not (tmp_path / "x").exists()


def test_a_peft_export_loads_with_peft_onto_the_base_as_the_merged_export(tiny, tmp_path, capsys):
    import peft
    rng = np.random.default_rng(2)
    adapters = {k: {"a": v["a"], "b": jnp.asarray(0.2 * rng.standard_normal(v["b"].shape), jnp.float32)}
                for k, v in init_lora(tiny.cfg, rank=4, seed=0, targets=("wq", "wo", "w_gate")).items()}
    save_adapter(tmp_path / "adapter", adapters, {"rank": 4, "alpha": 8.0, "base_model": str(tiny.path)})
    out = exported(capsys, "--model", tiny.path, "--output", tmp_path / "peft", "--adapter", tmp_path / "adapter",
                   "--format", "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["adapter_config.json",
                                                                      "adapter_model.safetensors"]
    merged = exported(capsys, "--model", tiny.path, "--output", tmp_path / "merged", "--adapter", tmp_path / "adapter")
    with torch.no_grad():
        got = peft.PeftModel.from_pretrained(hf_model(tiny.path), out).eval()(
            input_ids=torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(got, hf_logits(merged), atol=1e-4)


def test_a_peft_export_needs_an_adapter(tiny, tmp_path, capsys):
    code, _, err = run_main(export.main, ["--model", tiny.path, "--output", tmp_path / "x", "--format", "peft"], capsys)
    assert code == 2 and err.strip() == "error: --format peft exports an adapter: pass --adapter DIR"

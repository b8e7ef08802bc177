"""The demo model: the shipped one is current, and the build command makes a real
Hugging Face checkpoint that transformers and our import path read alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from launch.build_demo import main as build_main
from selflengthen_jax.config import ConfigError, load_config
from selflengthen_jax.demo import shipped
from selflengthen_jax.demo.build import fingerprint


def test_the_shipped_model_was_built_from_todays_corpus_templates_and_recipe():
    info = shipped.build_info()
    # Editing the corpus, a prompt template, the seeds or the recipe changes this: then
    # rebuild with `python -m launch.build_demo` and commit the model.
    assert info["fingerprint"] == fingerprint(tuple(info["languages"]), info["warmup"])
    assert "en" in info["languages"]


def test_a_run_without_model_path_uses_the_shipped_model():
    cfg = shipped.with_demo_model(load_config("demo"))
    assert cfg.model.path == str(shipped.SHIPPED_DIR)
    named = load_config("demo", ["model.path=/ckpt/elsewhere"])
    assert shipped.with_demo_model(named) is named


def test_a_language_the_shipped_model_lacks_is_refused_with_the_build_command():
    missing = [lang for lang in ("en", "zh") if lang not in shipped.build_info()["languages"]]
    if not missing:
        pytest.skip("the shipped model covers every language")
    with pytest.raises(ConfigError, match="launch.build_demo --languages"):
        shipped.with_demo_model(load_config("demo", [f"language={missing[0]}"]))


def test_an_unfinished_model_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="demo_build.json is missing"):
        shipped.build_info(tmp_path)


def test_build_refuses_to_replace_a_directory_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        build_main(["--output", str(mine), "--epochs", "1"])
    assert stop.value.code == 2
    assert "is not a demo model built here" in capsys.readouterr().err
    assert (mine / "keep.txt").read_text() == "mine"


def test_build_command_writes_a_checkpoint_transformers_and_we_read_alike(tmp_path, capsys):
    import torch
    import transformers

    from selflengthen_jax.checkpoint.hf_import import load_params, read_config
    from selflengthen_jax.models.transformer import forward

    out = tmp_path / "demo"
    out.mkdir()  # an earlier build, which a rebuild replaces whole
    (out / "demo_build.json").write_text("{}")
    (out / "stale.bin").write_text("old")
    assert build_main(["--output", str(out), "--languages", "en", "--epochs", "1"]) == 0
    assert not (out / "stale.bin").exists()
    info = json.loads((out / "demo_build.json").read_text())
    assert info["languages"] == ["en"] and info["warmup"]["epochs"] == 1
    assert info["fingerprint"] == fingerprint(("en",), info["warmup"])
    assert not list(tmp_path.glob("*.building"))

    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "Write a story about a river."}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids])).logits.numpy()
    cfg = read_config(out)
    ours = np.asarray(forward(load_params(out, cfg), cfg, np.asarray([ids], np.int32)).logits)
    assert np.abs(ours - theirs).max() < 1e-4

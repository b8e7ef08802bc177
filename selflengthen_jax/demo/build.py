"""The embedded demo model: a tiny Qwen2 made and warmed up by the project itself.

It is written in Hugging Face layout (config.json, safetensors, tokenizer with a
ChatML template) and loaded through the same import path as a real checkpoint. A
random model fails every quality check, so it gets a short full fine-tune on the
demo corpus first (long-writing answers, the judge and extend tasks, self-instruct
lists). It is tiny and its prose is not good; it exists to exercise every phase.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import jax

from selflengthen_jax.checkpoint.hf_export import export_hf
from selflengthen_jax.checkpoint.orbax_params import load_params as load_orbax_params
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import Config, MeshSection, TrainSection, from_dict
from selflengthen_jax.demo import hf_files
from selflengthen_jax.demo.tokenizer import train_tokenizer
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import init_params
from selflengthen_jax.pipeline.prompts import TEMPLATES_DIR, self_instruct_prompt
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.training.trainer import train

VERSION = "1"
WARMUP = dict(mode="full", learning_rate=5e-3, warmup_ratio=0.05, epochs=25, batch_size=4,
              cutoff_len=256, packing=True, remat="none", save_every=100000, keep=1, log_every=50)


def demo_records(languages: tuple[str, ...] = hf_files.LANGUAGES) -> list[dict]:
    """Every warm-up example of the given languages, all tasks."""
    records = []
    for lang in languages:
        for task in hf_files.TASKS:
            records += [{"prompt": r["prompt"], "response": r["response"]}
                        for r in hf_files.load_corpus(lang, task)]
        docs = hf_files.load_instruction_documents(lang)
        for doc, text in zip(docs, hf_files.self_instruct_texts(lang)):
            items = [hf_files.item_text(line) for line in doc.splitlines()]
            head = self_instruct_prompt(lang, items[0], items[1])
            records.append({"raw": True, "prompt": head, "response": text[len(head):]})
    return records


def corpus_fingerprint(languages: tuple[str, ...]) -> str:
    """Changes when the corpus, the templates, the languages or the recipe change."""
    h = hashlib.sha256((VERSION + ",".join(languages) + json.dumps(WARMUP, sort_keys=True)).encode())
    for f in sorted([*hf_files.CORPUS_DIR.iterdir(), *TEMPLATES_DIR.glob("*/*.txt")]):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def default_dir(languages: tuple[str, ...]) -> Path:
    root = Path(os.environ.get("SELFLENGTHEN_CACHE", Path.home() / ".cache" / "selflengthen_jax"))
    return root / f"demo-model-{'-'.join(languages)}-{corpus_fingerprint(languages)}"


def build_demo_checkpoint(languages: tuple[str, ...] = hf_files.LANGUAGES,
                          out_dir: str | Path | None = None, epochs: int | None = None,
                          log=print) -> Path:
    """Build (once; cached by corpus fingerprint) and return the demo checkpoint dir.

    Written under a temporary name and renamed when complete, so a killed build is
    redone, never loaded half-made.
    """
    out = Path(out_dir) if out_dir else default_dir(languages)
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"building the demo model in {out} (tokenizer, random init, warm-up fine-tune) ...")
    hf_cfg = hf_files.write_non_weight_files(tmp, train_tokenizer(hf_files.corpus_texts()))
    model_cfg = ModelConfig.from_hf(hf_cfg)
    data = tmp / "warmup.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in demo_records(languages)),
                    encoding="utf-8")
    train_cfg = TrainSection(**{**WARMUP, **({"epochs": epochs} if epochs else {})})
    cfg: Config = from_dict({"seed": 0, "train": dataclasses.asdict(train_cfg)})
    mesh = make_mesh(MeshSection(data=1), jax.devices()[:1])
    artifact = train(cfg, "warmup", data, tmp / "warmup", init_params(model_cfg, seed=0), model_cfg,
                     load_tokenizer(tmp), mesh)
    params = load_orbax_params(artifact, model_cfg)
    export_hf(params, model_cfg, tmp / "hf", tokenizer_dir=tmp)
    for f in (tmp / "hf").iterdir():
        shutil.move(str(f), tmp / f.name)
    for leftover in ("hf", "warmup"):
        shutil.rmtree(tmp / leftover, ignore_errors=True)
    data.unlink()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


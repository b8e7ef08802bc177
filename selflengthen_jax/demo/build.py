"""The embedded demo model: a tiny Qwen2 made and warmed up by the project itself.

`python -m launch.build_demo` builds it once and the result is shipped in the package
(`selflengthen_jax/demo/model/`, see `demo/shipped.py`), so the main job never depends on how training
numerics come out under the library versions a user's install resolves. It is written
in Hugging Face layout (config.json, safetensors, tokenizer with a ChatML template) and
loaded through the same import path as a real checkpoint. The warm-up is a full
fine-tune from random init on the demo corpus (see `demo/corpus.py`). It is tiny and
its prose is poor; it exists to show every phase, and the lengthening, end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import jax

from selflengthen_jax.checkpoint.hf_export import export_hf
from selflengthen_jax.checkpoint.orbax_params import load_params as load_orbax_params
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.config import Config, ConfigError, MeshSection, TrainSection, check_positive, from_dict
from selflengthen_jax.demo import corpus, hf_files
from selflengthen_jax.demo.shipped import BUILD_INFO, SHIPPED_DIR
from selflengthen_jax.demo.tokenizer import train_tokenizer
from selflengthen_jax.models.config import ModelConfig
from selflengthen_jax.models.transformer import init_params
from selflengthen_jax.parallel.mesh import make_mesh
from selflengthen_jax.training.trainer import train

VERSION = "2"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a build may change (`launch.build_demo`'s config keys); the defaults build the
    shipped model. The warm-up is a full fine-tune with packing, no remat, and no
    checkpoints kept but the last."""

    languages: tuple[str, ...] = ("en",)  # of corpus.LANGUAGES
    epochs: int = 60
    learning_rate: float = 3e-3
    warmup_ratio: float = 0.03
    batch_size: int = 2
    cutoff_len: int = 1024

    def warmup(self) -> dict:
        """The warm-up's train section (as recorded in demo_build.json)."""
        return dict(mode="full", learning_rate=self.learning_rate, warmup_ratio=self.warmup_ratio,
                    epochs=self.epochs, batch_size=self.batch_size, cutoff_len=self.cutoff_len,
                    packing=True, remat="none", save_every=100000, keep=1, log_every=10)


def check_recipe(recipe: Recipe) -> Recipe:
    """`recipe` itself if it can build, else one ConfigError naming the key."""
    check_positive(recipe, zero_ok=("warmup_ratio",))
    if len(set(recipe.languages)) < len(recipe.languages):
        raise ConfigError(f"languages={list(recipe.languages)} names a language twice")
    for language in recipe.languages:
        if language not in corpus.LANGUAGES:
            raise ConfigError(f"languages: the demo corpus has no language {language!r}; "
                              f"choose from {', '.join(corpus.LANGUAGES)}")
    if not 0.0 <= recipe.warmup_ratio <= 1.0:
        raise ConfigError(f"warmup_ratio={recipe.warmup_ratio} must lie in [0, 1]")
    return recipe


def fingerprint(languages: tuple[str, ...], warmup: dict) -> str:
    """A hash of exactly what a build trains on: the warm-up records, the tokenizer's
    texts and the recipe. A shipped model whose record disagrees is stale."""
    h = hashlib.sha256((VERSION + json.dumps(warmup, sort_keys=True)).encode())
    for part in (corpus.records(languages), corpus.tokenizer_texts()):
        h.update(json.dumps(part, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:12]


def build_demo_checkpoint(out_dir: str | Path = SHIPPED_DIR, recipe: Recipe = Recipe(), log=print) -> Path:
    """Build the demo checkpoint into `out_dir` and return it.

    Written under a temporary name and renamed when complete (the build record last),
    so a killed build never leaves a directory that looks finished.
    """
    out = Path(out_dir)
    if out.exists() and not (out / BUILD_INFO).is_file():
        raise ValueError(f"{out} exists and is not a demo model built here: choose another directory")
    check_recipe(recipe)
    languages, warmup = recipe.languages, recipe.warmup()
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"building the demo model in {out} (tokenizer, random init, warm-up fine-tune) ...")
    hf_cfg = hf_files.write_non_weight_files(tmp, train_tokenizer(corpus.tokenizer_texts()))
    model_cfg = ModelConfig.from_hf(hf_cfg)
    data = tmp / "warmup.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus.records(languages)),
                    encoding="utf-8")
    cfg: Config = from_dict({"seed": 0, "train": dataclasses.asdict(TrainSection(**warmup))})
    mesh = make_mesh(MeshSection(data=1), jax.devices()[:1])
    artifact = train(cfg, "warmup", data, tmp / "warmup", init_params(model_cfg, seed=0), model_cfg,
                     load_tokenizer(tmp), mesh)
    export_hf(load_orbax_params(artifact, model_cfg), model_cfg, tmp / "hf", tokenizer_dir=tmp)
    for f in (tmp / "hf").iterdir():
        shutil.move(str(f), tmp / f.name)
    for leftover in ("hf", "warmup"):
        shutil.rmtree(tmp / leftover, ignore_errors=True)
    data.unlink()
    (tmp / BUILD_INFO).write_text(json.dumps(
        {"fingerprint": fingerprint(languages, warmup), "languages": list(languages),
         "warmup": warmup, "jax": jax.__version__}, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)  # a previous build (checked above)
    tmp.rename(out)
    return out

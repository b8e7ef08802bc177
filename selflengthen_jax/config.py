"""The run configuration: one typed tree, loaded from YAML, with `a.b=value` overrides.

Like MaxText, a run is one YAML file plus dotted command-line overrides. Every key is
checked at start-up: unknown keys, wrong types and values outside a fixed set fail with
a message naming the key and what is allowed, before any weights are touched. Values
are parsed with `yaml.safe_load` only (never eval).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

# The shipped run configs: the repository's configs/, reached through the package (a
# link in the source tree, copied files in a wheel), so names resolve in any install.
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is malformed, unknown, mistyped or impossible."""


@dataclasses.dataclass
class ModelSection:
    path: str = ""  # a Hugging Face checkpoint dir or one of ours; "" builds the demo model
    preset: str = ""  # architecture name (e.g. qwen2-7b) for --dry-run without the weights
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # auto: Pallas (splash + paged decode) on TPU, cuDNN on GPU, XLA on CPU (models/attention)
    attention_impl: Literal["auto", "xla", "pallas", "cudnn"] = "auto"


@dataclasses.dataclass
class MeshSection:
    data: int = -1    # -1 takes the devices the other axes leave
    fsdp: int = 1
    tensor: int = 1
    strategy: Literal["dp", "fsdp", "tp", "fsdp_tp"] = "dp"
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)  # logical axis -> mesh axes
    replica_per_host: bool = True  # generation: one model replica per host (no cross-host traffic)
    # a host's replica: "tp" = tensor parallel over the host's devices (heads, kv heads, mlp,
    # vocab: no per-step weight gathers); "training" = the training layout shrunk to the host
    generation: Literal["tp", "training"] = "tp"


@dataclasses.dataclass
class SamplingSection:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.1
    max_new_tokens: int = 16384
    stop: list[str] = dataclasses.field(
        default_factory=lambda: ["\n\n---", "\n---", "---", "\n\n\n"])


@dataclasses.dataclass
class EngineSection:
    slots: int = 8                  # concurrent sequences (decode batch)
    max_prefill_len: int = 4096     # longest prompt, tokens
    max_new_tokens: int = 16384     # cache room for output, tokens
    decode_chunk: int = 64          # decode steps per device call
    prefill_tokens: int = 32768     # prompt tokens per prefill call (bounds its activations)
    prefill_chunk: int = 1024       # longer prompts are prefilled this many tokens at a time, between decode chunks
    mode: Literal["continuous", "static"] = "continuous"
    mixed_batches: bool = True      # prompt pieces and refills ride a decode step (one read of the weights, vLLM's
                                    # mixed batch); false: they run between decode steps
    weight_layout: Literal["auto", "stacked", "per_layer"] = "auto"  # auto: per_layer on CPU (models.weight_layout)


@dataclasses.dataclass
class LoraSection:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0


@dataclasses.dataclass
class TrainSection:
    mode: Literal["lora", "full"] = "lora"
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    epochs: int = 4
    batch_size: int = 1             # sequences per data shard per step
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    cutoff_len: int = 16384
    packing: bool = False
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "full"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    save_every: int = 200
    keep: int = 2
    log_every: int = 10
    max_steps: int = -1             # -1: epochs decide
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)


@dataclasses.dataclass
class PipelineSection:
    max_iter: int = 3
    instruct_count: int = 5000
    instruct_tries: int = 10
    responses_per_instruction: int = 2
    response_tries: int = 20
    extensions_per_response: int = 2
    extension_rounds: int = 3
    extension_tries: int = 20
    min_extension_ratio: float = 1.2
    line_keep_prob: float = 0.8
    finish_fraction: float = 1.0    # the reference's runs stop a phase past 0.95 of its tasks
    collect_count: int = 0          # extra rounds' instructions in all (the reference: 5000)
    collect_round: int = 500        # instructions per extra round (the reference's 500)
    instruct_batch: int = 500       # zh few-shot pool: seeds plus this batch's accepted ones
    judge: Literal["likelihood", "sample"] = "sample"  # sample: the reference's sampled answer
    rules: Literal["reference", "strict"] = "reference"  # quality filter (pipeline.text)
    downsample_by: Literal["chars", "words"] = "chars"   # chars: the reference's len(str) rank
    min_instruction_words: int = 3
    max_instruction_words: int = 500
    dedup_threshold: float = 0.7
    seeds_path: str = ""
    templates_dir: str = ""
    ngram_zh: int = 13
    ngram_en: int = 10
    max_new_tokens: int = 16384
    instruct_max_new_tokens: int = 16384


@dataclasses.dataclass
class EvalSection:
    min_words: int = 2000
    max_words: int = 8000
    max_new_tokens: int = 16384
    judge_url: str = ""
    judge_model: str = ""
    judge_prompt: Literal["reference", "dimensions"] = "reference"  # quality_eval.md's, or ours


@dataclasses.dataclass
class PlanSection:
    device: str = "cpu"   # device kind for --dry-run: v4, v5e, v5p, v6e, a100, h100, h200, cpu
    num_devices: int = 0  # 0: the devices present


@dataclasses.dataclass
class Config:
    seed: int = 0
    output_dir: str = "runs/default"
    compilation_cache: str = "auto"  # persistent XLA cache: auto (~/.cache/selflengthen_jax/xla), off, or a path
    language: Literal["zh", "en"] = "zh"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    engine: EngineSection = dataclasses.field(default_factory=EngineSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    pipeline: PipelineSection = dataclasses.field(default_factory=PipelineSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    plan: PlanSection = dataclasses.field(default_factory=PlanSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


POSITIVE = {"engine.slots", "engine.max_prefill_len", "engine.max_new_tokens",
            "engine.decode_chunk", "engine.prefill_tokens", "engine.prefill_chunk", "train.epochs", "train.batch_size", "train.grad_accum",
            "train.cutoff_len", "train.save_every", "train.keep", "train.log_every", "train.lora.rank",
            "pipeline.max_iter", "pipeline.instruct_count", "pipeline.instruct_tries",
            "pipeline.responses_per_instruction", "pipeline.response_tries",
            "pipeline.extensions_per_response", "pipeline.extension_rounds", "pipeline.extension_tries",
            "pipeline.min_instruction_words", "pipeline.max_instruction_words", "pipeline.ngram_zh",
            "pipeline.ngram_en", "pipeline.max_new_tokens", "pipeline.instruct_max_new_tokens",
            "pipeline.collect_round", "pipeline.instruct_batch",
            "sampling.max_new_tokens", "eval.max_new_tokens", "mesh.fsdp", "mesh.tensor"}
NON_NEGATIVE = {"seed", "sampling.top_k", "pipeline.collect_count", "plan.num_devices",
                "train.weight_decay", "train.max_grad_norm", "sampling.temperature"}
FRACTIONS = {"train.warmup_ratio", "pipeline.finish_fraction", "pipeline.line_keep_prob",
             "sampling.top_p", "train.lora.dropout", "pipeline.dedup_threshold"}
ABOVE_ZERO = {"train.learning_rate", "sampling.repetition_penalty", "train.lora.alpha"}  # floats > 0
HINTS = {"sampling.top_k": " (0 disables it)", "plan.num_devices": " (0: the devices present)",
         "train.max_grad_norm": " (0 disables clipping)"}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key {dotted!r}; allowed here: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, allowing int -> float only."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: "
                              f"{', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[X, ...]: a YAML list, kept as a tuple (frozen sections)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool) or not isinstance(value, tp) \
            or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {tp.__name__}, got {value!r}")
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[last] = value


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """['train.lr=1e-4', 'language=en'] -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {arg!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_path(path: str | Path) -> Path:
    """A config path as given, or a bare name looked up in the shipped configs/."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config file {path} not found (looked here and in {CONFIG_DIR})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of config keys")
    return data


def build_section(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """A typed section (any config dataclass) from a mapping, with the same checks as the
    run config: unknown keys and wrong types fail naming `prefix` + the key."""
    return _build(cls, data, prefix)


def load_section(cls: type, path: str | Path | None = None, overrides: Sequence[str] = (),
                 base: Any = None, prefix: str = "") -> Any:
    """A command's own typed config (e.g. a benchmark's workload): the fields of `base`
    (default: `cls()`), then the YAML file at `path` (its top level is this section),
    then `key=value` overrides."""
    defaults = dataclasses.asdict(base if base is not None else cls())
    data = _merge(load_yaml(path) if path else {}, parse_overrides(overrides))
    return _build(cls, _merge(defaults, data), prefix)


def check_positive(section: Any, prefix: str = "", zero_ok: Sequence[str] = ()) -> None:
    """Every number in a workload section (list items included) is > 0, or >= 0 for the
    dotted keys in `zero_ok`: counts and sizes where zero or less means nothing."""
    for key, value in _leaves(section, prefix):
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if not numbers and isinstance(value, (list, tuple)) and key not in zero_ok:
            raise ConfigError(f"{key} is empty: give at least one value")
        for number in numbers:
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                continue
            if not math.isfinite(number):
                raise ConfigError(f"{key}={number} must be a finite number")
            if number < 0 or (number == 0 and key not in zero_ok):
                shown = list(value) if isinstance(value, tuple) else value
                bound = ">= 0" if key in zero_ok else \
                    "a positive integer" if isinstance(number, int) else "> 0"
                raise ConfigError(f"{key}={shown} must be {bound}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """YAML file (optional) + overrides -> a validated Config."""
    data = load_yaml(path) if path else {}
    return from_dict(_merge(data, parse_overrides(overrides)))


def from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every scalar field in the tree."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _leaves(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value))
    return out


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express: every float finite, every count
    positive where zero or less means nothing, every ratio in its range."""
    for key, value in _leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
    for key in sorted(POSITIVE):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be a positive integer")
    for key in sorted(NON_NEGATIVE):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be >= 0{HINTS.get(key, '')}")
    for key in sorted(ABOVE_ZERO):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be > 0")
    for key in sorted(FRACTIONS):
        v = _get(cfg, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key}={v} must lie in [0, 1]")
    if not cfg.compilation_cache.strip():
        raise ConfigError("compilation_cache is empty: give auto, off or a directory")
    if cfg.mesh.data == 0 or cfg.mesh.data < -1:
        raise ConfigError(f"mesh.data={cfg.mesh.data} must be a positive integer or -1 (all remaining devices)")
    if cfg.train.max_steps == 0 or cfg.train.max_steps < -1:
        raise ConfigError(f"train.max_steps={cfg.train.max_steps} must be a positive integer or -1 "
                          "(the epochs decide)")
    if cfg.pipeline.min_extension_ratio < 1.0:
        raise ConfigError(f"pipeline.min_extension_ratio={cfg.pipeline.min_extension_ratio} must be >= 1.0")
    if cfg.pipeline.min_instruction_words > cfg.pipeline.max_instruction_words:
        raise ConfigError(f"pipeline.min_instruction_words={cfg.pipeline.min_instruction_words} exceeds "
                          f"pipeline.max_instruction_words={cfg.pipeline.max_instruction_words}")


def check_context(cfg: Config, max_position_embeddings: int) -> None:
    """The longest prompt plus the longest output must fit the model's positions: stage 2
    of an extension round carries the whole current text and the kept part, and then
    writes up to engine.max_new_tokens more."""
    room = cfg.engine.max_prefill_len + cfg.engine.max_new_tokens
    if room > max_position_embeddings:
        raise ConfigError(
            f"engine.max_prefill_len={cfg.engine.max_prefill_len} + engine.max_new_tokens="
            f"{cfg.engine.max_new_tokens} = {room} exceeds the model's max_position_embeddings="
            f"{max_position_embeddings}; lower engine.max_prefill_len to at most "
            f"{max_position_embeddings - cfg.engine.max_new_tokens}")


def validate_for_model(cfg: Config, num_heads: int) -> None:
    """Checks that need the checkpoint's architecture (heads vs the tensor axis).

    KV heads that the tensor axis does not divide are replicated instead (see parallel/).
    """
    t = cfg.mesh.tensor
    if num_heads % t:
        allowed = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ConfigError(f"mesh.tensor={t} does not divide num_attention_heads={num_heads}; "
                          f"allowed: {', '.join(map(str, allowed))}")

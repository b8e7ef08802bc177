"""The trainer: LoRA leaves the base untouched and learns; runs resume exactly; NaN stops."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import add_tokenizer, make_checkpoint
from selflengthen_jax.checkpoint import orbax_params
from selflengthen_jax.checkpoint.hf_import import load_params, read_config
from selflengthen_jax.checkpoint.tokenizer import load_tokenizer
from selflengthen_jax.models.lora import merge_lora
from selflengthen_jax.models.transformer import forward
from selflengthen_jax.training import trainer
from selflengthen_jax.training.checkpointing import load_adapter, open_manager
from selflengthen_jax.training.data import DataError


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def run(cfg, tiny, data, out, mesh, **kw):
    return trainer.train(cfg, "generator", data, out, tiny.params, tiny.cfg, tiny.tok, mesh, **kw)


@pytest.fixture(scope="module")
def expressive(tmp_path_factory):
    """The tiny model with 10x larger init: its logits span enough for LoRA to memorise."""
    path = make_checkpoint(tmp_path_factory.mktemp("wide") / "m", "qwen2", vocab_size=128,
                           initializer_range=0.2)
    add_tokenizer(path, 128)
    cfg = read_config(path)
    return types.SimpleNamespace(path=path, cfg=cfg, params=load_params(path, cfg),
                                 tok=load_tokenizer(path))


@pytest.fixture
def memorise(tmp_path, records, write_jsonl):
    """Four short records: a LoRA adapter can learn them in a few dozen steps."""
    return write_jsonl(tmp_path / "memorise.jsonl", records(4, seed=1, response_words=(4, 8)))


def test_lora_training_learns_without_touching_the_base(expressive, config, memorise, tmp_path,
                                                        one_device):
    tiny = expressive
    base_before = jax.tree.map(np.array, tiny.params)
    cfg = config(f"model.path={tiny.path}", "train.mode=lora", "train.epochs=30", "train.batch_size=4",
                 "train.learning_rate=0.01",
                 "train.lora.rank=4", "train.lora.alpha=8", "train.save_every=100", "train.log_every=5")
    artifact = run(cfg, tiny, memorise, tmp_path / "out", one_device)

    jax.tree.map(np.testing.assert_array_equal, tiny.params, base_before)
    losses = [m["loss"] for m in metrics(tmp_path / "out")]
    assert losses[-1] < 0.5 * losses[0]
    adapters, meta = load_adapter(artifact)
    assert meta["rank"] == 4 and meta["alpha"] == 8.0 and meta["base_model"] == str(tiny.path)
    peft_cfg = json.loads((artifact / "adapter_config.json").read_text())  # the trained role, for peft/vLLM
    assert (peft_cfg["peft_type"], peft_cfg["r"], peft_cfg["lora_alpha"]) == ("LORA", 4, 8.0)
    assert (artifact / "adapter_model.safetensors").is_file()
    logits = jax.jit(lambda p, lora: forward(p, tiny.cfg, jnp.arange(40)[None] % 100, lora=lora,
                                             lora_scale=2.0).logits)
    unmerged = logits(tiny.params, adapters)
    assert np.abs(unmerged - logits(tiny.params, None)).max() > 1e-2
    np.testing.assert_allclose(logits(merge_lora(tiny.params, adapters, 2.0), None), unmerged, atol=1e-4)
    assert (tmp_path / "out" / "tensorboard").is_dir()


class Interrupted(Exception):
    pass


def checkpointed_run(config, records, write_jsonl, tmp_path):
    """Data and config for a 6-step full fine-tuning run that checkpoints every 2 steps."""
    data = write_jsonl(tmp_path / "d.jsonl", records(12, seed=2))
    cfg = config("train.mode=full", "train.epochs=1", "train.batch_size=2", "train.save_every=2",
                 "train.learning_rate=0.001", "train.warmup_ratio=0.2")
    return data, cfg


def interrupt_after(monkeypatch, calls: int):
    """Make the trainer's step function fail on call `calls + 1` (a killed run)."""
    real = trainer.make_train_step

    def patched(*args, **kwargs):
        step, count = real(*args, **kwargs), [0]

        def maybe_interrupted(*a):
            count[0] += 1
            if count[0] > calls:
                raise Interrupted
            return step(*a)
        return maybe_interrupted
    monkeypatch.setattr(trainer, "make_train_step", patched)


def test_a_stopped_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(
        tiny, config, records, write_jsonl, tmp_path, one_device, monkeypatch):
    data, cfg = checkpointed_run(config, records, write_jsonl, tmp_path)
    straight = run(cfg, tiny, data, tmp_path / "straight", one_device)

    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        run(cfg, tiny, data, tmp_path / "resumed", one_device)
    monkeypatch.undo()
    resumed = run(cfg, tiny, data, tmp_path / "resumed", one_device)

    a = orbax_params.load_params(straight, tiny.cfg)
    b = orbax_params.load_params(resumed, tiny.cfg)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    steps = [m["step"] for m in metrics(tmp_path / "resumed")]
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # step 3 ran twice: its checkpoint was never written


def poison_loss_at(monkeypatch, bad_step: int):
    """Make the trainer's step report a NaN loss at `bad_step` (a diverged run)."""
    real = trainer.make_train_step

    def patched(*args, **kwargs):
        step = real(*args, **kwargs)

        def diverging(state, *rest):
            new, metrics = step(state, *rest)
            if int(new.step) == bad_step:
                metrics = {**metrics, "loss": jnp.float32(jnp.nan)}
            return new, metrics
        return diverging
    monkeypatch.setattr(trainer, "make_train_step", patched)


def test_a_non_finite_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(
        tiny, config, records, write_jsonl, tmp_path, one_device, monkeypatch):
    data, cfg = checkpointed_run(config, records, write_jsonl, tmp_path)
    poison_loss_at(monkeypatch, 3)
    with pytest.raises(trainer.TrainingError, match="loss is nan at step 3.*step 2"):
        run(cfg, tiny, data, tmp_path / "out", one_device)
    manager = open_manager(tmp_path / "out" / "checkpoints", keep=2)
    assert manager.all_steps() == [2]
    manager.close()
    assert not (tmp_path / "out" / "model").exists()


def test_missing_data_fails_before_any_output_is_written(tiny, config, tmp_path, one_device):
    with pytest.raises(DataError, match="nope.jsonl"):
        run(config(), tiny, tmp_path / "nope.jsonl", tmp_path / "out", one_device)
    assert not (tmp_path / "out").exists()


def test_curves_go_to_a_shared_board_on_one_global_step(tiny, config, records, write_jsonl, tmp_path,
                                                         one_device):
    """As the loop trains the generator then the extender: one board, tags by iteration
    and role, the second run's steps continuing after the first's; standalone, a run
    writes train/<role>/... into its own directory."""
    from selflengthen_jax.metrics.tensorboard import Board, TrainingCurve
    from tb_fixtures import scalars

    data = write_jsonl(tmp_path / "d.jsonl", records(4))
    cfg = config("train.max_steps=3", "train.lora.rank=2", "train.lora.dropout=0.1")
    board = Board(tmp_path / "tb")
    first = TrainingCurve(board, "train/iter_1/generator", offset=0)
    trainer.train(cfg, "generator", data, tmp_path / "g", tiny.params, tiny.cfg, tiny.tok, one_device,
                  curve=first)
    second = TrainingCurve(board, "train/iter_1/extender", offset=first.steps)
    trainer.train(cfg, "extender", data, tmp_path / "e", tiny.params, tiny.cfg, tiny.tok, one_device,
                  curve=second)
    board.close()
    got = scalars(tmp_path / "tb")
    assert first.steps == second.steps == 3
    assert [s for s, _ in got["train/iter_1/generator/loss"]] == [1, 2, 3]
    assert [s for s, _ in got["train/iter_1/extender/loss"]] == [4, 5, 6]
    assert {t.rsplit("/", 1)[1] for t in got} == {"loss", "lr", "grad_norm", "tokens_per_s", "step_time_s",
                                                   "epoch"}
    assert not (tmp_path / "g" / "tensorboard").exists()
    run(cfg, tiny, data, tmp_path / "alone", one_device)
    assert [s for s, _ in scalars(tmp_path / "alone" / "tensorboard")["train/generator/loss"]] == [1, 2, 3]


def sigterm_at(monkeypatch, call: int):
    """Deliver a real SIGTERM (a preemption notice) to this process as step `call` starts."""
    import os
    import signal
    real = trainer.make_train_step

    def patched(*args, **kwargs):
        step, count = real(*args, **kwargs), [0]

        def preempted_at(*a):
            count[0] += 1
            if count[0] == call:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(*a)
        return preempted_at
    monkeypatch.setattr(trainer, "make_train_step", patched)


def test_sigterm_saves_an_emergency_step_and_the_restart_resumes_from_it(
        tiny, config, records, write_jsonl, tmp_path, one_device, monkeypatch, capsys):
    from selflengthen_jax.signals import Preempted, stoppable
    data, cfg = checkpointed_run(config, records, write_jsonl, tmp_path)
    straight = run(cfg, tiny, data, tmp_path / "straight", one_device)

    sigterm_at(monkeypatch, 4)  # steps 1-3 done, 2 saved periodically
    with pytest.raises(Preempted), stoppable():
        run(cfg, tiny, data, tmp_path / "resumed", one_device)
    monkeypatch.undo()
    assert "emergency checkpoint: step 3 saved" in capsys.readouterr().out
    manager = open_manager(tmp_path / "resumed" / "checkpoints", keep=2)
    assert manager.all_steps() == [2, 3]
    manager.close()
    resumed = run(cfg, tiny, data, tmp_path / "resumed", one_device)

    steps = [m["step"] for m in metrics(tmp_path / "resumed")]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed from the emergency step: none ran twice
    a = orbax_params.load_params(straight, tiny.cfg)
    b = orbax_params.load_params(resumed, tiny.cfg)
    jax.tree.map(np.testing.assert_array_equal, a, b)

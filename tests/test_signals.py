"""A stop (SIGTERM, Ctrl-C) is never lost: raised at once, raised again after a swallowed
raise, or, inside `deferred()`, kept until asked for and raised at the block's end."""

import gc
import os
import signal

import pytest

from selflengthen_jax import signals


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode


def test_a_signal_raises_preempted_with_the_exit_code():
    with pytest.raises(signals.Preempted) as stop, signals.stoppable():
        sigterm()
    assert stop.value.exit_code == 143 and str(stop.value) == "stopped by signal SIGTERM"
    signals.check()  # the stop left the block: nothing pending afterwards


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed raise
def test_a_raise_swallowed_by_a_gc_callback_is_raised_again_at_the_next_check():
    def callback(phase, info):
        if phase == "start":
            sigterm()  # as a SIGTERM landing in jaxlib's gc callback: printed, not raised
    with pytest.raises(signals.Preempted), signals.stoppable():
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        signals.check()


def test_deferred_keeps_the_signal_until_taken():
    with signals.stoppable(), signals.deferred():
        sigterm()
        signals.check()  # silent while deferred
        assert signals.take() == signal.SIGTERM
        assert signals.take() == 0


def test_a_signal_left_untaken_is_raised_when_the_deferred_block_ends():
    with pytest.raises(signals.Preempted), signals.stoppable():
        with signals.deferred():
            sigterm()
        pytest.fail("the pending stop must be raised at the end of the block")

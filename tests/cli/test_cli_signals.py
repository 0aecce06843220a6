"""How the command line turns stop signals into a teardown (`fl_core.cli.signals`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from fl_core.cli import signals as cli_signals
from fl_core.cli.signals import Interrupted


@pytest.fixture(autouse=True)
def _signals_as_from_a_terminal() -> Iterator[None]:
    # The runner may have been started with SIGINT or SIGHUP ignored (a CI job in
    # the background, `nohup`), and an ignored signal rightly stays ignored.
    before = {sig: signal.getsignal(sig) for sig in cli_signals.STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _send(sig: signal.Signals) -> None:
    # To this process: CPython runs the handler in the main thread as soon as kill returns.
    os.kill(os.getpid(), sig)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_each_stop_signal_raises_an_interrupt_with_its_exit_code(
    sig: signal.Signals, code: int
) -> None:
    with cli_signals.handled(), pytest.raises(Interrupted) as info:
        _send(sig)
    assert info.value.exit_code == code
    assert isinstance(info.value, KeyboardInterrupt)  # every Ctrl-C path tears down for it


def test_the_old_handlers_come_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in cli_signals.STOP_SIGNALS}
    with cli_signals.handled():
        pass
    assert {sig: signal.getsignal(sig) for sig in cli_signals.STOP_SIGNALS} == before


def test_a_signal_during_a_held_teardown_is_raised_after_it() -> None:
    finished = False
    with cli_signals.handled(), pytest.raises(Interrupted) as info:
        with cli_signals.held():
            _send(signal.SIGTERM)
            finished = True  # not cut short
    assert finished
    assert info.value.exit_code == 143


def test_after_the_first_signal_a_teardown_is_not_interrupted_again() -> None:
    with cli_signals.handled():
        cli_signals.teardown_only()
        with pytest.raises(Interrupted):
            _send(signal.SIGTERM)
        _send(signal.SIGINT)  # ignored: the teardown the first one began goes on
        _send(signal.SIGTERM)
        assert cli_signals.received() == signal.SIGTERM


def test_an_ignored_signal_stays_ignored() -> None:
    # `nohup fl-core ...` ignores SIGHUP on purpose.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli_signals.handled():
            _send(signal.SIGHUP)
            assert cli_signals.received() is None
    finally:
        signal.signal(signal.SIGHUP, previous)

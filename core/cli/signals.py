"""How `fl-core` stops when it is told to: Ctrl-C, SIGTERM and SIGHUP alike.

Python's default for SIGTERM and SIGHUP ends the process at once, so no
`finally` runs, and a POC that `fl-core run --mode poc` started would be left
running, orphaned. While `handled()` is active, each of the three signals
raises `Interrupted` (a `KeyboardInterrupt`, so every Ctrl-C path already
tears down for it) and the command exits 128 + the signal number, as a shell
reports a process killed by it: 130, 143 and 129.

A command that owns processes calls `teardown_only()`: after the first
signal, further ones are ignored, so a second Ctrl-C or a SIGTERM from
`timeout` cannot cut the teardown short and leave processes behind; and it
tears down inside `held()`, where a signal is noted and raised only after.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

__all__ = ["STOP_SIGNALS", "Interrupted", "handled", "held", "received", "teardown_only"]

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command cleanly; each raises `Interrupted`."""

_REASONS: Final = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated (SIGTERM)",
    signal.SIGHUP: "hung up (SIGHUP)",
}


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `exit_code` is what the command exits with."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """A short phrase for the user: `interrupted`, `terminated (SIGTERM)`, ..."""
        return _REASONS.get(signal.Signals(self.signum), signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class _State:
    received: int | None = None
    """The first stop signal of this command, if any."""
    raised: bool = False
    """Whether `Interrupted` has been raised for it."""
    once: bool = False
    """Set by `teardown_only()`: after the first raise, signals are ignored."""
    holding: int = 0
    """Depth of `held()`: signals are noted, not raised, inside it."""


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _State.received is None:
        _State.received = signum
    if _State.holding or (_State.once and _State.raised):
        return  # a teardown under way finishes; it is what the user asked for
    _State.raised = True
    raise Interrupted(signum)


def received() -> int | None:
    """The first stop signal received while `handled()` was active, or None."""
    return _State.received


def teardown_only() -> None:
    """From now on, only the first stop signal raises; later ones are ignored.

    Called by a command that owns processes, so that the teardown the first
    signal starts is not itself interrupted by a second one.
    """
    _State.once = True


@contextmanager
def held() -> Iterator[None]:
    """Note stop signals without raising while tearing down; raise the noted one after.

    A signal that arrives inside is raised as `Interrupted` when the outermost
    `held()` exits, unless one was raised already.
    """
    _State.holding += 1
    try:
        yield
    finally:
        _State.holding -= 1
    if not _State.holding and _State.received is not None and not _State.raised:
        _State.raised = True
        raise Interrupted(_State.received)


@contextmanager
def handled() -> Iterator[None]:
    """Raise `Interrupted` on each stop signal while active; restore the old handlers after.

    A signal that is ignored when it starts (`nohup` ignores SIGHUP, a
    background job SIGINT) stays ignored. Outside the main thread, where
    signals cannot be handled, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.received = None
    _State.raised = _State.once = False
    _State.holding = 0
    previous: dict[signal.Signals, signal.Handlers | int | object] = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)  # type: ignore[arg-type]

"""The shared timer thread: order, cancel, survival of failing callbacks, close."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

from fl_core.cell.timer import Timer

WAIT = 10.0  # generous: only reached when something is broken


@pytest.fixture
def timer() -> Iterator[Timer]:
    timer = Timer(name="test-timer")
    yield timer
    timer.close()


def recorder(log: list[str], name: str, done: threading.Event | None = None) -> Callable[[], None]:
    def callback() -> None:
        log.append(name)
        if done is not None:
            done.set()

    return callback


def test_callbacks_run_in_order_of_their_due_time(timer: Timer) -> None:
    ran: list[str] = []
    done = threading.Event()
    # Scheduled out of order; the last one due signals the end.
    timer.call_later(0.10, recorder(ran, "third"))
    timer.call_later(0.20, recorder(ran, "fourth", done))
    timer.call_later(0.0, recorder(ran, "first"))
    timer.call_later(0.05, recorder(ran, "second"))
    assert done.wait(WAIT)
    assert ran == ["first", "second", "third", "fourth"]


def test_callbacks_due_at_once_run_in_the_order_scheduled(timer: Timer) -> None:
    ran: list[str] = []
    done = threading.Event()
    release = threading.Event()

    def hold() -> None:
        release.wait(WAIT)

    timer.call_later(0.0, hold)  # holds the thread while the rest are queued
    for index in range(5):
        timer.call_later(-1.0, recorder(ran, str(index), done if index == 4 else None))
    release.set()
    assert done.wait(WAIT)
    assert ran == ["0", "1", "2", "3", "4"]


def test_a_cancelled_callback_never_runs(timer: Timer) -> None:
    ran: list[str] = []
    done = threading.Event()
    handle = timer.call_later(0.05, recorder(ran, "cancelled"))
    timer.call_later(0.10, recorder(ran, "kept", done))
    handle.cancel()
    assert done.wait(WAIT)
    assert ran == ["kept"]
    handle.cancel()  # again, and after its time: no effect, no error


def test_cancelling_releases_what_the_callback_holds(timer: Timer) -> None:
    class Payload:
        pass

    refs = []
    handles = []
    for _ in range(600):
        payload = Payload()
        refs.append(weakref.ref(payload))
        handles.append(timer.call_later(600.0, lambda p=payload: None))  # type: ignore[misc]
        del payload
    for handle in handles:
        handle.cancel()
    del handles
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_a_failing_callback_does_not_stop_later_ones(
    timer: Timer, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    timer.call_later(0.0, fail)
    timer.call_later(0.05, recorder(ran, "after", done))
    with caplog.at_level(logging.ERROR, logger="fl_core.cell.timer"):
        assert done.wait(WAIT)
    assert ran == ["after"]
    assert "timer callback failed" in caplog.text


def test_close_stops_the_thread_and_drops_pending_callbacks() -> None:
    ran: list[str] = []
    timer = Timer(name="test-timer-close")
    timer.call_later(0.2, recorder(ran, "late"))
    timer.close()
    assert not any(t.name == "test-timer-close" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="timer is closed"):
        timer.call_later(0.0, recorder(ran, "after close"))
    timer.close()  # idempotent
    assert ran == []


def test_close_from_inside_a_callback_does_not_deadlock() -> None:
    timer = Timer(name="test-timer-self-close")
    done = threading.Event()

    def close_itself() -> None:
        timer.close()
        done.set()

    timer.call_later(0.0, close_itself)
    assert done.wait(WAIT)
    timer.close()
    for thread in threading.enumerate():
        if thread.name == "test-timer-self-close":
            thread.join(WAIT)
            assert not thread.is_alive()

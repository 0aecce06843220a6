"""One thread that runs delayed callbacks: request timeouts, retries, polls.

Many cells share one `Timer`, so a thousand simulated sites do not mean a
thousand timer threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


_COMPACT_MIN = 256
"""Cancelled entries tolerated in the heap before it is rebuilt without them."""


def _noop() -> None:
    pass


class TimerHandle:
    """A scheduled callback; `cancel()` stops it if it has not run."""

    __slots__ = ("_on_cancel", "callback", "cancelled", "when")

    def __init__(
        self,
        when: float,
        callback: Callable[[], None],
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._on_cancel = on_cancel  # tells the timer's heap, while the handle is in it

    def cancel(self) -> None:
        """Prevent the callback from running (no effect once it ran)."""
        if self.cancelled:
            return
        self.cancelled = True
        # Release the closure now (it often holds a cell and a message), not
        # when the entry finally leaves the heap.
        self.callback = _noop
        on_cancel = self._on_cancel  # read once: the timer's thread may detach it meanwhile
        if on_cancel is not None:
            on_cancel()

    def detach(self) -> None:
        """The handle left its timer's heap: a later `cancel` concerns the timer no more."""
        self._on_cancel = None


class Timer:
    """Runs callbacks after a delay on one daemon thread.

    Callbacks must be quick (complete a future, queue work): a slow one
    delays every other timer.
    """

    def __init__(self, name: str = "fl-core-timer") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` after `delay` seconds; raises `RuntimeError` once closed."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback, self._on_cancel)
        with self._cond:
            if self._closed:
                raise RuntimeError("timer is closed")
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            if self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def _on_cancel(self) -> None:
        # Most timers (request timeouts) are cancelled long before they are
        # due; without compaction a busy cell keeps every one of them, and
        # its closure, alive for the full timeout.
        with self._cond:
            self._cancelled += 1
            if self._cancelled > _COMPACT_MIN and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def close(self) -> None:
        """Stop the thread; pending callbacks never run."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, handle = heapq.heappop(self._heap)
                # Detach: a later cancel() of a handle that left the heap must
                # not count towards compaction.
                handle.detach()
                if handle.cancelled and self._cancelled > 0:
                    self._cancelled -= 1
            if not handle.cancelled:
                try:
                    handle.callback()
                except Exception:
                    # A timer callback belongs to someone else's code path; the
                    # timer must survive it to serve every other cell.
                    log.exception("timer callback failed")

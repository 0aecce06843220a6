"""One asyncio event loop on one daemon thread, for plugins that do their I/O in asyncio.

A transport's public methods are called from ordinary threads; `LoopThread`
starts the loop on first use, runs coroutines on it for those callers, and
stops it once, after an optional shutdown coroutine::

    loops = LoopThread("fl-mytransport-loop", "the mytransport transport")
    url = loops.run(self._listen(url), timeout=10)   # from any thread
    loops.stop(self._shutdown, timeout=15)           # closing the transport
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fl_core.errors import CellError

__all__ = ["LoopThread"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class LoopThread:
    """An event loop on a daemon thread named `name`, owned by `owner` (for errors)."""

    def __init__(self, name: str, owner: str) -> None:
        self._name = name
        self._owner = owner
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop while it runs; None before the first use and after `stop`."""
        with self._lock:
            return None if self._closed else self._loop

    def start(self) -> asyncio.AbstractEventLoop:
        """The running loop, started now if need be; `CellError` once stopped."""
        with self._lock:
            if self._closed:
                raise CellError(f"{self._owner} is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for its result; `TimeoutError` cancels it."""
        try:
            loop = self.start()
        except CellError:
            coro.close()  # never started: closing it spares a "never awaited" warning
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Schedule `callback` on the loop; nothing happens if it is not running."""
        loop = self.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:
                pass  # stopped meanwhile

    def stop(
        self, shutdown: Callable[[], Coroutine[Any, Any, None]] | None, timeout: float
    ) -> None:
        """Refuse further use, run `shutdown()` on the loop, then end the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if shutdown is not None:
            future = asyncio.run_coroutine_threadsafe(shutdown(), loop)
            try:
                future.result(timeout)
            except Exception:
                log.exception("error while closing %s", self._owner)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

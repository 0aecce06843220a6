"""Threads that many cells of one process share."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from fl_core.cell.timer import Timer


@dataclass
class CellResources:
    """Threads that many cells can share: handlers, stream senders, a timer."""

    dispatcher: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="fl-cell")
    )
    streamer: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="fl-stream")
    )
    """Sends the chunks of large payloads, pacing each stream by its window."""
    timer: Timer = field(default_factory=Timer)

    def close(self) -> None:
        """Stop the timer and the pools (waits for running handlers and streams)."""
        self.timer.close()
        self.dispatcher.shutdown(wait=True, cancel_futures=True)
        self.streamer.shutdown(wait=True, cancel_futures=True)

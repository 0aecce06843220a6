"""The requests a cell is waiting on: each completed exactly once, by reply, timeout or loss."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

from fl_core.cell.message import Header, Message, Status
from fl_core.cell.timer import Timer, TimerHandle
from fl_core.errors import (
    CellError,
    NoHandlerError,
    RemoteError,
    RequestTimeoutError,
    TargetUnreachableError,
)
from fl_core.spec.transport import Connection

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingRequest:
    """A request in flight: who it went to, over which link, and its future."""

    future: Future[Message]
    target: str
    channel: str
    topic: str
    timeout: float
    link: Connection | None
    timer: TimerHandle | None = None

    # A caller may cancel its future at any time; then nobody waits for the
    # answer, and completing the future must not fail the replying thread.
    def resolve(self, reply: Message) -> None:
        """Complete with the reply."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(reply)

    def fail(self, error: CellError) -> None:
        """Complete with an error."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(error)


class PendingRequests:
    """The table of a cell's requests in flight, with their timeouts."""

    def __init__(self, timer: Timer) -> None:
        self._timer = timer
        self._lock = threading.Lock()
        self._table: dict[str, PendingRequest] = {}
        self._closed_reason: str | None = None

    def add(self, msg_id: str, request: PendingRequest) -> None:
        """Track `request` and start its timeout; fails it at once if that cannot be done."""
        with self._lock:
            refused = self._closed_reason
            if refused is None:
                self._table[msg_id] = request
        if refused is not None:
            request.fail(CellError(refused))
            return
        try:
            request.timer = self._timer.call_later(request.timeout, lambda: self._expire(msg_id))
        except RuntimeError:
            # Without a timer the request could wait forever.
            self.fail(msg_id, CellError("the cell's resources are closed"))
            return
        request.future.add_done_callback(
            lambda done: self.take(msg_id) if done.cancelled() else None
        )

    def take(self, msg_id: str) -> PendingRequest | None:
        """Remove a request (each is completed once) and stop its timer."""
        with self._lock:
            request = self._table.pop(msg_id, None)
        if request is not None and request.timer is not None:
            request.timer.cancel()
        return request

    def waiting(self, msg_id: str) -> bool:
        """Whether the request `msg_id` still waits for its reply."""
        with self._lock:
            return msg_id in self._table

    def fail(self, msg_id: str, error: CellError) -> None:
        """Fail one request, if it is still waiting."""
        request = self.take(msg_id)
        if request is not None:
            request.fail(error)

    def fail_link(self, link: Connection, detail: str) -> None:
        """Fail every request that went out over `link`: its target is unreachable now."""
        self._fail_where(
            lambda r: r.link is link, lambda r: TargetUnreachableError(r.target, detail)
        )

    def close(self, reason: str) -> None:
        """Fail everything in flight and refuse new requests with `reason`."""
        with self._lock:
            self._closed_reason = reason
        self._fail_where(lambda r: True, lambda r: CellError(reason))

    def on_reply(self, reply: Message) -> None:
        """Complete the request `reply` answers, mapping its status to a result or error."""
        msg_id = reply.get(Header.IN_REPLY_TO)
        status = reply.get(Header.STATUS)
        with self._lock:
            request = self._table.get(msg_id)
            # Only the cell asked answers; a cell on the way may only say it cannot
            # reach it. Origins are checked link by link, so this cannot be forged.
            if request is None or (status != Status.UNREACHABLE and reply.origin != request.target):
                if request is not None:
                    log.warning(
                        "a reply to %s's request %s came from %s: dropped",
                        request.target,
                        msg_id,
                        reply.origin,
                    )
                return  # late (timed out, cancelled), or not from the cell asked
        request = self.take(msg_id)
        if request is None:
            return  # it timed out meanwhile
        detail = reply.get(Header.ERROR)
        if status == Status.OK:
            request.resolve(reply)
        elif status == Status.UNREACHABLE:
            request.fail(TargetUnreachableError(request.target, detail))
        elif status == Status.NO_HANDLER:
            facts = {"fqcn": request.target, "channel": request.channel, "topic": request.topic}
            request.fail(NoHandlerError(detail, **facts))
        else:
            request.fail(RemoteError(request.target, request.channel, request.topic, detail))

    def _expire(self, msg_id: str) -> None:
        request = self.take(msg_id)
        if request is not None:
            request.fail(
                RequestTimeoutError(request.target, request.channel, request.topic, request.timeout)
            )

    def _fail_where(
        self,
        chosen: Callable[[PendingRequest], bool],
        error: Callable[[PendingRequest], CellError],
    ) -> None:
        with self._lock:
            keys = [k for k, r in self._table.items() if chosen(r)]
        for key in keys:
            request = self.take(key)
            if request is not None:
                request.fail(error(request))

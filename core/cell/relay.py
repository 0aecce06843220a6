"""What a relaying cell remembers of the traffic it forwards.

`RelayedRequests`: requests forwarded toward another cell and not yet seen
answered. When the link a request went out on closes, the relay answers the
requester at once with UNREACHABLE instead of leaving it to its timeout;
that is what makes a lost peer fail promptly even two hops away.

`RelayedStreams`: streams being forwarded, with both their links, so that
when either closes the end still waiting is told (an ABORT) at once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from fl_core.cell.message import Header, Message, MessageType
from fl_core.cell.timer import Timer, TimerHandle
from fl_core.spec.transport import Connection, Frame

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 24 * 3600.0
"""A record outlives its request's timeout by nothing; a peer cannot make it live for ever."""


def request_timeout(message: Message) -> float:
    """The timeout the requester gave (`Header.TIMEOUT`), bounded, or the default."""
    try:
        value = float(message.get(Header.TIMEOUT, str(DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT
    if not math.isfinite(value) or value <= 0:
        return DEFAULT_TIMEOUT
    return min(value, MAX_TIMEOUT)


class RelayedRequests:
    """The table of forwarded requests, by message id."""

    def __init__(self, timer: Timer) -> None:
        self._timer = timer
        self._lock = threading.Lock()
        self._table: dict[str, tuple[Message, Connection, TimerHandle | None]] = {}

    def forwarded(self, request: Message, link: Connection) -> None:
        """Remember that `request` went out on `link` (headers only: never the payload)."""
        msg_id = request.get(Header.MSG_ID)
        if not msg_id:
            return
        record = Message(dict(request.headers), None)
        try:
            timer: TimerHandle | None = self._timer.call_later(
                request_timeout(request), lambda: self.answered(msg_id)
            )
        except RuntimeError:
            return  # the cell is closing; nothing will be relayed any more
        with self._lock:
            self._table[msg_id] = (record, link, timer)

    def answered(self, msg_id: str) -> None:
        """Forget a request whose reply passed through (or whose time ran out)."""
        with self._lock:
            entry = self._table.pop(msg_id, None)
        if entry is not None and entry[2] is not None:
            entry[2].cancel()

    def lost(self, link: Connection) -> list[Message]:
        """Forget and return the requests that went out on `link`, which has closed."""
        with self._lock:
            keys = [k for k, (_, out, _) in self._table.items() if out is link]
            entries = [self._table.pop(k) for k in keys]
        for _, _, timer in entries:
            if timer is not None:
                timer.cancel()
        return [request for request, _, _ in entries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)


@dataclass(slots=True)
class RelayedStream:
    """A stream this cell forwards: its two links and how far it got."""

    origin: str
    sid: str
    destination: str
    inbound: Connection
    outbound: Connection
    size: int
    forwarded: int


def _size_header(headers: dict[str, str]) -> int | None:
    value = headers.get(Header.SIZE, "")
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 20 else None


class RelayedStreams:
    """The table of streams in transit through this cell, by (origin, stream id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[tuple[str, str], RelayedStream] = {}

    def track(self, inbound: Connection, outbound: Connection, frame: Frame) -> None:
        """Account for one forwarded frame (only headers and body size are read)."""
        headers = frame.headers
        sid = headers.get(Header.STREAM)
        if sid is None:
            return
        kind = headers.get(Header.MSG_TYPE)
        if kind == MessageType.ACK:
            return
        if kind == MessageType.ABORT:
            self.forget(headers.get(Header.STREAM_ORIGIN, ""), sid)
            return
        body = frame.body
        size = memoryview(body).nbytes if isinstance(body, bytes | bytearray | memoryview) else 0
        key = (headers.get(Header.ORIGIN, ""), sid)
        with self._lock:
            if kind == MessageType.CHUNK:
                record = self._table.get(key)
                if record is not None:
                    record.forwarded += size
                    if record.forwarded >= record.size:
                        del self._table[key]
                return
            total = _size_header(headers)
            if total is not None and size < total:  # a bad size: the receiver refuses it
                destination = headers.get(Header.DESTINATION, "")
                self._table[key] = RelayedStream(
                    key[0], sid, destination, inbound, outbound, total, size
                )

    def forget(self, origin: str, sid: str) -> None:
        """Stop tracking a stream (it was aborted, or could not be forwarded)."""
        with self._lock:
            self._table.pop((origin, sid), None)

    def lost(self, link: Connection) -> list[RelayedStream]:
        """Forget and return the streams that used `link`, which has closed."""
        with self._lock:
            keys = [k for k, r in self._table.items() if link in (r.inbound, r.outbound)]
            return [self._table.pop(k) for k in keys]

    def clear(self) -> None:
        """Forget everything (the cell is closing)."""
        with self._lock:
            self._table.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

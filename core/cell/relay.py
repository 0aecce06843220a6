"""What a relaying cell remembers of the traffic it forwards.

`RelayedRequests`: requests forwarded toward another cell and not yet seen
answered. When the link a request went out on closes, the relay answers the
requester at once with UNREACHABLE instead of leaving it to its timeout;
that is what makes a lost peer fail promptly even two hops away.

`RelayedStreams`: streams being forwarded, with both their links, so that
when either closes the end still waiting is told (an ABORT) at once; bounded
per inbound link and forgotten when idle, so a peer cannot grow it for ever.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.stream_state import StreamSettings, describe, on_path
from fl_core.cell.timer import Timer, TimerHandle
from fl_core.errors import CellError
from fl_core.spec.transport import Connection, Frame

log = logging.getLogger("fl_core.cell")

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
    heard: float
    """When a frame of it (data, or an ACK coming back) last passed: for idle expiry."""


def _size_header(headers: dict[str, str]) -> int | None:
    value = headers.get(Header.SIZE, "")
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 20 else None


Expired = Callable[[RelayedStream, str], None]


class RelayedStreams:
    """The table of streams in transit through this cell, by (origin, stream id).

    Bounded two ways: at most `per_link` streams for each inbound link (a
    first frame over that is refused: `track` raises, and the link goes on
    carrying everything else), and a stream nothing passed for
    `idle_timeout` is forgotten and reported to `expired` (which tells both
    ends). The expiry is one sweep on the shared timer, every third of the
    idle timeout while anything is tracked: no thread, and no timer per stream.
    """

    def __init__(self, timer: Timer, per_link: int, idle_timeout: float, expired: Expired) -> None:
        self._timer = timer
        self._per_link = per_link
        self._idle_timeout = idle_timeout
        self._expired = expired
        self._lock = threading.Lock()
        self._table: dict[tuple[str, str], RelayedStream] = {}
        self._counts: dict[Connection, int] = {}  # streams per inbound link
        self._sweeping = False  # a sweep is due; set under the lock before it is scheduled
        self._sweep: TimerHandle | None = None  # the latest one, for clear()

    def track(self, inbound: Connection, outbound: Connection, frame: Frame) -> bool:
        """Account for one frame to forward (only headers and body size are read).

        False for a frame not to forward: a chunk of a stream this cell does
        not relay (refused, failed, expired: its ends were told). Raises
        `CellError` saying why for the first frame of a stream over the cap.
        """
        headers = frame.headers
        sid = headers.get(Header.STREAM)
        if sid is None:
            return True
        kind = headers.get(Header.MSG_TYPE)
        if kind == MessageType.ACK:
            self._acked(inbound, headers, sid)
            return True
        if kind == MessageType.ABORT:
            self._aborted(inbound, headers, sid)
            return True  # the end it is for decides whether to honour it
        body = frame.body
        size = memoryview(body).nbytes if isinstance(body, bytes | bytearray | memoryview) else 0
        key = (headers.get(Header.ORIGIN, ""), sid)
        with self._lock:
            if kind == MessageType.CHUNK:
                record = self._table.get(key)
                if record is None or record.inbound is not inbound:
                    return False
                record.forwarded += size
                record.heard = time.monotonic()
                if record.forwarded >= record.size:
                    self._remove(key)
                return True
            total = _size_header(headers)
            if total is None or size >= total or key in self._table:
                return True  # a bad first frame: its receiver refuses it
            count = self._counts.get(inbound, 0)
            if count >= self._per_link:
                origin = key[0]
                raise CellError(
                    f"it already relays {count} streams from {origin}'s link (max_relayed_per_link)"
                )
            destination = headers.get(Header.DESTINATION, "")
            self._table[key] = RelayedStream(
                key[0], sid, destination, inbound, outbound, total, size, time.monotonic()
            )
            self._counts[inbound] = count + 1
            start_sweep, self._sweeping = not self._sweeping, True
        if start_sweep:
            self._schedule_sweep()
        return True

    def _acked(self, inbound: Connection, headers: dict[str, str], sid: str) -> None:
        # Acknowledgements of a slow consumer are a stream's only traffic for
        # a while: they keep it alive, if they come from its receiver's side.
        with self._lock:
            record = self._table.get((headers.get(Header.DESTINATION, ""), sid))
            if (
                record is not None
                and record.outbound is inbound
                and headers.get(Header.ORIGIN) == record.destination
            ):
                record.heard = time.monotonic()

    def _aborted(self, inbound: Connection, headers: dict[str, str], sid: str) -> None:
        # Forgetting a stream makes this relay drop its chunks: only an ABORT
        # its ends would honour may do that (see `streams`).
        key = (headers.get(Header.STREAM_ORIGIN, ""), sid)
        with self._lock:
            record = self._table.get(key)
            if (
                record is not None
                and inbound in (record.inbound, record.outbound)
                and on_path(headers.get(Header.ORIGIN, ""), record.origin, record.destination)
            ):
                self._remove(key)

    def _remove(self, key: tuple[str, str]) -> RelayedStream | None:
        """Drop one record; the caller holds the lock."""
        record = self._table.pop(key, None)
        if record is not None:
            left = self._counts.get(record.inbound, 0) - 1
            if left > 0:
                self._counts[record.inbound] = left
            else:
                self._counts.pop(record.inbound, None)
        return record

    def _schedule_sweep(self) -> None:
        try:
            handle = self._timer.call_later(self._idle_timeout / 3, self._sweep_idle)
        except RuntimeError:
            with self._lock:
                self._sweeping = False  # the cell is closing; close() clears the table
            return
        with self._lock:
            self._sweep = handle

    def _sweep_idle(self) -> None:
        stale = time.monotonic() - self._idle_timeout
        with self._lock:
            keys = [k for k, r in self._table.items() if r.heard <= stale]
            expired = [r for r in map(self._remove, keys) if r is not None]
            again = self._sweeping = bool(self._table)
        why = f"no frame for {self._idle_timeout:g} s"
        for record in expired:
            self._expired(record, why)
        if again:
            self._schedule_sweep()

    def forget(self, origin: str, sid: str) -> None:
        """Stop tracking a stream (it could not be forwarded)."""
        with self._lock:
            self._remove((origin, sid))

    def lost(self, link: Connection) -> list[RelayedStream]:
        """Forget and return the streams that used `link`, which has closed."""
        with self._lock:
            keys = [k for k, r in self._table.items() if link in (r.inbound, r.outbound)]
            return [r for r in map(self._remove, keys) if r is not None]

    def clear(self) -> None:
        """Forget everything (the cell is closing)."""
        with self._lock:
            self._table.clear()
            self._counts.clear()
            self._sweeping = False
            sweep, self._sweep = self._sweep, None
        if sweep is not None:
            sweep.cancel()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)


Abort = Callable[[str, str, str, str], None]
"""Sends an UNREACHABLE ABORT: (to, stream origin, stream id, reason)."""

Answer = Callable[[Message, Status, str], None]
"""Answers a request with an error reply: (request, status, reason)."""


class StreamRelay:
    """What a cell does with the stream frames it forwards: track them, refuse
    streams over the per-link cap, and tell the ends when a stream is lost."""

    def __init__(
        self, fqcn: str, timer: Timer, settings: StreamSettings, abort: Abort, answer: Answer
    ) -> None:
        self._fqcn = fqcn
        self._abort = abort
        self._answer = answer
        self._table = RelayedStreams(
            timer,
            settings.max_relayed_per_link,
            settings.idle_timeout,
            self._expired,
        )

    def on_relay(self, inbound: Connection, outbound: Connection, frame: Frame) -> bool:
        """Track a stream frame this cell forwards (headers only, never the body).

        False for a frame that must not be forwarded: a chunk of a stream
        this cell does not relay, or a stream over the per-link cap (refused
        here: its sender, and a requester waiting on it, are told why).
        """
        try:
            return self._table.track(inbound, outbound, frame)
        except CellError as exc:
            self._refuse(frame.headers, f"{self._fqcn} refused the stream: {exc}")
            return False

    def _refuse(self, headers: dict[str, str], reason: str) -> None:
        log.warning("%s: %s (%s)", self._fqcn, reason, describe(headers))
        origin = headers.get(Header.ORIGIN, "")
        self._abort(origin, origin, headers.get(Header.STREAM, ""), reason)
        # A sender that already pumped all it had would not see the ABORT:
        # answer whoever waits for the request this stream is or answers.
        kind = headers.get(Header.MSG_TYPE)
        if kind == MessageType.REQUEST:
            waiting = Message(headers, None)
        elif kind == MessageType.REPLY:
            waiting = Message(
                {
                    **headers,
                    Header.ORIGIN: headers.get(Header.DESTINATION, ""),
                    Header.MSG_ID: headers.get(Header.IN_REPLY_TO, ""),
                },
                None,
            )
        else:
            return
        self._answer(waiting, Status.UNREACHABLE, reason)

    def _expired(self, record: RelayedStream, why: str) -> None:
        """A relayed stream went idle: tell both ends (each fails it at once)."""
        reason = f"{self._fqcn} forgot the stream it relayed: {why}"
        log.warning("%s: %s -> %s: %s", self._fqcn, record.origin, record.destination, why)
        for end in (record.origin, record.destination):
            self._abort(end, record.origin, record.sid, reason)

    def failed(self, frame: Frame, reason: str) -> None:
        """A stream frame could not be forwarded: tell its sender."""
        headers = frame.headers
        sid = headers.get(Header.STREAM)
        if sid is None or headers.get(Header.MSG_TYPE) in (MessageType.ACK, MessageType.ABORT):
            return
        origin = headers.get(Header.ORIGIN, "")
        self._table.forget(origin, sid)
        self._abort(origin, origin, sid, reason)

    def link_closed(self, conn: Connection, detail: str) -> None:
        """Tell the far end of every relayed stream that used `conn` that it is lost."""
        me = self._fqcn
        for record in self._table.lost(conn):
            if record.outbound is conn:
                why = f"the link from {me} toward {record.destination} closed ({detail})"
                self._abort(record.origin, record.origin, record.sid, why)
            else:
                why = f"the link from {me} toward {record.origin} closed ({detail})"
                self._abort(record.destination, record.origin, record.sid, why)

    def clear(self) -> None:
        """Forget everything (the cell is closing)."""
        self._table.clear()

    def __len__(self) -> int:
        return len(self._table)

"""The records behind streams: settings, the state of each stream in flight, and the
table of incoming streams with their idle checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from fl_core.cell.fqcn import SEPARATOR
from fl_core.cell.message import Header, Message
from fl_core.cell.payload import MiB, PayloadAssembler, PayloadLimits
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.spec.transport import Connection

if TYPE_CHECKING:
    from fl_core.cell.incoming import IncomingPayload
    from fl_core.cell.timer import Timer, TimerHandle


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How a cell chunks, paces and bounds payloads on wire transports."""

    chunk_size: int = 2 * MiB
    """Bytes per chunk frame; payloads up to this size travel as one frame."""
    window: int = 16 * MiB
    """Unacknowledged bytes a sender may have in flight per stream."""
    idle_timeout: float = 60.0
    """Seconds without data (receiver) or acknowledgement (sender) before a stream fails."""
    limits: PayloadLimits = field(default_factory=PayloadLimits)
    """What this cell accepts from peers."""
    max_incoming: int = 1024
    """Streams this cell receives at once; more are refused (each holds an assembler)."""
    max_relayed_per_link: int = 1024
    """Streams this cell relays at once for each link they come in on; more are
    refused with an ABORT, and the link stays up for everything else."""

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {self.chunk_size}")
        if self.window < self.chunk_size:
            raise ValueError(f"window ({self.window}) must hold a chunk ({self.chunk_size})")
        if not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, not {self.idle_timeout}")
        if self.max_relayed_per_link <= 0:
            raise ValueError(
                f"max_relayed_per_link must be positive, not {self.max_relayed_per_link}"
            )


def _lineage(fqcn: str) -> set[str]:
    parts = fqcn.split(SEPARATOR)
    return {SEPARATOR.join(parts[: i + 1]) for i in range(len(parts))}


def on_path(cell: str, one_end: str, other_end: str) -> bool:
    """Whether `cell` is an end of the stream between the two ends, or a relay on its path.

    By name, as the tree routes: the path climbs from each end through its
    name-ancestors to the lowest one they share (`server.j` and `site-1.j`:
    `server`, `site-1`), which it crosses. A root that is neither end's
    name-ancestor (the server between `site-1.j` and `site-2.j`) cannot be
    told apart by name from any other cell, so it is not on the path here.
    """
    ends, lineage = (one_end, other_end), (_lineage(one_end), _lineage(other_end))
    if cell in ends:
        return True
    shared = lineage[0] & lineage[1]
    if shared and cell == max(shared, key=len):
        return True
    return cell in lineage[0] ^ lineage[1]


def describe(headers: dict[str, str]) -> str:
    return (
        f"{headers.get(Header.MSG_TYPE, 'message')} {headers.get(Header.ORIGIN, '?')} -> "
        f"{headers.get(Header.DESTINATION, '?')} on {headers.get(Header.CHANNEL, '?')}/"
        f"{headers.get(Header.TOPIC, '?')}"
    )


def int_header(headers: dict[str, str], name: str) -> int:
    value = headers.get(name, "")
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise CellError(f"bad {name} header {value!r}")
    return int(value)


class Outgoing:
    """A stream this cell sends: what the receiver acknowledged, or why it failed."""

    def __init__(self, target: str, link: Connection, message: Message) -> None:
        self.target = target
        self.link = link
        self.message = message
        self.cond = threading.Condition()
        self.acked = 0
        self.heard = 0  # ACKs received, repeats included: the receiver is alive
        self.error: CellError | None = None

    def acknowledge(self, count: int) -> None:
        with self.cond:
            self.heard += 1
            self.acked = max(self.acked, count)
            self.cond.notify_all()

    def fail(self, error: CellError) -> None:
        with self.cond:
            if self.error is None:
                self.error = error
            self.cond.notify_all()

    def wait_for_room(self, sent: int, need: int, window: int, idle_timeout: float) -> None:
        with self.cond:
            last, deadline = self.heard, time.monotonic() + idle_timeout
            while self.error is None and self.acked < sent and sent - self.acked + need > window:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TargetUnreachableError(
                        self.target, f"it acknowledged no stream data for {idle_timeout:g} s"
                    )
                self.cond.wait(left)
                if self.heard != last:
                    last, deadline = self.heard, time.monotonic() + idle_timeout
            if self.error is not None:
                raise self.error


class Incoming:
    """A stream this cell receives."""

    def __init__(self, headers: dict[str, str], link: Connection, size: int, window: int) -> None:
        self.headers = headers
        self.link = link
        self.size = size
        self.window = window  # the sender's: acknowledgements must keep it moving
        self.received = 0
        self.next_seq = 1
        self.acked = 0  # the last count sent in an ACK
        self.checked = -1  # `received` at the last idle check
        self.stale = 0  # idle checks in a row that saw no data while waiting for it
        self.assembler: PayloadAssembler | None = None
        self.reserved: memoryview | None = None  # the next chunk is received into this
        self.payload: IncomingPayload | None = None
        self.timer: TimerHandle | None = None

    @property
    def origin(self) -> str:
        return self.headers.get(Header.ORIGIN, "")


Key = tuple[str, str]
"""An incoming stream's key: (its sending cell, its stream id)."""

IDLE_CHECKS: Final = 3
"""Idle checks per `idle_timeout`: the keepalive ACKs a slow consumer's stream
gets must reach the sender well within the sender's own idle timeout."""


class IncomingStreams:
    """The streams a cell receives, by key, with their idle checks.

    `keepalive(incoming)` is called when a slow consumer holds a stream
    whose data stopped (the sender must hear that this end is alive);
    `idle(key, reason)` when no data came for `idle_timeout`.
    """

    def __init__(
        self,
        fqcn: str,
        settings: StreamSettings,
        timer: Timer,
        keepalive: Callable[[Incoming], None],
        idle: Callable[[Key, str], None],
    ) -> None:
        self._fqcn = fqcn
        self._settings = settings
        self._timer = timer
        self._keepalive = keepalive
        self._idle = idle
        self._lock = threading.Lock()
        self._table: dict[Key, Incoming] = {}
        self._closed: str | None = None

    def refusal(self, key: Key) -> str | None:
        """Why a new incoming stream cannot be taken now, or None."""
        with self._lock:
            return self._refusal(key)

    def _refusal(self, key: Key) -> str | None:
        if self._closed is not None:
            return self._closed
        if key in self._table:
            return f"stream {key[1]} from {key[0]} is already open"
        if len(self._table) >= self._settings.max_incoming:
            return f"{self._fqcn} already receives {len(self._table)} streams"
        return None

    def add(self, key: Key, incoming: Incoming) -> str | None:
        """Take a new stream and start its idle checks; or say why not."""
        with self._lock:
            refused = self._refusal(key)
            if refused is None:
                self._table[key] = incoming
        if refused is None:
            self._schedule_idle_check(key, incoming)
        return refused

    def get(self, key: Key) -> Incoming | None:
        """The stream under `key`, if it is still open."""
        with self._lock:
            return self._table.get(key)

    def forget(self, key: Key) -> Incoming | None:
        """Remove a stream (ended, failed, aborted) and stop its idle checks."""
        with self._lock:
            incoming = self._table.pop(key, None)
        if incoming is not None and incoming.timer is not None:
            incoming.timer.cancel()
        return incoming

    def keys_where(self, chosen: Callable[[Incoming], bool]) -> list[Key]:
        """The keys of the streams `chosen` picks."""
        with self._lock:
            return [k for k, s in self._table.items() if chosen(s)]

    def close(self, reason: str) -> list[Incoming]:
        """Refuse new streams with `reason`; forget and return every open one."""
        with self._lock:
            self._closed = reason
            keys = list(self._table)
        return [s for s in map(self.forget, keys) if s is not None]

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def _schedule_idle_check(self, key: Key, incoming: Incoming) -> None:
        try:
            incoming.timer = self._timer.call_later(
                self._settings.idle_timeout / IDLE_CHECKS,
                lambda: self._idle_check(key, incoming),
            )
        except RuntimeError:
            pass  # closing: close() fails every stream

    def _idle_check(self, key: Key, incoming: Incoming) -> None:
        if self.get(key) is not incoming:
            return
        if incoming.received != incoming.checked:
            incoming.checked, incoming.stale = incoming.received, 0
        elif incoming.payload is not None and incoming.payload.unconsumed:
            incoming.stale = 0
            self._keepalive(incoming)
        else:
            incoming.stale += 1
            if incoming.stale >= IDLE_CHECKS:
                self._idle(
                    key,
                    f"no data for {self._settings.idle_timeout:g} s "
                    f"({incoming.received} of {incoming.size} bytes arrived)",
                )
                return
        self._schedule_idle_check(key, incoming)

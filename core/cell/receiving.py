"""Receiving streams: chunks reassembled, or handed to a streaming handler as they come.

The receiving end of what `streams` describes: it checks a stream's first
frame before reserving anything for it, takes its chunks in order and only
over the link its first frame came on, receives them in place where the
transport allows, acknowledges what was consumed (every quarter window and
at the end), and fails the stream at once when something is wrong, telling
its sender (an ABORT) and whoever waits for the request it is or answers.
"""

from __future__ import annotations

import logging
from typing import Final

from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.payload import PayloadAssembler, check_size, decode_payload, parse_kind
from fl_core.cell.stream_host import StreamHost
from fl_core.cell.stream_state import (
    Incoming,
    IncomingStreams,
    Key,
    StreamSettings,
    describe,
    int_header,
)
from fl_core.errors import CellError
from fl_core.spec.transport import BodyBufferProvider, Connection, Frame

__all__ = ["MAX_WINDOW", "StreamReceiver"]

log = logging.getLogger("fl_core.cell")

MAX_WINDOW: Final = 256 * 1024 * 1024
"""The largest window a receiver lets a sender announce: it bounds what waits for a
slow streaming consumer."""
_STARTERS: Final = frozenset({MessageType.REQUEST, MessageType.REPLY, MessageType.FIRE})


class StreamReceiver:
    """The streams a cell receives, and the payloads of single frames addressed to it."""

    def __init__(self, host: StreamHost, settings: StreamSettings) -> None:
        self._host = host
        self._settings = settings
        self._in = IncomingStreams(
            host.fqcn,
            settings,
            host.resources.timer,
            # An ACK repeating the last count: the sender waits for a slow consumer.
            lambda incoming: self._send_ack(incoming, incoming.acked),
            self.fail,
        )

    def whole(self, frame: Frame) -> Message | None:
        """The message of a frame that is not a stream, its payload decoded; None if refused."""
        headers = frame.headers
        message = Message(headers, frame.body)
        if Header.PAYLOAD in headers:
            try:
                payload_kind = parse_kind(headers[Header.PAYLOAD])
                body = frame.body
                if body is not None and not isinstance(body, bytes | bytearray | memoryview):
                    raise CellError(f"a frame body is {type(body).__name__}, not bytes")
                message.payload = decode_payload(payload_kind, body, self._settings.limits)
            except CellError as exc:
                self.refuse(headers, f"{self._host.fqcn} refused the payload: {exc}")
                return None
        return message

    def first(self, conn: Connection, headers: dict[str, str], body: object) -> None:
        """The first frame of a stream: checked, then set up and taken as chunk 0."""
        fqcn = self._host.fqcn
        try:
            if headers.get(Header.MSG_TYPE) not in _STARTERS:
                raise CellError(f"a stream cannot start with {headers.get(Header.MSG_TYPE)!r}")
            kind = parse_kind(headers.get(Header.PAYLOAD, ""))
            size = int_header(headers, Header.SIZE)
            check_size(kind, size, self._settings.limits)
            if int_header(headers, Header.SEQ) != 0:
                raise CellError("a stream must start with chunk 0")
            window = self._settings.window
            if Header.WINDOW in headers:
                window = int_header(headers, Header.WINDOW)
                if not 1 <= window <= MAX_WINDOW:
                    raise CellError(f"a stream's window must be 1 to {MAX_WINDOW} bytes")
        except CellError as exc:
            self.refuse(headers, f"{fqcn} refused the stream: {exc}")
            return
        key = (headers.get(Header.ORIGIN, ""), headers[Header.STREAM])
        refused = self._in.refusal(key) or self._orphan_reply(headers)
        if refused is not None:  # before any memory is reserved for it
            self.refuse(headers, refused)
            return
        incoming = Incoming(headers, conn, size, window)
        message = Message(headers, None)
        if self._host.wants_stream(message):
            incoming.payload = IncomingPayload(
                kind,
                size,
                self._settings.limits,
                source=message.origin,
                idle_timeout=self._settings.idle_timeout,
                on_consumed=lambda count: self._consumed(incoming, count),
            )
        else:
            try:
                incoming.assembler = PayloadAssembler(kind, size, self._settings.limits)
            except CellError as exc:
                self.refuse(headers, f"{fqcn} refused the stream: {exc}")
                return
        refused = self._in.add(key, incoming)
        if refused is not None:
            self.refuse(headers, refused)
            return
        if self._orphan_reply(headers) is not None:
            # Its request ended while this was being set up: request_finished
            # may have looked before the stream was in the table.
            self.fail(key, "its request has ended")
            return
        if incoming.payload is not None:
            message.payload = incoming.payload
            self._host.deliver(message)
        self._take_chunk(key, incoming, body)

    def body_buffer_for(self, conn: Connection) -> BodyBufferProvider:
        """The `Connection.receive_into` provider for chunks arriving on `conn`."""
        return lambda headers, size: self._body_buffer(conn, headers, size)

    def _body_buffer(
        self, conn: Connection, headers: dict[str, str], size: int
    ) -> memoryview | None:
        """Where a transport may receive a chunk in place: the model's own arrays."""
        if (
            headers.get(Header.MSG_TYPE) != MessageType.CHUNK
            or headers.get(Header.DESTINATION) != self._host.fqcn
        ):
            return None
        incoming = self._in.get((headers.get(Header.ORIGIN, ""), headers.get(Header.STREAM, "")))
        if (
            incoming is None
            or incoming.link is not conn
            or incoming.assembler is None
            or headers.get(Header.SEQ) != str(incoming.next_seq)
        ):
            return None
        incoming.reserved = incoming.assembler.reserve(size)
        return incoming.reserved

    def _orphan_reply(self, headers: dict[str, str]) -> str | None:
        """Why a streamed reply is refused at once: its request no longer waits."""
        if headers.get(Header.MSG_TYPE) != MessageType.REPLY:
            return None
        msg_id = headers.get(Header.IN_REPLY_TO, "")
        if self._host.pending.waiting(msg_id):
            return None
        return (
            f"{self._host.fqcn} refused a streamed reply to {msg_id!r}: "
            "it no longer waits for it (it timed out, was cancelled or was answered)"
        )

    def chunk(self, conn: Connection, headers: dict[str, str], body: object) -> None:
        """A later chunk of a stream this cell receives."""
        key = (headers.get(Header.ORIGIN, ""), headers.get(Header.STREAM, ""))
        incoming = self._in.get(key)
        if incoming is None:
            return  # a stream that already failed here; its sender was told
        if incoming.link is not conn:
            # A stream's chunks all come the way its first one came; another
            # link claiming its origin is lying.
            log.warning("%s: dropped a chunk of %s/%s from %s", self._host.fqcn, *key, conn.peer)
            return
        try:
            seq = int_header(headers, Header.SEQ)
        except CellError as exc:
            self.fail(key, f"bad chunk: {exc}")
            return
        if seq != incoming.next_seq:
            self.fail(key, f"chunk {seq} arrived where {incoming.next_seq} was due")
            return
        incoming.next_seq += 1
        self._take_chunk(key, incoming, body)

    def _take_chunk(self, key: Key, incoming: Incoming, body: object) -> None:
        if not isinstance(body, bytes | bytearray | memoryview):
            self.fail(key, f"a chunk body is {type(body).__name__}, not bytes")
            return
        size = memoryview(body).nbytes
        if size > incoming.size - incoming.received:
            self.fail(
                key, f"more data than announced: {incoming.received + size} of {incoming.size}"
            )
            return
        if incoming.received > incoming.acked and (
            incoming.received + size - incoming.acked > incoming.window
        ):
            # The sender never saw more acknowledged than this cell sent.
            self.fail(key, f"the sender overran its window of {incoming.window} bytes")
            return
        incoming.received += size
        if incoming.payload is not None:
            incoming.payload.put(body)
            if incoming.received == incoming.size:
                self._in.forget(key)
                # The payload's on_consumed refers back to `incoming`: with this
                # link cut, a handler that drops the payload frees its arrays at
                # once, instead of at the next cycle collection.
                incoming.payload = None
            return
        assert incoming.assembler is not None
        reserved, incoming.reserved = incoming.reserved, None
        try:
            if body is reserved:
                incoming.assembler.commit(size)  # the transport received it in place
            else:
                incoming.assembler.feed(body)
        except CellError as exc:
            self.fail(key, str(exc))
            return
        self._consumed(incoming, incoming.received)
        if incoming.received < incoming.size:
            return
        if self._in.forget(key) is not incoming:
            return  # failed meanwhile (idle check, abort): its sender was told
        try:
            payload = incoming.assembler.result()
        except CellError as exc:
            self.refuse(incoming.headers, f"{self._host.fqcn} refused the payload: {exc}")
            return
        self._host.deliver(Message(incoming.headers, payload))

    def _consumed(self, incoming: Incoming, count: int) -> None:
        """Acknowledge consumed bytes, every quarter window and at the end."""
        if count - incoming.acked < max(1, incoming.window // 4) and count < incoming.size:
            return
        incoming.acked = count
        self._send_ack(incoming, count)

    def _send_ack(self, incoming: Incoming, count: int) -> None:
        sid = incoming.headers[Header.STREAM]
        self._host.control(
            incoming.origin,
            {Header.MSG_TYPE: MessageType.ACK, Header.STREAM: sid, Header.ACKED: str(count)},
        )

    def refuse(self, headers: dict[str, str], reason: str) -> None:
        """Tell whoever waits that a message or stream from a peer was refused here."""
        log.warning("%s: %s (%s)", self._host.fqcn, reason, describe(headers))
        kind = headers.get(Header.MSG_TYPE)
        if Header.STREAM in headers:
            origin = headers.get(Header.ORIGIN, "")
            self._host.abort(origin, origin, headers[Header.STREAM], reason)
        if kind == MessageType.REQUEST:
            # Also for a stream: its sender may have finished pumping, and
            # then only the reply reaches the waiting request.
            self._host.answer(Message(headers, None), Status.HANDLER_ERROR, reason)
        elif kind == MessageType.REPLY:
            self._host.pending.fail(headers.get(Header.IN_REPLY_TO, ""), CellError(reason))

    def fail(self, key: Key, reason: str) -> None:
        """Fail the incoming stream `key` (if still here): its sender and waiter are told."""
        incoming = self._in.forget(key)
        if incoming is None:
            return
        if incoming.payload is not None:
            incoming.payload.fail(CellError(f"the payload from {key[0]} broke off: {reason}"))
            incoming.payload = None  # no cycle left for the handler's drop to wait on
        self.refuse(incoming.headers, f"stream {key[1]} from {key[0]}: {reason}")

    def aborted(self, conn: Connection, headers: dict[str, str]) -> None:
        """An ABORT for a stream this cell receives; honoured only from its path."""
        sid = headers.get(Header.STREAM, "")
        stream_origin = headers.get(Header.STREAM_ORIGIN, "")
        reason = headers.get(Header.ERROR, "no reason given")
        key = (stream_origin, sid)
        found = self._in.get(key)
        sender = headers.get(Header.ORIGIN, "")
        if found is None or not self._host.may_abort(conn, found.link, sender, stream_origin):
            return
        incoming = self._in.forget(key)
        if incoming is None:
            return
        error = CellError(f"the payload from {stream_origin} broke off: {reason}")
        if incoming.payload is not None:
            incoming.payload.fail(error)
        if incoming.headers.get(Header.MSG_TYPE) == MessageType.REPLY:
            self._host.pending.fail(incoming.headers.get(Header.IN_REPLY_TO, ""), error)

    def request_finished(self, msg_id: str) -> None:
        """Stop receiving a reply to `msg_id`: nobody waits for it any more."""
        for key in self._in.keys_where(lambda s: _replies_to(s.headers, msg_id)):
            self.fail(key, "its request has ended")

    def link_closed(self, conn: Connection, detail: str) -> None:
        """Fail every stream that came on `conn`."""
        for key in self._in.keys_where(lambda s: s.link is conn):
            self.fail(key, f"the link it came on closed ({detail})")

    def close(self, reason: str) -> None:
        """Fail every incoming stream; refuse new ones."""
        for found in self._in.close(reason):
            if found.payload is not None:
                found.payload.fail(CellError(reason))

    def __len__(self) -> int:
        return len(self._in)


def _replies_to(headers: dict[str, str], msg_id: str) -> bool:
    return (
        headers.get(Header.MSG_TYPE) == MessageType.REPLY
        and headers.get(Header.IN_REPLY_TO) == msg_id
    )

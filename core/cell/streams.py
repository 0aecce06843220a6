"""Streams: payloads larger than one frame, as chunks under a flow-control window.

On a bytes-only transport a cell encodes every payload (see `payload`). One
that fits in `chunk_size` travels as one frame. A larger one is a stream:

- the first frame is the message itself (all its headers) carrying chunk 0
  and the stream's id and total size; later frames are `CHUNK` messages with
  only the routing headers, the stream id and a sequence number;
- the sender keeps at most `window` bytes unacknowledged; the receiver sends
  `ACK` messages (cumulative bytes consumed) back to the sender, so memory on
  the sender, on every relay and on the receiver is bounded by the window,
  whatever the payload's size and whichever transport is below;
- relays forward chunks without decoding them, and track each stream only to
  send an `ABORT` to the far end when one of its two links closes, or to both
  ends when nothing of it passed for `idle_timeout`; a relay takes at most
  `max_relayed_per_link` streams from each link and refuses more (an ABORT
  to the sender, the link staying up);
- a stream that breaks (a link closes, the receiver refuses the payload, no
  data or no acknowledgement for `idle_timeout`) fails promptly at both ends:
  a request whose payload or reply was streamed fails with an error naming
  the target, never by waiting for its timeout.

Who may end a stream: an `ABORT` is honoured only if it comes over the link
the stream uses and from a cell on its path (`on_path`): the stream's peer
(its target for a stream this cell sends, its sender for one it receives) or
a relay between them by name, which is how a relay that lost a link on the
path reports it (under its own origin). Origins are already vouched for per
link (a child speaks only for its subtree), so a cell elsewhere in the tree
cannot end another cell's stream even if it learns the stream's id, and ids
are random (64 bits), not a counter. An `ACK` counts only from the stream's
receiver; relays apply the same rules to what they keep of a stream. A
streamed reply whose request no longer waits (timed out, cancelled, answered)
is refused at its first chunk, or aborted as soon as its request ends.

Chunks are sent from a small pool of sender threads, never from the
caller's or a transport's thread: waiting for the window must not block
whoever hands a message to the cell.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import TYPE_CHECKING, Final

from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.payload import (
    EncodedPayload,
    PayloadAssembler,
    check_size,
    decode_payload,
    encode_payload,
    kind_of,
    parse_kind,
)
from fl_core.cell.relay import StreamRelay
from fl_core.cell.stream_state import (
    Incoming,
    IncomingStreams,
    Key,
    Outgoing,
    StreamSettings,
    describe,
    int_header,
    on_path,
)
from fl_core.errors import CellError, RemoteError, TargetUnreachableError
from fl_core.spec.transport import BodyBufferProvider, Connection, Frame

if TYPE_CHECKING:
    from fl_core.cell.cell import Cell

__all__ = ["StreamEngine", "StreamSettings"]

log = logging.getLogger("fl_core.cell")

MAX_WINDOW: Final = 256 * 1024 * 1024
"""The largest window a receiver lets a sender announce: it bounds what waits for a
slow streaming consumer."""
_STARTERS: Final = frozenset({MessageType.REQUEST, MessageType.REPLY, MessageType.FIRE})


class StreamEngine:
    """A cell's streams: sending, receiving, relaying. Owned by one `Cell`."""

    def __init__(self, cell: Cell, settings: StreamSettings) -> None:
        self._cell = cell
        self.settings = settings
        self._lock = threading.Lock()
        self._out: dict[str, Outgoing] = {}
        self._in = IncomingStreams(
            cell.fqcn,
            settings,
            cell.resources.timer,
            # An ACK repeating the last count: the sender waits for a slow consumer.
            lambda incoming: self._send_ack(incoming, incoming.acked),
            self._fail_incoming,
        )
        self._relay = StreamRelay(
            cell,
            settings,
            lambda to, origin, sid, why: self._abort(to, origin, sid, why, lost=True),
        )
        self._closed: str | None = None

    # --- sending -------------------------------------------------------------------

    def send(self, link: Connection, message: Message) -> None:
        """Send `message` over `link`, encoding its payload; streams go to the sender pool.

        Raises `PayloadRefusedError` (a `CellError`) if the payload cannot be
        encoded, and `CellError` if the link refuses a single frame. A stream
        that fails later fails the request it carries (if it is one).
        """
        encoded = encode_payload(message.payload, where=describe(message.headers))
        headers = {**message.headers, Header.PAYLOAD: encoded.kind}
        if encoded.size <= self.settings.chunk_size:
            link.send(Frame(headers, encoded.joined()))
            return
        stream = Outgoing(message.destination, link, message)
        with self._lock:
            if self._closed is not None:
                raise CellError(self._closed)
            # Random, so no other cell can guess an id to aim an ABORT at.
            sid = secrets.token_hex(8)
            while sid in self._out:
                sid = secrets.token_hex(8)
            self._out[sid] = stream
        headers.update(
            {
                Header.STREAM: sid,
                Header.SEQ: "0",
                Header.SIZE: str(encoded.size),
                Header.WINDOW: str(self.settings.window),
            }
        )
        try:
            self._cell.resources.streamer.submit(self._pump, sid, stream, headers, encoded)
        except RuntimeError:
            with self._lock:
                self._out.pop(sid, None)
            raise CellError(f"cell {self._cell.fqcn!r} is shutting down") from None

    def _pump(
        self, sid: str, stream: Outgoing, first: dict[str, str], encoded: EncodedPayload
    ) -> None:
        settings = self.settings
        chunk_headers: dict[str, str] = {
            Header.DESTINATION: stream.target,
            Header.ORIGIN: self._cell.fqcn,
            Header.MSG_TYPE: MessageType.CHUNK,
            Header.STREAM: sid,
        }
        sent = 0
        try:
            for seq, chunk in enumerate(encoded.chunks(settings.chunk_size)):
                size = memoryview(chunk).nbytes
                stream.wait_for_room(sent, size, settings.window, settings.idle_timeout)
                headers: dict[str, str] = (
                    first if seq == 0 else {**chunk_headers, Header.SEQ: str(seq)}
                )
                try:
                    stream.link.send(Frame(headers, chunk))
                except TargetUnreachableError:
                    raise
                except CellError as exc:
                    raise TargetUnreachableError(stream.target, str(exc)) from exc
                sent += size
        except CellError as exc:
            if sent:
                self._abort(stream.target, self._cell.fqcn, sid, f"the sender stopped: {exc}")
            self._failed(stream.message, exc)
        finally:
            with self._lock:
                self._out.pop(sid, None)

    def request_finished(self, msg_id: str) -> None:
        """A request is answered, failed or timed out: stop streaming its payload,
        and stop receiving a reply to it that nobody waits for any more."""
        with self._lock:
            streams = [s for s in self._out.values() if s.message.get(Header.MSG_ID) == msg_id]
        replies = self._in.keys_where(lambda s: _replies_to(s.headers, msg_id))
        for stream in streams:
            stream.fail(CellError("its request has ended"))
        for key in replies:
            self._fail_incoming(key, "its request has ended")

    def _failed(self, message: Message, error: CellError) -> None:
        kind = message.get(Header.MSG_TYPE)
        if kind == MessageType.REQUEST:
            self._cell._pending.fail(message.get(Header.MSG_ID), error)
        else:
            log.warning(
                "%s: streaming %s failed: %s", self._cell.fqcn, describe(message.headers), error
            )

    def _control(self, target: str, headers: dict[str, str]) -> None:
        """Send an ACK or ABORT toward `target`; lost if there is no route any more."""
        headers[Header.DESTINATION] = target
        headers[Header.ORIGIN] = self._cell.fqcn
        try:
            link = self._cell._route(target, from_parent=False)
            if link is not None:
                link.send(Frame(headers, None))
        except CellError as exc:
            log.info("%s: stream control to %s lost: %s", self._cell.fqcn, target, exc)

    def _abort(
        self, target: str, stream_origin: str, sid: str, reason: str, *, lost: bool = False
    ) -> None:
        """Tell `target` a stream ended early; `lost` when a link on its path closed."""
        self._control(
            target,
            {
                Header.MSG_TYPE: MessageType.ABORT,
                Header.STREAM: sid,
                Header.STREAM_ORIGIN: stream_origin,
                Header.ERROR: reason,
                Header.STATUS: Status.UNREACHABLE if lost else Status.HANDLER_ERROR,
            },
        )

    def _lost(self, target: str, stream_origin: str, sid: str, reason: str) -> None:
        self._abort(target, stream_origin, sid, reason, lost=True)

    # --- receiving -------------------------------------------------------------------

    def on_frame(self, conn: Connection, frame: Frame) -> Message | None:
        """A frame addressed to this cell: the message to dispatch, or None.

        None for stream control and for chunks of a stream still arriving.
        A frame whose payload is refused is answered here (an error reply,
        or an ABORT to the stream's sender).
        """
        headers = frame.headers
        kind = headers.get(Header.MSG_TYPE)
        if kind == MessageType.ACK:
            with self._lock:
                stream = self._out.get(headers.get(Header.STREAM, ""))
            # Only the receiver may acknowledge: anyone else's count would let
            # the sender overrun the window on every relay in between.
            if (
                stream is not None
                and stream.link is conn
                and headers.get(Header.ORIGIN) == stream.target
            ):
                try:
                    stream.acknowledge(int_header(headers, Header.ACKED))
                except CellError as exc:
                    stream.fail(CellError(f"{stream.target} sent a bad acknowledgement: {exc}"))
            return None
        if kind == MessageType.ABORT:
            self._on_abort(conn, headers)
            return None
        if kind == MessageType.CHUNK:
            self._on_chunk(conn, headers, frame.body)
            return None
        if Header.STREAM in headers:
            self._on_first_chunk(conn, headers, frame.body)
            return None
        message = Message(headers, frame.body)
        if Header.PAYLOAD in headers:
            try:
                payload_kind = parse_kind(headers[Header.PAYLOAD])
                body = frame.body
                if body is not None and not isinstance(body, bytes | bytearray | memoryview):
                    raise CellError(f"a frame body is {type(body).__name__}, not bytes")
                message.payload = decode_payload(payload_kind, body, self.settings.limits)
            except CellError as exc:
                self._refuse(headers, f"{self._cell.fqcn} refused the payload: {exc}")
                return None
        return message

    def wrap_for_streaming(self, message: Message) -> None:
        """Give a streaming handler an `IncomingPayload` for a payload that came whole."""
        if isinstance(message.payload, IncomingPayload):
            return
        value = message.payload
        kind = kind_of(value)
        message.payload = IncomingPayload.of(value, kind, source=message.origin)

    def _on_first_chunk(self, conn: Connection, headers: dict[str, str], body: object) -> None:
        try:
            if headers.get(Header.MSG_TYPE) not in _STARTERS:
                raise CellError(f"a stream cannot start with {headers.get(Header.MSG_TYPE)!r}")
            kind = parse_kind(headers.get(Header.PAYLOAD, ""))
            size = int_header(headers, Header.SIZE)
            check_size(kind, size, self.settings.limits)
            if int_header(headers, Header.SEQ) != 0:
                raise CellError("a stream must start with chunk 0")
            window = self.settings.window
            if Header.WINDOW in headers:
                window = int_header(headers, Header.WINDOW)
                if not 1 <= window <= MAX_WINDOW:
                    raise CellError(f"a stream's window must be 1 to {MAX_WINDOW} bytes")
        except CellError as exc:
            self._refuse(headers, f"{self._cell.fqcn} refused the stream: {exc}")
            return
        key = (headers.get(Header.ORIGIN, ""), headers[Header.STREAM])
        refused = self._in.refusal(key) or self._orphan_reply(headers)
        if refused is not None:  # before any memory is reserved for it
            self._refuse(headers, refused)
            return
        incoming = Incoming(headers, conn, size, window)
        message = Message(headers, None)
        streaming = self._cell._wants_stream(message)
        if streaming:
            incoming.payload = IncomingPayload(
                kind,
                size,
                self.settings.limits,
                source=message.origin,
                idle_timeout=self.settings.idle_timeout,
                on_consumed=lambda count: self._consumed(incoming, count),
            )
        else:
            try:
                incoming.assembler = PayloadAssembler(kind, size, self.settings.limits)
            except CellError as exc:
                self._refuse(headers, f"{self._cell.fqcn} refused the stream: {exc}")
                return
        refused = self._in.add(key, incoming)
        if refused is not None:
            self._refuse(headers, refused)
            return
        if self._orphan_reply(headers) is not None:
            # Its request ended while this was being set up: request_finished
            # may have looked before the stream was in the table.
            self._fail_incoming(key, "its request has ended")
            return
        if incoming.payload is not None:
            message.payload = incoming.payload
            self._cell._on_message(message)
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
            or headers.get(Header.DESTINATION) != self._cell.fqcn
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
        if self._cell._pending.waiting(msg_id):
            return None
        return (
            f"{self._cell.fqcn} refused a streamed reply to {msg_id!r}: "
            "it no longer waits for it (it timed out, was cancelled or was answered)"
        )

    def _on_chunk(self, conn: Connection, headers: dict[str, str], body: object) -> None:
        key = (headers.get(Header.ORIGIN, ""), headers.get(Header.STREAM, ""))
        incoming = self._in.get(key)
        if incoming is None:
            return  # a stream that already failed here; its sender was told
        if incoming.link is not conn:
            # A stream's chunks all come the way its first one came; another
            # link claiming its origin is lying.
            log.warning("%s: dropped a chunk of %s/%s from %s", self._cell.fqcn, *key, conn.peer)
            return
        try:
            seq = int_header(headers, Header.SEQ)
        except CellError as exc:
            self._fail_incoming(key, f"bad chunk: {exc}")
            return
        if seq != incoming.next_seq:
            self._fail_incoming(key, f"chunk {seq} arrived where {incoming.next_seq} was due")
            return
        incoming.next_seq += 1
        self._take_chunk(key, incoming, body)

    def _take_chunk(self, key: Key, incoming: Incoming, body: object) -> None:
        if not isinstance(body, bytes | bytearray | memoryview):
            self._fail_incoming(key, f"a chunk body is {type(body).__name__}, not bytes")
            return
        size = memoryview(body).nbytes
        if size > incoming.size - incoming.received:
            self._fail_incoming(
                key, f"more data than announced: {incoming.received + size} of {incoming.size}"
            )
            return
        if incoming.received > incoming.acked and (
            incoming.received + size - incoming.acked > incoming.window
        ):
            # The sender never saw more acknowledged than this cell sent.
            self._fail_incoming(key, f"the sender overran its window of {incoming.window} bytes")
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
            self._fail_incoming(key, str(exc))
            return
        self._consumed(incoming, incoming.received)
        if incoming.received < incoming.size:
            return
        if self._in.forget(key) is not incoming:
            return  # failed meanwhile (idle check, abort): its sender was told
        try:
            payload = incoming.assembler.result()
        except CellError as exc:
            self._refuse(incoming.headers, f"{self._cell.fqcn} refused the payload: {exc}")
            return
        self._cell._on_message(Message(incoming.headers, payload))

    def _consumed(self, incoming: Incoming, count: int) -> None:
        """Acknowledge consumed bytes, every quarter window and at the end."""
        if count - incoming.acked < max(1, incoming.window // 4) and count < incoming.size:
            return
        incoming.acked = count
        self._send_ack(incoming, count)

    def _send_ack(self, incoming: Incoming, count: int) -> None:
        sid = incoming.headers[Header.STREAM]
        self._control(
            incoming.origin,
            {Header.MSG_TYPE: MessageType.ACK, Header.STREAM: sid, Header.ACKED: str(count)},
        )

    def _refuse(self, headers: dict[str, str], reason: str) -> None:
        """Tell whoever waits that a message or stream from a peer was refused here."""
        log.warning("%s: %s (%s)", self._cell.fqcn, reason, describe(headers))
        kind = headers.get(Header.MSG_TYPE)
        if Header.STREAM in headers:
            sid = headers[Header.STREAM]
            self._abort(headers.get(Header.ORIGIN, ""), headers.get(Header.ORIGIN, ""), sid, reason)
        if kind == MessageType.REQUEST:
            # Also for a stream: its sender may have finished pumping, and
            # then only the reply reaches the waiting request.
            self._cell._refuse_request(Message(headers, None), reason)
        elif kind == MessageType.REPLY:
            self._cell._pending.fail(headers.get(Header.IN_REPLY_TO, ""), CellError(reason))

    def _fail_incoming(self, key: Key, reason: str) -> None:
        incoming = self._in.forget(key)
        if incoming is None:
            return
        if incoming.payload is not None:
            incoming.payload.fail(CellError(f"the payload from {key[0]} broke off: {reason}"))
            incoming.payload = None  # no cycle left for the handler's drop to wait on
        self._refuse(incoming.headers, f"stream {key[1]} from {key[0]}: {reason}")

    def _on_abort(self, conn: Connection, headers: dict[str, str]) -> None:
        sid = headers.get(Header.STREAM, "")
        stream_origin = headers.get(Header.STREAM_ORIGIN, "")
        reason = headers.get(Header.ERROR, "no reason given")
        me, sender = self._cell.fqcn, headers.get(Header.ORIGIN, "")
        if stream_origin == me:
            with self._lock:
                stream = self._out.get(sid)
            if stream is None or not self._may_abort(conn, stream.link, sender, stream.target):
                return
            message = stream.message
            if headers.get(Header.STATUS) == Status.UNREACHABLE:
                stream.fail(TargetUnreachableError(stream.target, reason))
            else:
                stream.fail(RemoteError(stream.target, message.channel, message.topic, reason))
            return
        key = (stream_origin, sid)
        found = self._in.get(key)
        if found is None or not self._may_abort(conn, found.link, sender, stream_origin):
            return
        incoming = self._in.forget(key)
        if incoming is None:
            return
        error = CellError(f"the payload from {stream_origin} broke off: {reason}")
        if incoming.payload is not None:
            incoming.payload.fail(error)
        if incoming.headers.get(Header.MSG_TYPE) == MessageType.REPLY:
            self._cell._pending.fail(incoming.headers.get(Header.IN_REPLY_TO, ""), error)

    def _may_abort(self, conn: Connection, link: Connection, sender: str, peer: str) -> bool:
        """Whether an ABORT from `sender` over `conn` may end a stream with `peer` on `link`."""
        if conn is link and on_path(sender, self._cell.fqcn, peer):
            return True
        log.warning(
            "%s: ignored an ABORT from %s for a stream with %s: not on its path",
            self._cell.fqcn,
            sender,
            peer,
        )
        return False

    # --- relaying (see `relay.StreamRelay`) --------------------------------------------

    def on_relay(self, inbound: Connection, outbound: Connection, frame: Frame) -> bool:
        """Track a stream frame this cell forwards; False if it must not be forwarded."""
        return self._relay.on_relay(inbound, outbound, frame)

    def relay_failed(self, frame: Frame, reason: str) -> None:
        """A stream frame could not be forwarded: tell its sender."""
        self._relay.failed(frame, reason)

    # --- links and shutdown ----------------------------------------------------------

    def link_closed(self, conn: Connection, detail: str) -> None:
        """Fail every stream that used `conn`, here and at the far ends of relayed ones."""
        with self._lock:
            outgoing = [s for s in self._out.values() if s.link is conn]
        incoming = self._in.keys_where(lambda s: s.link is conn)
        for stream in outgoing:
            stream.fail(TargetUnreachableError(stream.target, detail))
        for key in incoming:
            self._fail_incoming(key, f"the link it came on closed ({detail})")
        self._relay.link_closed(conn, detail)

    def close(self, reason: str) -> None:
        """Fail every stream in either direction; refuse new ones."""
        with self._lock:
            self._closed = reason
            outgoing = list(self._out.values())
        self._relay.clear()
        for stream in outgoing:
            stream.fail(CellError(reason))
        for found in self._in.close(reason):
            if found.payload is not None:
                found.payload.fail(CellError(reason))

    def counts(self) -> dict[str, int]:
        """Streams in flight, by direction (for tests and diagnostics)."""
        with self._lock:
            out = len(self._out)
        return {"out": out, "in": len(self._in), "relayed": len(self._relay)}


def _replies_to(headers: dict[str, str], msg_id: str) -> bool:
    return (
        headers.get(Header.MSG_TYPE) == MessageType.REPLY
        and headers.get(Header.IN_REPLY_TO) == msg_id
    )

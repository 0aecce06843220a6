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

from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.payload import EncodedPayload, encode_payload
from fl_core.cell.receiving import StreamReceiver
from fl_core.cell.relay import StreamRelay
from fl_core.cell.stream_host import StreamHost
from fl_core.cell.stream_state import Outgoing, StreamSettings, describe, int_header
from fl_core.errors import CellError, RemoteError, TargetUnreachableError
from fl_core.spec.transport import BodyBufferProvider, Connection, Frame

__all__ = ["StreamEngine", "StreamSettings"]

log = logging.getLogger("fl_core.cell")


class StreamEngine:
    """A cell's streams: sending here, receiving (`receiving`) and relaying (`relay`)."""

    def __init__(self, host: StreamHost, settings: StreamSettings) -> None:
        self._host = host
        self.settings = settings
        self._lock = threading.Lock()
        self._out: dict[str, Outgoing] = {}
        self._in = StreamReceiver(host, settings)
        self._relay = StreamRelay(
            host.fqcn,
            host.resources.timer,
            settings,
            lambda to, origin, sid, why: host.abort(to, origin, sid, why, lost=True),
            host.answer,
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
            self._host.resources.streamer.submit(self._pump, sid, stream, headers, encoded)
        except RuntimeError:
            with self._lock:
                self._out.pop(sid, None)
            raise CellError(f"cell {self._host.fqcn!r} is shutting down") from None

    def _pump(
        self, sid: str, stream: Outgoing, first: dict[str, str], encoded: EncodedPayload
    ) -> None:
        settings = self.settings
        fqcn = self._host.fqcn
        chunk_headers: dict[str, str] = {
            Header.DESTINATION: stream.target,
            Header.ORIGIN: fqcn,
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
                self._host.abort(stream.target, fqcn, sid, f"the sender stopped: {exc}")
            self._failed(stream.message, exc)
        finally:
            with self._lock:
                self._out.pop(sid, None)

    def request_finished(self, msg_id: str) -> None:
        """A request is answered, failed or timed out: stop streaming its payload,
        and stop receiving a reply to it that nobody waits for any more."""
        with self._lock:
            streams = [s for s in self._out.values() if s.message.get(Header.MSG_ID) == msg_id]
        for stream in streams:
            stream.fail(CellError("its request has ended"))
        self._in.request_finished(msg_id)

    def _failed(self, message: Message, error: CellError) -> None:
        kind = message.get(Header.MSG_TYPE)
        if kind == MessageType.REQUEST:
            self._host.pending.fail(message.get(Header.MSG_ID), error)
        else:
            log.warning(
                "%s: streaming %s failed: %s", self._host.fqcn, describe(message.headers), error
            )

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
            self._on_ack(conn, headers)
            return None
        if kind == MessageType.ABORT:
            if headers.get(Header.STREAM_ORIGIN, "") == self._host.fqcn:
                self._on_abort(conn, headers)
            else:
                self._in.aborted(conn, headers)
            return None
        if kind == MessageType.CHUNK:
            self._in.chunk(conn, headers, frame.body)
            return None
        if Header.STREAM in headers:
            self._in.first(conn, headers, frame.body)
            return None
        return self._in.whole(frame)

    def body_buffer_for(self, conn: Connection) -> BodyBufferProvider:
        """The `Connection.receive_into` provider for chunks arriving on `conn`."""
        return self._in.body_buffer_for(conn)

    def _on_ack(self, conn: Connection, headers: dict[str, str]) -> None:
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

    def _on_abort(self, conn: Connection, headers: dict[str, str]) -> None:
        """An ABORT for a stream this cell sends; honoured only from its path."""
        reason = headers.get(Header.ERROR, "no reason given")
        with self._lock:
            stream = self._out.get(headers.get(Header.STREAM, ""))
        sender = headers.get(Header.ORIGIN, "")
        if stream is None or not self._host.may_abort(conn, stream.link, sender, stream.target):
            return
        message = stream.message
        if headers.get(Header.STATUS) == Status.UNREACHABLE:
            stream.fail(TargetUnreachableError(stream.target, reason))
        else:
            stream.fail(RemoteError(stream.target, message.channel, message.topic, reason))

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
        for stream in outgoing:
            stream.fail(TargetUnreachableError(stream.target, detail))
        self._in.link_closed(conn, detail)
        self._relay.link_closed(conn, detail)

    def close(self, reason: str) -> None:
        """Fail every stream in either direction; refuse new ones."""
        with self._lock:
            self._closed = reason
            outgoing = list(self._out.values())
        self._relay.clear()
        for stream in outgoing:
            stream.fail(CellError(reason))
        self._in.close(reason)

    def counts(self) -> dict[str, int]:
        """Streams in flight, by direction (for tests and diagnostics)."""
        with self._lock:
            out = len(self._out)
        return {"out": out, "in": len(self._in), "relayed": len(self._relay)}

"""One TCP (or TLS) link: a `BufferedProtocol` that parses frames in place, and
the thread-safe `Connection` the cell layer sees.

Receiving: small frames are parsed out of one reused head buffer, which
starts small and grows only as far as a header the peer announced needs (up
to a prefix plus the largest legal header); a body lands in a `bytearray` of
exactly `body_size`, and once the bytes already in the head buffer are moved
there, the rest of it is received straight into it. Every limit is checked by
the envelope functions before anything is allocated; until its owner admits
an accepted link, no frame over `HELLO_MAX_FRAME` bytes is taken (see
"Admission" in `fl_core.spec.transport`).

Sending: `send` may be called from any thread. Frames are written on the
loop thread, prefix+header and body as two writes (never concatenated).
A caller on another thread blocks while the socket's write buffer is above
its high-water mark or too many bytes wait on the loop, so memory stays
bounded even when the peer reads slowly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from fl_core.admission import LoopConnection
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.serialization import WireFormatError
from fl_core.serialization.envelope import (
    MAX_HEADER_SIZE,
    PREFIX_SIZE,
    BodyKind,
    FrameHeader,
    decode_frame_header,
    decode_prefix,
    encode_frame_head,
)
from fl_core.spec.transport import (
    HELLO_MAX_FRAME,
    BodyBufferProvider,
    CloseHandler,
    Frame,
    FrameHandler,
)

log = logging.getLogger("fl_plugins.transport_tcp")

HEAD_BUFFER_SIZE: Final = PREFIX_SIZE + MAX_HEADER_SIZE
"""Any legal prefix+header fits, so the head buffer never grows past this."""
HEAD_BUFFER_START: Final = 4096
"""The head buffer of a new link: an idle or unadmitted link costs no more."""
HIGH_WATER: Final = 4 * 1024 * 1024
"""Bytes buffered per connection (socket buffer or waiting on the loop) above
which a sending thread blocks."""


class TcpConnection(LoopConnection):
    """One link to a peer over TCP; created by `TcpTransport`, never by users."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: str,
        *,
        max_body_size: int,
        send_timeout: float,
        admitted: bool = True,
    ) -> None:
        super().__init__(loop, admitted=admitted)
        self._peer = peer
        self._max_body_size = max_body_size
        self._send_timeout = send_timeout
        self._transport: asyncio.Transport | None = None
        self._on_frame: FrameHandler | None = None
        self._on_close: CloseHandler | None = None
        self._cond = threading.Condition()
        self._started = False
        self._closed = False  # no more sends accepted
        self._finished = False  # on_close is due (or done)
        self._close_exc: BaseException | None = None
        self._close_delivered = False
        self._paused = False
        self._queued = 0
        self._body_buffer: BodyBufferProvider | None = None
        self.raw: asyncio.Transport | None = None
        """The socket's transport while a TLS handshake runs (aborting it ends the link)."""
        self._peer_certificate: bytes | None = None

    # --- the Connection interface ---------------------------------------------

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def peer_certificate(self) -> bytes | None:
        """The certificate (DER) the TLS handshake verified; None on plaintext or without one."""
        return self._peer_certificate

    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Begin delivering frames; reading from the socket starts only now."""
        with self._cond:
            if self._started:
                raise CellError(f"connection to {self._peer} was already started")
            self._on_frame, self._on_close, self._started = on_frame, on_close, True
            finished = self._finished
        if finished:
            self._deliver_close()
        else:
            self._call_on_loop(self._resume_reading)

    def send(self, frame: Frame) -> None:
        """Queue `frame` for the peer, in order; blocks while the peer is behind.

        The body must be None or bytes-like (bytes, bytearray, a contiguous
        memoryview); do not modify it until `send` has returned. Raises
        `TargetUnreachableError` when the link is closed or the peer has not
        read for `send_timeout` seconds, `CellError` for a body it cannot carry.
        """
        head, body = self._encode(frame)
        size = len(head) + len(body)
        if self._on_loop_thread():
            # Handlers run here: waiting for resume_writing would deadlock.
            if self._closed:
                raise self._unreachable("the connection is closed")
            self._write(head, body)
            return
        deadline = time.monotonic() + self._send_timeout
        with self._cond:
            while not self._closed and (self._paused or self._queued >= HIGH_WATER):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._unreachable(f"the peer has not read for {self._send_timeout:g} s")
                self._cond.wait(left)
            if self._closed:
                raise self._unreachable("the connection is closed")
            self._queued += size
        try:
            self._loop.call_soon_threadsafe(self._write_queued, head, body, size)
        except RuntimeError:  # the loop is closed
            with self._cond:
                self._queued -= size
            raise self._unreachable("the transport is closed") from None

    def receive_into(self, provider: BodyBufferProvider) -> None:
        """Receive bodies into buffers `provider` offers (see `Connection.receive_into`)."""
        self._body_buffer = provider

    def close(self) -> None:
        """Close after pending frames are written; `on_close(None)` follows."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._call_on_loop(self._close_transport)

    # --- helpers for the sending side ----------------------------------------

    def _unreachable(self, why: str) -> TargetUnreachableError:
        return TargetUnreachableError(self._peer, why)

    def _encode(self, frame: Frame) -> tuple[bytes, memoryview]:
        body = frame.body
        if body is None:
            kind, view = BodyKind.NONE, memoryview(b"")
        elif isinstance(body, bytes | bytearray | memoryview):
            view = memoryview(body)
            if not view.c_contiguous:
                raise CellError(f"tcp to {self._peer}: a frame body must be contiguous memory")
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            kind = BodyKind.BYTES
        else:
            raise CellError(
                f"tcp to {self._peer} carries bytes-like frame bodies or None, "
                f"not {type(body).__name__}"
            )
        try:
            head = encode_frame_head(
                frame.headers, kind, view.nbytes, max_body_size=self._max_body_size
            )
        except WireFormatError as exc:
            raise CellError(f"tcp to {self._peer}: cannot send this frame: {exc}") from exc
        return head, view

    def _write_queued(self, head: bytes, body: memoryview, size: int) -> None:
        with self._cond:
            self._queued -= size
            self._cond.notify_all()
        self._write(head, body)

    def _write(self, head: bytes, body: memoryview) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # lost meanwhile; on_close tells the owner
        transport.write(head)
        if body.nbytes:
            transport.write(body)

    # --- called on the loop thread by the protocol ---------------------------

    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.raw = None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # What the handshake verified, never what the peer says in a frame.
            self._peer_certificate = ssl_object.getpeercert(binary_form=True)
        if self._finished:  # refused while the socket was being set up
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError as exc:  # not fatal: the link works without them
                log.info("tcp: could not set socket options for %s: %s", self._peer, exc)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        with self._cond:
            started = self._started
        if not started:
            # Frames must wait for their owner: `start` resumes reading.
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def abort(self) -> None:
        """End the link now, whatever is queued; `lost` follows."""
        if self._transport is not None:
            self._transport.abort()
        elif self.raw is not None:
            self.raw.abort()  # the TLS handshake fails, and reports the loss
        else:
            self.lost(None)

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
        else:
            self.lost(None)

    def _set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    def _target_for(self, header: FrameHeader) -> bytearray | memoryview | None:
        """Where a body goes: the owner's buffer if it offers one, else a new bytearray."""
        if header.body_kind is BodyKind.NONE:
            return None
        provider = self._body_buffer
        if provider is not None and header.body_size:
            try:
                offered = provider(header.headers, header.body_size)
            except Exception:
                log.exception("tcp: the body buffer provider for %s failed", self._peer)
                offered = None
            if offered is not None and offered.nbytes == header.body_size and not offered.readonly:
                return offered
        return bytearray(header.body_size)

    def _deliver(self, headers: FrameHeader, body: bytearray | memoryview | None) -> None:
        handler = self._on_frame
        if handler is None:
            return
        try:
            handler(Frame(headers.headers, body))
        except Exception:
            # Never raise into the loop: one bad handler must not stop the link.
            log.exception("tcp: the frame handler for %s failed", self._peer)

    def lost(self, exc: BaseException | None) -> None:
        """The link is gone: forget it and tell its owner `exc` (or the refusal); idempotent."""
        with self._cond:
            if self._finished:
                return
            self._finished = True
            self._closed = True
            self._close_exc = exc if exc is not None else self.refusal
            self._cond.notify_all()
            started = self._started
        for forget in self.on_lost:
            forget(self)
        if started:
            self._deliver_close()

    def _deliver_close(self) -> None:
        with self._cond:
            if self._close_delivered or self._on_close is None:
                return
            self._close_delivered = True
            handler, exc = self._on_close, self._close_exc
        try:
            handler(exc)
        except Exception:
            log.exception("tcp: the close handler for %s failed", self._peer)


class FrameProtocol(asyncio.BufferedProtocol):
    """Parses frames from the byte stream into their final buffers."""

    def __init__(
        self, conn: TcpConnection, on_made: Callable[[TcpConnection], None] | None = None
    ) -> None:
        self.conn = conn
        self._on_made = on_made
        self._head = bytearray(HEAD_BUFFER_START)
        self._head_view = memoryview(self._head)
        self._head_end = 0
        self._body: bytearray | memoryview | None = None
        self._body_view: memoryview | None = None
        self._body_got = 0
        self._body_header: FrameHeader | None = None
        self._transport: asyncio.Transport | None = None
        self._error: BaseException | None = None

    # --- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.conn._attach(transport)
        if self._on_made is not None:
            self._on_made(self.conn)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_view is not None:
            return self._body_view[self._body_got :]
        return self._head_view[self._head_end :]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._body_view is not None:
                self._body_got += nbytes
                if self._body_got < len(self._body_view):
                    return
                header, body = self._body_header, self._body
                self._body = self._body_view = self._body_header = None
                assert header is not None
                self.conn._deliver(header, body)
            else:
                self._head_end += nbytes
            self._parse_head()
        except WireFormatError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug here must not reach the loop
            log.exception("tcp: unexpected error reading from %s", self.conn.peer)
            self._fail(exc, warn=False)

    def eof_received(self) -> bool | None:
        if self._mid_frame() and self._error is None:
            self._fail(WireFormatError(f"truncated frame: {self._describe_partial()}"))
        return None  # let the transport close

    def pause_writing(self) -> None:
        self.conn._set_paused(True)

    def resume_writing(self) -> None:
        self.conn._set_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None and exc is None and self._mid_frame():
            self._error = WireFormatError(f"truncated frame: {self._describe_partial()}")
            self._warn(self._error)
        self._body = self._body_view = None
        self.conn.lost(self._error or exc)

    # --- parsing ---------------------------------------------------------------------

    def _parse_head(self) -> None:
        view, end, pos = self._head_view, self._head_end, 0
        while end - pos >= PREFIX_SIZE:
            header_size = decode_prefix(view[pos : pos + PREFIX_SIZE])
            self._check_admission(PREFIX_SIZE + header_size)
            start = pos + PREFIX_SIZE
            if end - start < header_size:
                break
            header = decode_frame_header(
                view[start : start + header_size], max_body_size=self.conn._max_body_size
            )
            self._check_admission(PREFIX_SIZE + header_size + header.body_size)
            pos = start + header_size
            size = header.body_size
            body = self.conn._target_for(header)
            take = min(size, end - pos)
            if body is not None and take:
                body[:take] = view[pos : pos + take]
                pos += take
            if take < size:
                assert body is not None
                # The rest of this body is received straight into it.
                self._body, self._body_view = body, memoryview(body)
                self._body_got, self._body_header = take, header
                break
            self.conn._deliver(header, body)
            if self._transport is None or self._transport.is_closing():
                break
        if pos:
            # At most one partial prefix+header moves to the front.
            view[: end - pos] = view[pos:end]
            self._head_end = end - pos
        self._fit_head()

    def _check_admission(self, frame_size: int) -> None:
        """Before its hello, a link may announce no frame over `HELLO_MAX_FRAME` bytes."""
        if not self.conn.admitted and frame_size > HELLO_MAX_FRAME:
            raise WireFormatError(
                f"a frame of at least {frame_size} bytes before the peer said hello; "
                f"the limit until then is {HELLO_MAX_FRAME}"
            )

    def _fit_head(self) -> None:
        """Grow the head buffer if the partial header at its front needs more room."""
        if self._body_view is not None or self._head_end < PREFIX_SIZE:
            return
        needed = PREFIX_SIZE + decode_prefix(self._head_view[:PREFIX_SIZE])
        if needed <= len(self._head):
            return
        grown = bytearray(needed)  # <= HEAD_BUFFER_SIZE: decode_prefix checked it
        grown[: self._head_end] = self._head_view[: self._head_end]
        self._head, self._head_view = grown, memoryview(grown)

    def _mid_frame(self) -> bool:
        return self._body_view is not None or self._head_end > 0

    def _describe_partial(self) -> str:
        if self._body_view is not None:
            return (
                f"the connection ended after {self._body_got} of the "
                f"{len(self._body_view)} body bytes"
            )
        return f"the connection ended inside a frame head ({self._head_end} bytes received)"

    def _warn(self, exc: BaseException) -> None:
        log.warning("tcp: closed the connection with %s: %s", self.conn.peer, exc)

    def _fail(self, exc: BaseException, *, warn: bool = True) -> None:
        if self._error is not None:
            return
        self._error = exc
        if warn:
            self._warn(exc)
        self._body = self._body_view = None
        self._head_end = 0
        if self._transport is not None:
            self._transport.abort()

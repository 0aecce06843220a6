"""One gRPC link: a bidirectional stream whose messages are envelope frames.

A frame is written exactly as the tcp transport writes it on a socket
(prefix, protobuf `FrameHeader`, raw body; `fl_core.serialization.envelope`),
carried by one or more gRPC messages; the first holds the whole prefix and
header. gRPC reads a whole message into memory before anyone sees it, and
lets a peer send as much as the message it announced needs, so a listener's
receive limit is `FRAGMENT`: whatever a peer announces, a stream costs it at
most one fragment (and the receive window) before the frame's header has
been judged, and an unadmitted link (see "Admission" in
`fl_core.spec.transport`) announcing a frame over `HELLO_MAX_FRAME` is closed
on its first message. So the connecting end cuts its frames into messages of
at most `FRAGMENT` bytes; the listening end, whose peer chose to dial it,
sends each frame as one message, which is faster (gRPC's cost is per message).
A frame that fits one message is handed on as a `memoryview` of it, without
a copy; a larger one is gathered into the buffer the owner offers
(`receive_into`), else into one of exactly its body size. A
sender builds each message with one copy of its share of the body, on the
sender's thread.

Everything gRPC-facing runs on the transport's event loop: one reader task
and one writer task per link. `send` hands a message to the loop and blocks,
bounded by `send_timeout`, while `HIGH_WATER` bytes are waiting: a message
counts as waiting until gRPC has accepted it, which it does only as fast as
HTTP/2 flow control lets the peer take it.

Closing is orderly: `close` lets queued frames go out, then ends our side of
the stream (a client half-closes, a server returns from its handler); the
peer sees the end, closes its side too, and both ends report `on_close(None)`.
A broken stream (peer gone, keepalive timeout, transport closed) reports the
cause instead; a frame the envelope refuses closes the link with a warning.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from abc import abstractmethod
from typing import Any, Final

import grpc
from grpc import aio

from fl_core.admission import LoopConnection
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.serialization import WireFormatError
from fl_core.serialization.envelope import (
    BodyKind,
    encode_frame_head,
)
from fl_core.spec.transport import (
    BodyBufferProvider,
    CloseHandler,
    Frame,
    FrameHandler,
)
from fl_plugins.transport_grpc.fragments import FRAGMENT, FrameAssembler, encode_messages
from fl_plugins.transport_grpc.tls import peer_certificate

log = logging.getLogger("fl_plugins.transport_grpc")

GOODBYE: Final = b""
"""What a client sends last when it closes: an empty message is never a frame.
A server tells an orderly close by it, as a stream cut by a lost peer may
look to it like a clean end; a client has the call's status instead."""
HIGH_WATER: Final = 4 * 1024 * 1024
"""Bytes per link handed to the loop but not yet taken by gRPC, above which a
sending thread blocks."""
DEQUEUE_STEP: Final = 512 * 1024
"""Bytes the writer sends between two updates of what waits (each takes the senders' lock
and wakes them: once per message, that took a tenth of the writer's time)."""
CLOSE_GRACE: Final = 2.0
"""Seconds a closing client waits for the server to end the stream before cancelling it."""


class GrpcConnection(LoopConnection):
    """One link to a peer; created by `GrpcTransport`, never by users."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: str,
        *,
        max_body_size: int,
        send_timeout: float,
        admitted: bool = True,
        fragment: int | None = None,
    ) -> None:
        super().__init__(loop, admitted=admitted)
        self._peer = peer
        self._fragment = fragment
        self._max_body_size = max_body_size
        self._send_timeout = send_timeout
        self._on_frame: FrameHandler | None = None
        self._on_close: CloseHandler | None = None
        self._body_buffer: BodyBufferProvider | None = None
        self._cond = threading.Condition()
        self._started = False
        self._closed = False  # no more sends accepted
        self._finished = False  # on_close is due (or done)
        self._close_exc: BaseException | None = None
        self._close_delivered = False
        self._queued = 0
        # Touched only on the loop thread.
        self._outbox: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._start_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- the Connection interface ---------------------------------------------

    @property
    def peer(self) -> str:
        return self._peer

    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Begin delivering frames; nothing is read from the stream before this."""
        with self._cond:
            if self._started:
                raise CellError(f"connection to {self._peer} was already started")
            self._on_frame, self._on_close, self._started = on_frame, on_close, True
            finished = self._finished
        if finished:
            self._deliver_close()
        else:
            self._call_on_loop(self._start_event.set)

    def send(self, frame: Frame) -> None:
        """Queue `frame` for the peer, in order; blocks while the peer is behind.

        The body must be None or bytes-like; it is copied before `send`
        returns. Raises `TargetUnreachableError` when the link is closed or
        the peer has not taken a frame for `send_timeout` seconds, `CellError`
        for a body it cannot carry.
        """
        data = self._encode(frame)
        size = sum(map(len, data))
        if self._on_loop_thread():
            # Handlers run here: waiting for the writer would deadlock.
            with self._cond:
                if self._closed:
                    raise self._unreachable("the connection is closed")
                self._queued += size
            self._enqueue(data, size)
            return
        deadline = time.monotonic() + self._send_timeout
        with self._cond:
            # One message always fits, however large, so big frames are not refused.
            while not self._closed and self._queued and self._queued + size > HIGH_WATER:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._unreachable(f"the peer has not read for {self._send_timeout:g} s")
                self._cond.wait(left)
            if self._closed:
                raise self._unreachable("the connection is closed")
            self._queued += size
        try:
            self._loop.call_soon_threadsafe(self._enqueue, data, size)
        except RuntimeError:  # the loop is closed
            self._dequeued(size)
            raise self._unreachable("the transport is closed") from None

    def receive_into(self, provider: BodyBufferProvider) -> None:
        """Gather frames cut into several messages (a dialer's) into buffers `provider` offers."""
        self._body_buffer = provider

    def close(self) -> None:
        """Close after queued frames are sent; `on_close(None)` follows on both ends."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._call_on_loop(self._wake.set)

    # --- helpers for the sending side ----------------------------------------

    def _unreachable(self, why: str) -> TargetUnreachableError:
        return TargetUnreachableError(self._peer, why)

    def _encode(self, frame: Frame) -> list[bytes]:
        body = frame.body
        if body is None:
            kind, view = BodyKind.NONE, memoryview(b"")
        elif isinstance(body, bytes | bytearray | memoryview):
            view = memoryview(body)
            if not view.c_contiguous:
                raise CellError(f"grpc to {self._peer}: a frame body must be contiguous memory")
            kind = BodyKind.BYTES
        else:
            raise CellError(
                f"grpc to {self._peer} carries bytes-like frame bodies or None, "
                f"not {type(body).__name__}"
            )
        try:
            head = encode_frame_head(
                frame.headers, kind, view.nbytes, max_body_size=self._max_body_size
            )
        except WireFormatError as exc:
            raise CellError(f"grpc to {self._peer}: cannot send this frame: {exc}") from exc
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        return encode_messages(head, view, self._fragment)

    def _enqueue(self, data: list[bytes], size: int) -> None:
        if self._finished:
            self._dequeued(size)  # lost meanwhile; on_close tells the owner
            return
        self._outbox.extend(data)
        self._wake.set()

    def _dequeued(self, size: int) -> None:
        with self._cond:
            self._queued -= size
            self._cond.notify_all()

    # --- the stream, on the loop thread ------------------------------------------

    @abstractmethod
    async def _read(self) -> bytes | None:
        """The next message, None when the peer has ended its side."""

    @abstractmethod
    async def _write(self, data: bytes) -> None:
        """Send one message; returns once gRPC has taken it."""

    async def _end_writing(self) -> None:
        """End our side of the stream after the last message (a client half-closes)."""

    async def _read_loop(self) -> bool:
        """Deliver frames until the peer ends its side; True if it said goodbye first.

        Raises if the stream breaks or a message is not a frame.
        """
        await self._start_event.wait()
        assembler = FrameAssembler(
            self._max_body_size, lambda: self.admitted, lambda: self._body_buffer
        )
        while True:
            data = await self._read()
            if data is None:
                return False
            if not data and not assembler.mid_frame:
                return True  # GOODBYE
            frame = assembler.feed(data)
            if frame is None:
                continue
            if self._closed or self._on_frame is None:
                continue  # closed here: what still arrives is dropped, as on a socket
            try:
                self._on_frame(frame)
            except Exception:
                # Never raise into the loop: one bad handler must not stop the link.
                log.exception("grpc: the frame handler for %s failed", self._peer)

    async def _write_loop(self) -> None:
        """Send queued messages until `close` and the queue is empty, then end our side."""
        written = 0  # sent, but not yet subtracted from `_queued`
        try:
            while True:
                if not self._outbox:
                    if written:
                        self._dequeued(written)
                        written = 0
                    if self._closed:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                data = self._outbox.popleft()
                written += len(data)
                await self._write(data)
                if written >= DEQUEUE_STEP:  # not per message: a frame may be dozens
                    self._dequeued(written)
                    written = 0
        finally:
            if written:
                self._dequeued(written)
        await self._end_writing()

    def abort(self) -> None:
        """End the link now, whatever is queued; `on_close` reports an error."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        else:
            self.lost(CellError("the grpc transport closed"))

    def _failure(
        self, reader: asyncio.Task[bool], writer: asyncio.Task[None]
    ) -> BaseException | None:
        """Why the stream broke, if it did: a refused frame, or the gRPC error."""
        for task in (reader, writer):
            if not task.done() or task.cancelled() or task.exception() is None:
                continue
            exc = task.exception()
            if isinstance(exc, WireFormatError):
                return exc
            if isinstance(exc, aio.AioRpcError):
                return self._unreachable(f"the stream broke: {exc.code().name}: {exc.details()}")
            return CellError(f"grpc to {self._peer}: the stream broke: {type(exc).__name__}: {exc}")
        return None

    def _warn(self, exc: BaseException) -> None:
        log.warning("grpc: closed the connection with %s: %s", self._peer, exc)

    # --- ending --------------------------------------------------------------------

    def lost(self, exc: BaseException | None) -> None:
        """The link is gone: forget it and tell its owner `exc` (or the refusal); idempotent."""
        with self._cond:
            if self._finished:
                return
            self._finished = True
            self._closed = True
            self._close_exc = self.refusal if self.refusal is not None else exc
            self._cond.notify_all()
            started = self._started
        self._outbox.clear()
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
            log.exception("grpc: the close handler for %s failed", self._peer)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ServerConnection(GrpcConnection):
    """The accepting end: lives exactly as long as the RPC handler that serves it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: aio.ServicerContext[bytes, bytes],
        peer: str,
        *,
        max_body_size: int,
        send_timeout: float,
        admitted: bool = True,
    ) -> None:
        super().__init__(
            loop, peer, max_body_size=max_body_size, send_timeout=send_timeout, admitted=admitted
        )
        # Dropped when the RPC ends: a live gRPC object keeps gRPC's poller thread.
        self._context: aio.ServicerContext[bytes, bytes] | None = context
        self._peer_certificate = peer_certificate(context)

    @property
    def peer_certificate(self) -> bytes | None:
        """The client certificate (DER) the TLS handshake verified; None without one."""
        return self._peer_certificate

    async def _read(self) -> bytes | None:
        assert self._context is not None
        data = await self._context.read()
        if data is aio.EOF:
            return None
        assert isinstance(data, bytes)
        return data

    async def _write(self, data: bytes) -> None:
        assert self._context is not None
        await self._context.write(data)

    async def serve(self) -> None:
        """Run the link; returning ends the RPC (status OK after an orderly close)."""
        if self._finished:  # refused before its handler ran
            self._context = None
            return
        try:
            await self._serve()
        finally:
            self._context = None
            self._task = None

    async def _serve(self) -> None:
        self._task = asyncio.current_task()
        reader = asyncio.create_task(self._read_loop())
        writer = asyncio.create_task(self._write_loop())
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            # Either we closed and sent all (the writer ended), or the client
            # ended its side, which it does only when it closes: what is still
            # queued would be dropped there, so it is dropped here, as on a socket.
            await _cancel(reader, writer)
        except asyncio.CancelledError:
            # The peer went away (or the transport aborts this link).
            await _cancel(reader, writer)
            self.lost(self._unreachable("the stream was cancelled: the peer went away"))
            if self._refusal is None or self._context is None:
                raise
            # Refused here (see `refuse`): end the RPC with a status the peer
            # sees at once, rather than a cancellation it may never hear of.
            self._context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            self._context.set_details(str(self._refusal))
            return
        error = self._failure(reader, writer)
        if error is None and reader.done() and not reader.cancelled() and not reader.result():
            error = self._unreachable("the stream ended without a goodbye: the peer went away")
        if isinstance(error, WireFormatError):
            self._warn(error)
            assert self._context is not None
            self._context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            self._context.set_details(str(error))
        self.lost(error)


class ClientConnection(GrpcConnection):
    """The connecting end: owns its channel and call, closed with it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        channel: aio.Channel,
        call: aio.StreamStreamCall[bytes, bytes],
        peer: str,
        *,
        max_body_size: int,
        send_timeout: float,
    ) -> None:
        # Messages no larger than a listener takes (see the module docstring).
        super().__init__(
            loop, peer, max_body_size=max_body_size, send_timeout=send_timeout, fragment=FRAGMENT
        )
        # Dropped when the link ends: a live gRPC object keeps gRPC's poller thread.
        self._channel: aio.Channel | None = channel
        self._call: aio.StreamStreamCall[bytes, bytes] | None = call

    async def _read(self) -> bytes | None:
        assert self._call is not None
        data = await self._call.read()
        if data is aio.EOF:
            return None
        assert isinstance(data, bytes)
        return data

    async def _write(self, data: bytes) -> None:
        assert self._call is not None
        await self._call.write(data)

    async def _end_writing(self) -> None:
        assert self._call is not None
        await self._call.write(GOODBYE)
        await self._call.done_writing()

    async def run(self) -> None:
        """Run the link until the call ends, then close the channel."""
        assert self._channel is not None and self._call is not None
        channel, call = self._channel, self._call
        try:
            await self._run(call)
        finally:
            await channel.close()
            self._channel = self._call = None
            self._task = None

    async def _run(self, call: aio.StreamStreamCall[bytes, bytes]) -> None:
        self._task = asyncio.current_task()
        reader = asyncio.create_task(self._read_loop())
        writer = asyncio.create_task(self._write_loop())
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            if not reader.done() and writer.exception() is None:
                # We closed and half-closed the stream: the server ends it in turn.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        await asyncio.wait((reader,))
                call.cancel()  # a no-op once the server has ended it
                await _cancel(reader)
                self.lost(None)
                return
            await _cancel(reader, writer)
            error = self._failure(reader, writer)
            if isinstance(error, WireFormatError):
                self._warn(error)
                call.cancel()
            self.lost(error)  # None: the server ended the stream in order
        except asyncio.CancelledError:
            await _cancel(reader, writer)
            call.cancel()
            self.lost(CellError(f"grpc: the link to {self._peer} was aborted"))
            raise

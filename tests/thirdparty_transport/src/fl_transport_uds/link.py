"""One Unix-socket link: the `Connection` the cell sees and the protocol that reads frames.

Frames use fl-core's stream framing (`fl_core.serialization.envelope`): a
fixed prefix, a protobuf header, then the raw body. The reader takes them in
three steps, each straight into the buffer it belongs in: the prefix into a
fixed 12 bytes, the header into a buffer of the size the prefix announced,
the body into a buffer of the size the header announced (the owner's, if it
offers one through `receive_into`). Each size is checked before its buffer
exists, and until the link is admitted no frame may announce more than
`HELLO_MAX_FRAME` bytes, so an unadmitted peer costs at most that much.

All socket work happens on the transport's event-loop thread. `send` may be
called from any thread: it hands the frame to the loop and blocks while the
bytes not yet taken by the kernel are over `HIGH_WATER`, so a slow reader
slows its senders instead of filling memory.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from fl_core.errors import CellError, TargetUnreachableError
from fl_core.serialization import WireFormatError
from fl_core.serialization.envelope import (
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
    Connection,
    Frame,
    FrameHandler,
)

__all__ = ["HIGH_WATER", "FrameReader", "UdsLink"]

log = logging.getLogger("fl_transport_uds")

HIGH_WATER: Final = 4 * 1024 * 1024
"""Bytes waiting to be written on one link above which a sending thread blocks."""


class UdsLink(Connection):
    """One link to a peer; made by `UdsTransport`, never by users.

    `on_admitted` and `on_lost` are what `fl_core.admission.Admission` needs
    of a link; both are called on the loop thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: str,
        *,
        max_body_size: int,
        send_timeout: float,
        admitted: bool,
    ) -> None:
        self._loop = loop
        self._peer = peer
        self.max_body_size = max_body_size
        """The largest body the reader accepts in one frame."""
        self._send_timeout = send_timeout
        self._socket: asyncio.Transport | None = None
        self._on_frame: FrameHandler | None = None
        self._on_close: CloseHandler | None = None
        self._provider: BodyBufferProvider | None = None
        self._state = threading.Condition()
        self._started = False
        self._closed = False  # no more sends
        self._ended = False  # the socket is gone; on_close is due
        self._close_cause: BaseException | None = None
        self._close_told = False
        self._refusal: BaseException | None = None
        self._paused = False  # the socket's own buffer is over its high-water mark
        self._waiting = 0  # bytes handed to the loop and not yet written
        self.admitted = admitted
        """False until the owner of an accepted link calls `admit`."""
        self.on_admitted: list[Callable[[UdsLink], None]] = []
        self.on_lost: list[Callable[[UdsLink], None]] = []

    # --- the Connection interface ---------------------------------------------------

    @property
    def peer(self) -> str:
        return self._peer

    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Begin delivering frames; the socket is read only from now on."""
        with self._state:
            if self._started:
                raise CellError(f"uds: the link with {self._peer} was started already")
            self._on_frame, self._on_close, self._started = on_frame, on_close, True
            ended = self._ended
        if ended:
            self._tell_close()
        else:
            self._on_loop(self._resume)

    def send(self, frame: Frame) -> None:
        """Queue `frame` for the peer; frames sent by one thread arrive in order.

        The body must be None or bytes-like, and stay unchanged until `send`
        returns. Blocks while the peer is behind; raises
        `TargetUnreachableError` once the link is closed or the peer has not
        read for `send_timeout` seconds, `CellError` for a frame it cannot carry.
        """
        head, body = self._encode(frame)
        size = len(head) + body.nbytes
        if self._in_loop():
            # Handlers run on the loop: waiting for the loop here would never end.
            if self._closed:
                raise self._gone("the link is closed")
            self._write(head, body)
            return
        deadline = time.monotonic() + self._send_timeout
        with self._state:
            while not self._closed and (self._paused or self._waiting >= HIGH_WATER):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._gone(f"the peer has not read for {self._send_timeout:g} s")
                self._state.wait(left)
            if self._closed:
                raise self._gone("the link is closed")
            self._waiting += size
        try:
            self._loop.call_soon_threadsafe(self._write_waiting, head, body, size)
        except RuntimeError:  # the loop has stopped: the transport is closed
            with self._state:
                self._waiting -= size
            raise self._gone("the transport is closed") from None

    def admit(self) -> None:
        """The peer said hello: lift the limits of an accepted link. Idempotent."""
        if self.admitted:
            return
        self.admitted = True  # the reader checks it before each frame
        self._on_loop(self._tell_admitted)

    def receive_into(self, provider: BodyBufferProvider) -> None:
        """Receive bodies into the buffers `provider` offers."""
        self._provider = provider

    def close(self) -> None:
        """Close once what was sent is written; `on_close(None)` follows. Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
        self._on_loop(self._close_socket)

    # --- for the transport and for `Admission` (loop thread) --------------------------

    def refuse(self, why: BaseException) -> None:
        """End the link now, unread; its owner's `on_close` gets `why`."""
        if self._refusal is None:
            self._refusal = why
        if self._socket is not None:
            self._socket.abort()
        else:
            self.lost(None)

    def attach(self, socket: asyncio.Transport) -> None:
        """The socket is connected; until `start`, nothing is read from it."""
        self._socket = socket
        socket.set_write_buffer_limits(high=HIGH_WATER)
        with self._state:
            started = self._started
        if not started:
            socket.pause_reading()

    def set_paused(self, paused: bool) -> None:
        """The socket's buffer went over (True) or back under (False) its high-water mark."""
        with self._state:
            self._paused = paused
            self._state.notify_all()

    def buffer_for(self, header: FrameHeader) -> bytearray | memoryview | None:
        """Where a frame's body goes: the buffer the owner offers if it fits, else a new one."""
        if header.body_kind is BodyKind.NONE:
            return None
        provider = self._provider
        if provider is not None and header.body_size:
            try:
                offered = provider(header.headers, header.body_size)
            except Exception:
                log.exception("uds: the body buffer provider of %s failed", self._peer)
                offered = None
            if offered is not None and offered.nbytes == header.body_size and not offered.readonly:
                return offered
        return bytearray(header.body_size)

    def deliver(self, header: FrameHeader, body: bytearray | memoryview | None) -> None:
        """Hand one received frame to the owner; a failing handler ends nothing."""
        handler = self._on_frame
        if handler is None:
            return
        try:
            handler(Frame(header.headers, body))
        except Exception:
            log.exception("uds: the frame handler of %s failed", self._peer)

    def lost(self, cause: BaseException | None) -> None:
        """The socket is gone; tell the owner once (after `start`, if not yet started)."""
        with self._state:
            if self._ended:
                return
            self._ended = self._closed = True
            self._close_cause = cause if cause is not None else self._refusal
            self._state.notify_all()
            started = self._started
        for forget in self.on_lost:
            forget(self)
        if started:
            self._tell_close()

    # --- inside ------------------------------------------------------------------------

    def _gone(self, why: str) -> TargetUnreachableError:
        return TargetUnreachableError(self._peer, why)

    def _encode(self, frame: Frame) -> tuple[bytes, memoryview]:
        body = frame.body
        if body is None:
            kind, view = BodyKind.NONE, memoryview(b"")
        elif isinstance(body, bytes | bytearray | memoryview):
            view = memoryview(body)
            if not view.c_contiguous:
                raise CellError(f"uds to {self._peer}: a frame body must be contiguous memory")
            view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
            kind = BodyKind.BYTES
        else:
            raise CellError(
                f"uds to {self._peer} carries bytes-like bodies or None, not {type(body).__name__}"
            )
        try:
            head = encode_frame_head(
                frame.headers, kind, view.nbytes, max_body_size=self.max_body_size
            )
        except WireFormatError as exc:
            raise CellError(f"uds to {self._peer}: cannot send this frame: {exc}") from exc
        return head, view

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _on_loop(self, callback: Callable[[], None]) -> None:
        if self._in_loop():
            callback()
            return
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop has stopped, and every socket with it

    def _write_waiting(self, head: bytes, body: memoryview, size: int) -> None:
        with self._state:
            self._waiting -= size
            self._state.notify_all()
        self._write(head, body)

    def _write(self, head: bytes, body: memoryview) -> None:
        socket = self._socket
        if socket is None or socket.is_closing():
            return  # the link ended meanwhile; on_close tells the owner
        # Two writes: a big body is never copied just to join it to its head.
        socket.write(head)
        if body.nbytes:
            socket.write(body)

    def _resume(self) -> None:
        if self._socket is not None and not self._socket.is_closing():
            self._socket.resume_reading()

    def _tell_admitted(self) -> None:
        for admitted in self.on_admitted:
            admitted(self)

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()  # writes what is buffered first
        else:
            self.lost(None)

    def _tell_close(self) -> None:
        with self._state:
            if self._close_told or self._on_close is None:
                return
            self._close_told = True
            handler, cause = self._on_close, self._close_cause
        try:
            handler(cause)
        except Exception:
            log.exception("uds: the close handler of %s failed", self._peer)


class _Step(enum.Enum):
    PREFIX = enum.auto()
    HEADER = enum.auto()
    BODY = enum.auto()


class FrameReader(asyncio.BufferedProtocol):
    """Reads frames for one link, each part straight into its own buffer.

    `made(socket)` returns the link the socket belongs to; the transport
    uses it to build (accepting side) or look up (dialing side) that link.
    """

    def __init__(self, made: Callable[[asyncio.Transport], UdsLink]) -> None:
        self._made = made
        self._link: UdsLink | None = None
        self._socket: asyncio.Transport | None = None
        self._prefix = bytearray(PREFIX_SIZE)
        self._step = _Step.PREFIX
        self._target = memoryview(self._prefix)
        self._got = 0
        self._header: FrameHeader | None = None
        self._body: bytearray | memoryview | None = None
        self._error: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._socket = transport
        self._link = self._made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._target[self._got :]

    def buffer_updated(self, nbytes: int) -> None:
        self._got += nbytes
        try:
            # A header or body of 0 bytes is complete at once: step until one is not.
            while self._got == len(self._target) and self._error is None:
                self._next_step()
        except WireFormatError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug here must end this link, not the loop
            log.exception("uds: unexpected error reading from %s", self._peer())
            self._fail(exc)

    def eof_received(self) -> bool | None:
        if self._mid_frame():
            self._fail(WireFormatError(f"truncated frame: {self._where()}"))
        return None  # the transport closes the socket

    def pause_writing(self) -> None:
        if self._link is not None:
            self._link.set_paused(True)

    def resume_writing(self) -> None:
        if self._link is not None:
            self._link.set_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self._error is None and self._mid_frame():
            self._error = WireFormatError(f"truncated frame: {self._where()}")
        self._body = None
        if self._link is not None:
            self._link.lost(self._error or exc)

    # --- the three steps ----------------------------------------------------------------

    def _next_step(self) -> None:
        link = self._link
        assert link is not None
        if self._step is _Step.PREFIX:
            header_size = decode_prefix(self._prefix)
            self._check_admitted(link, PREFIX_SIZE + header_size)
            self._expect(_Step.HEADER, memoryview(bytearray(header_size)))
        elif self._step is _Step.HEADER:
            header = decode_frame_header(self._target, max_body_size=link.max_body_size)
            self._check_admitted(link, PREFIX_SIZE + len(self._target) + header.body_size)
            self._header, self._body = header, link.buffer_for(header)
            body = self._body if self._body is not None else bytearray()
            self._expect(_Step.BODY, memoryview(body).cast("B"))
        else:
            done, received = self._header, self._body
            assert done is not None
            self._header = self._body = None
            self._expect(_Step.PREFIX, memoryview(self._prefix))
            link.deliver(done, received)

    def _expect(self, step: _Step, target: memoryview) -> None:
        self._step, self._target, self._got = step, target, 0

    @staticmethod
    def _check_admitted(link: UdsLink, frame_size: int) -> None:
        if not link.admitted and frame_size > HELLO_MAX_FRAME:
            raise WireFormatError(
                f"a frame of at least {frame_size} bytes before the peer said hello; "
                f"the limit until then is {HELLO_MAX_FRAME}"
            )

    def _mid_frame(self) -> bool:
        return self._step is not _Step.PREFIX or self._got > 0

    def _where(self) -> str:
        return f"the link ended after {self._got} of {len(self._target)} {self._step.name} bytes"

    def _peer(self) -> str:
        return self._link.peer if self._link is not None else "?"

    def _fail(self, exc: BaseException) -> None:
        if self._error is not None:
            return
        self._error = exc
        log.warning("uds: closed the link with %s: %s", self._peer(), exc)
        self._expect(_Step.PREFIX, memoryview(self._prefix))
        self._header = self._body = None
        if self._socket is not None:
            self._socket.abort()

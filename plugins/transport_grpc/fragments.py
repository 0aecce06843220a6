"""How a frame travels as gRPC messages: cut by the sender, gathered by the receiver.

See the connection module's docstring for why listeners take messages of at
most `FRAGMENT` bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from fl_core.serialization import WireFormatError
from fl_core.serialization.envelope import (
    MAX_HEADER_SIZE,
    PREFIX_SIZE,
    BodyKind,
    decode_frame_header,
    decode_prefix,
)
from fl_core.spec.transport import HELLO_MAX_FRAME, BodyBufferProvider, Frame

log = logging.getLogger("fl_plugins.transport_grpc")

FRAGMENT: Final = PREFIX_SIZE + MAX_HEADER_SIZE
"""The largest gRPC message a listener takes: any prefix and header fit in one."""


def encode_messages(head: bytes, body: memoryview, fragment: int | None) -> list[bytes]:
    """A frame as the gRPC messages that carry it: one, or pieces of at most `fragment` bytes."""
    if fragment is None or len(head) + body.nbytes <= fragment:
        return [b"".join((head, body)) if body.nbytes else head]
    first = fragment - len(head)  # > 0: a head is at most FRAGMENT bytes
    messages = [b"".join((head, body[:first]))]
    messages.extend(bytes(body[at : at + fragment]) for at in range(first, body.nbytes, fragment))
    return messages


class FrameAssembler:
    """Gathers a frame from the gRPC messages that carry it.

    A frame that arrives in one message is handed on as a view of it. One
    cut into several is gathered into the buffer `body_buffer()` offers (see
    `Connection.receive_into`: for a model's chunk, the model's own memory,
    which spares the owner a copy), or else into a new bytearray. Neither is
    asked for or allocated before the header has passed the admission check.
    """

    def __init__(
        self,
        max_body_size: int,
        admitted: Callable[[], bool],
        body_buffer: Callable[[], BodyBufferProvider | None] = lambda: None,
    ) -> None:
        self._max_body_size = max_body_size
        self._admitted = admitted
        self._body_buffer = body_buffer
        self._headers: dict[str, str] = {}
        self._body: bytearray | memoryview | None = None
        self._got = 0

    def feed(self, data: bytes) -> Frame | None:
        """Take one message; the frame once it is complete. `WireFormatError` if malformed."""
        if self._body is not None:
            return self._continue(data)
        view = memoryview(data)
        if len(view) < PREFIX_SIZE:
            raise WireFormatError(
                f"truncated frame: a {len(view)}-byte message is shorter than the frame prefix"
            )
        header_size = decode_prefix(view[:PREFIX_SIZE])
        start = PREFIX_SIZE + header_size
        if len(view) < start:
            raise WireFormatError(
                f"truncated frame: the message ends inside the {header_size}-byte header"
            )
        header = decode_frame_header(view[PREFIX_SIZE:start], max_body_size=self._max_body_size)
        total = start + header.body_size
        if total > HELLO_MAX_FRAME and not self._admitted():
            raise WireFormatError(
                f"a frame of {total} bytes before the peer said hello; "
                f"the limit until then is {HELLO_MAX_FRAME}"
            )
        got = len(view) - start
        if got > header.body_size:
            raise WireFormatError(
                f"frame size mismatch: the header announces {header.body_size} body bytes, "
                f"the message holds {got}"
            )
        if got == header.body_size:
            body = None if header.body_kind is BodyKind.NONE else view[start:]
            return Frame(header.headers, body)
        self._headers, self._got = header.headers, got
        self._body = self._target(header.headers, header.body_size)
        self._body[:got] = view[start:]
        return None

    def _target(self, headers: dict[str, str], size: int) -> bytearray | memoryview:
        """Where a body of `size` bytes is gathered: the owner's buffer if it offers one."""
        provider = self._body_buffer()
        if provider is not None:
            try:
                offered = provider(headers, size)
            except Exception:
                log.exception("grpc: the body buffer provider failed")
                offered = None
            if (
                offered is not None
                and offered.nbytes == size
                and not offered.readonly
                and offered.format == "B"
                and offered.ndim == 1
            ):
                return offered
        return bytearray(size)

    def _continue(self, data: bytes) -> Frame | None:
        assert self._body is not None
        end = self._got + len(data)
        if not data or end > len(self._body):
            raise WireFormatError(
                f"frame size mismatch: the header announces {len(self._body)} body bytes, "
                f"the messages hold at least {max(end, self._got + 1)}"
            )
        self._body[self._got : end] = data
        self._got = end
        if end < len(self._body):
            return None
        frame = Frame(self._headers, self._body)
        self._body, self._headers = None, {}
        return frame

    @property
    def mid_frame(self) -> bool:
        """True while a frame's messages are still arriving."""
        return self._body is not None

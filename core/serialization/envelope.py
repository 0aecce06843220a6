"""Frames on a stream transport: fixed prefix, protobuf header, raw body.

This is the one module that converts between protobuf and domain types;
nothing else in fl-core sees `cell_pb2` classes.

One frame on the wire, all integers big-endian::

    offset  size         field
    0       4            magic b"FLC1"
    4       4            header_size  (uint32, <= MAX_HEADER_SIZE)
    8       4            flags        (uint32, 0; a set bit means a newer format)
    12      header_size  FrameHeader, protobuf (fl_core.wire.FrameHeader)
    ...     body_size    body, raw bytes (body_size is a field of the header)

A reader takes `PREFIX_SIZE` bytes, checks them with `decode_prefix`, takes
`header_size` bytes, decodes them with `decode_frame_header` (which checks
`body_size` against the reader's limit before anything is allocated), then
reads exactly `body_size` bytes. `read_frame` does all of that over any
`readinto`-style callable. Bodies larger than the limit are sent as several
frames that share a `StreamInfo.stream_id`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from fl_core.serialization import WireFormatError, cell_pb2

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "MAGIC",
    "MAX_HEADER_SIZE",
    "PREFIX",
    "PREFIX_SIZE",
    "BodyKind",
    "FrameHeader",
    "StreamInfo",
    "decode_frame_header",
    "decode_prefix",
    "encode_frame_head",
    "encode_frame_header",
    "encode_prefix",
    "read_frame",
    "split_into_chunks",
]

MAGIC: Final = b"FLC1"
PREFIX: Final = struct.Struct("!4sII")
"""magic, header size, flags."""
PREFIX_SIZE: Final = PREFIX.size
MAX_HEADER_SIZE: Final = 64 * 1024
"""Protocol-wide cap on the protobuf header; headers are small strings."""
DEFAULT_MAX_BODY_SIZE: Final = 16 * 1024 * 1024
"""Default cap on one frame's body; bigger payloads travel as streams of chunks."""

_UINT64_MAX: Final = 2**64 - 1


class BodyKind(enum.StrEnum):
    """What a frame body holds, so the receiver can pick a decoder."""

    NONE = "none"
    """No body at all; `body_size` is 0."""
    BYTES = "bytes"
    """Opaque bytes."""
    MODEL = "model"
    """An `FLModel` from `model_codec`: its header, then its array buffers."""
    JSON = "json"
    """One UTF-8 JSON document (see `json_codec`)."""


_KIND_TO_PB: Final = {
    BodyKind.NONE: cell_pb2.FrameHeader.NONE,
    BodyKind.BYTES: cell_pb2.FrameHeader.BYTES,
    BodyKind.MODEL: cell_pb2.FrameHeader.MODEL,
    BodyKind.JSON: cell_pb2.FrameHeader.JSON,
}
_PB_TO_KIND: Final = {int(v): k for k, v in _KIND_TO_PB.items()}


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Where one frame's body sits in a chunked payload.

    `seq` counts chunks from 0; `last` marks the final one; `total_size` is
    the whole payload's size in bytes, or 0 when the sender does not know it.
    """

    stream_id: int
    seq: int
    last: bool = False
    total_size: int = 0


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The decoded header of one frame."""

    headers: dict[str, str] = field(default_factory=dict)
    body_kind: BodyKind = BodyKind.NONE
    body_size: int = 0
    stream: StreamInfo | None = None
    """Set only on frames that carry one chunk of a stream."""


def _check_uint64(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise WireFormatError(f"{name} must be an int in [0, 2**64), not {value!r}")
    return value


def _check_body(kind: BodyKind, size: int, max_body_size: int) -> None:
    if kind is BodyKind.NONE and size:
        raise WireFormatError(f"body kind NONE with a body of {size} bytes; use BYTES")
    if size > max_body_size:
        raise WireFormatError(
            f"body too large: {size} bytes, the limit is {max_body_size}; "
            f"larger payloads must be sent as a stream of chunks"
        )


def encode_frame_header(
    headers: Mapping[str, str],
    body_kind: BodyKind,
    body_size: int,
    stream: StreamInfo | None = None,
    *,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> bytes:
    """Serialize a frame header (without the prefix).

    Raises `WireFormatError` if a header key or value is not a str, the body
    is over `max_body_size`, or the header would exceed `MAX_HEADER_SIZE`.
    """
    if not isinstance(body_kind, BodyKind):
        raise WireFormatError(f"body_kind must be a BodyKind, not {body_kind!r}")
    _check_uint64("body_size", body_size)
    _check_body(body_kind, body_size, max_body_size)
    msg = cell_pb2.FrameHeader(body_kind=_KIND_TO_PB[body_kind], body_size=body_size)
    for key, value in headers.items():
        if not isinstance(key, str):
            raise WireFormatError(f"header key {key!r} is {type(key).__name__}, not str")
        if not isinstance(value, str):
            raise WireFormatError(f"header {key!r} value is {type(value).__name__}, not str")
        try:
            # str() turns StrEnum members into their plain value for protobuf.
            msg.headers[str(key)] = str(value)
        except (ValueError, UnicodeError) as exc:
            raise WireFormatError(f"header {key!r} is not valid UTF-8 text: {exc}") from exc
    if stream is not None:
        msg.stream.stream_id = _check_uint64("stream_id", stream.stream_id)
        msg.stream.seq = _check_uint64("seq", stream.seq)
        msg.stream.last = bool(stream.last)
        msg.stream.total_size = _check_uint64("total_size", stream.total_size)
    data: bytes = msg.SerializeToString()
    if len(data) > MAX_HEADER_SIZE:
        raise WireFormatError(
            f"frame header too large: {len(data)} bytes, the limit is {MAX_HEADER_SIZE}; "
            f"send big values in the body"
        )
    return data


def decode_frame_header(
    data: bytes | bytearray | memoryview, *, max_body_size: int = DEFAULT_MAX_BODY_SIZE
) -> FrameHeader:
    """Parse a frame header (without the prefix) and check it.

    Raises `WireFormatError` if it is over `MAX_HEADER_SIZE`, not protobuf,
    names an unknown body kind, or announces a body over `max_body_size`.
    Unknown protobuf fields are ignored, so a newer peer may add fields.
    """
    size = memoryview(data).nbytes
    if size > MAX_HEADER_SIZE:
        raise WireFormatError(f"frame header too large: {size} bytes, limit {MAX_HEADER_SIZE}")
    msg = cell_pb2.FrameHeader()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise WireFormatError(f"undecodable frame header: {exc}") from exc
    raw_kind = int(msg.body_kind)
    kind = _PB_TO_KIND.get(raw_kind)
    if kind is None:
        raise WireFormatError(f"unknown body kind {raw_kind} in frame header")
    body_size = int(msg.body_size)
    _check_body(kind, body_size, max_body_size)
    stream = None
    if msg.HasField("stream"):
        s = msg.stream
        stream = StreamInfo(int(s.stream_id), int(s.seq), bool(s.last), int(s.total_size))
        if stream.total_size and body_size > stream.total_size:
            raise WireFormatError(
                f"stream chunk of {body_size} bytes is larger than the whole stream "
                f"({stream.total_size} bytes)"
            )
    headers = {str(k): str(v) for k, v in msg.headers.items()}
    return FrameHeader(headers, kind, body_size, stream)


def encode_prefix(header_size: int) -> bytes:
    """The fixed prefix announcing a header of `header_size` bytes."""
    if not 0 <= header_size <= MAX_HEADER_SIZE:
        raise WireFormatError(f"header too large: {header_size} bytes, limit {MAX_HEADER_SIZE}")
    return PREFIX.pack(MAGIC, header_size, 0)


def decode_prefix(data: bytes | bytearray | memoryview) -> int:
    """Check a frame prefix and return the header size it announces.

    Raises `WireFormatError` on a short prefix, bad magic, set flags, or a
    header size over `MAX_HEADER_SIZE`.
    """
    if memoryview(data).nbytes != PREFIX_SIZE:
        raise WireFormatError(
            f"truncated frame prefix: {memoryview(data).nbytes} bytes, need {PREFIX_SIZE}"
        )
    magic, header_size, flags = PREFIX.unpack(data)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}, expected {MAGIC!r}: not an fl-core frame")
    if header_size > MAX_HEADER_SIZE:
        raise WireFormatError(
            f"header too large: prefix announces {header_size} bytes, limit {MAX_HEADER_SIZE}"
        )
    if flags:
        raise WireFormatError(f"unknown frame flags {flags:#x}: the peer speaks a newer format")
    return int(header_size)


def encode_frame_head(
    headers: Mapping[str, str],
    body_kind: BodyKind,
    body_size: int,
    stream: StreamInfo | None = None,
    *,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> bytes:
    """Prefix plus header: what a writer sends before the `body_size` body bytes.

    Send the body after it as is, e.g. `sock.sendmsg([head, *buffers])`, so
    big buffers are never copied into one message.
    """
    header = encode_frame_header(headers, body_kind, body_size, stream, max_body_size=max_body_size)
    return encode_prefix(len(header)) + header


ReadInto = Callable[[memoryview], int]
"""`socket.recv_into`, `io.RawIOBase.readinto`: fill a buffer, return the count, 0 at EOF."""


def _read_exactly(readinto: ReadInto, buffer: memoryview, what: str) -> int:
    got = 0
    while got < len(buffer):
        n = readinto(buffer[got:])
        if not n:
            break
        got += n
    if got and got < len(buffer):
        raise WireFormatError(
            f"truncated frame: the connection ended after {got} of the {len(buffer)} {what} bytes"
        )
    return got


def read_frame(
    readinto: ReadInto, *, max_body_size: int = DEFAULT_MAX_BODY_SIZE
) -> tuple[FrameHeader, bytearray] | None:
    """Read one frame with a blocking `readinto`; `None` on EOF between frames.

    The body lands in a fresh `bytearray` of exactly `body_size` bytes, read
    in place (no intermediate copies); arrays decoded from it are writable.
    Raises `WireFormatError` on any violation, including EOF inside a frame.
    """
    prefix = bytearray(PREFIX_SIZE)
    if not _read_exactly(readinto, memoryview(prefix), "prefix"):
        return None
    header_size = decode_prefix(prefix)
    header = bytearray(header_size)
    if _read_exactly(readinto, memoryview(header), "header") < header_size:
        raise WireFormatError(
            f"truncated frame: the connection ended before the {header_size}-byte header"
        )
    decoded = decode_frame_header(header, max_body_size=max_body_size)
    body = bytearray(decoded.body_size)
    if _read_exactly(readinto, memoryview(body), "body") < decoded.body_size:
        raise WireFormatError(
            f"truncated frame: the connection ended before the {decoded.body_size}-byte body"
        )
    return decoded, body


def split_into_chunks(
    parts: Iterable[bytes | bytearray | memoryview], chunk_size: int = DEFAULT_MAX_BODY_SIZE
) -> Iterator[list[memoryview]]:
    """Regroup a payload's parts into chunk bodies of `chunk_size` bytes each.

    Each chunk is a list of memoryview slices of the parts (no copies) for one
    frame's gather write; only the last chunk may be shorter. An empty
    payload gives one empty chunk, so a stream always has a `last` frame.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    chunk: list[memoryview] = []
    room = chunk_size
    yielded = False
    for part in parts:
        view = memoryview(part)
        view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        while view:
            piece, view = view[:room], view[room:]
            chunk.append(piece)
            room -= len(piece)
            if not room:
                yield chunk
                chunk, room, yielded = [], chunk_size, True
    if chunk or not yielded:
        yield chunk

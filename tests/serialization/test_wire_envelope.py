"""Frame prefix, protobuf header and body: round trips and every rejection."""

from __future__ import annotations

import io
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.cell.message import Header
from fl_core.errors import CellError
from fl_core.serialization import WireFormatError
from fl_core.serialization.envelope import (
    DEFAULT_MAX_BODY_SIZE,
    MAGIC,
    MAX_HEADER_SIZE,
    PREFIX_SIZE,
    BodyKind,
    FrameHeader,
    StreamInfo,
    decode_frame_header,
    decode_prefix,
    encode_frame_head,
    encode_frame_header,
    encode_prefix,
    read_frame,
    split_into_chunks,
)

QUICK = settings(database=None, deadline=None, max_examples=200)


def test_the_prefix_is_magic_header_size_and_flags_big_endian() -> None:
    assert PREFIX_SIZE == 12
    assert encode_prefix(300) == b"FLC1" + (300).to_bytes(4, "big") + bytes(4)
    assert decode_prefix(encode_prefix(300)) == 300


@pytest.mark.parametrize("kind", list(BodyKind))
@pytest.mark.parametrize(
    "stream", [None, StreamInfo(7, 0), StreamInfo(2**64 - 1, 3, last=True, total_size=10)]
)
def test_header_round_trip(kind: BodyKind, stream: StreamInfo | None) -> None:
    size = 0 if kind is BodyKind.NONE else 10
    headers = {Header.CHANNEL: "SERVER_MAIN", "topic": "täsk ✓", "": ""}
    data = encode_frame_header(headers, kind, size, stream)
    decoded = decode_frame_header(data)
    assert decoded == FrameHeader(
        {"channel": "SERVER_MAIN", "topic": "täsk ✓", "": ""}, kind, size, stream
    )
    assert all(type(k) is str for k in decoded.headers)


@given(
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=10),
    size=st.integers(0, DEFAULT_MAX_BODY_SIZE),
)
@QUICK
def test_any_text_headers_round_trip(headers: dict[str, str], size: int) -> None:
    data = encode_frame_header(headers, BodyKind.BYTES, size)
    assert decode_frame_header(data) == FrameHeader(headers, BodyKind.BYTES, size)


@given(st.binary(max_size=200))
@QUICK
def test_garbage_header_bytes_never_escape_as_another_error(data: bytes) -> None:
    # Random bytes are sometimes valid protobuf; they must then decode to a
    # checked FrameHeader, and otherwise fail with WireFormatError only.
    try:
        header = decode_frame_header(data)
    except WireFormatError:
        return
    assert header.body_size <= DEFAULT_MAX_BODY_SIZE
    assert header.body_kind is not BodyKind.NONE or header.body_size == 0


@given(st.binary(min_size=12, max_size=12))
@QUICK
def test_garbage_prefixes_are_rejected_unless_well_formed(data: bytes) -> None:
    well_formed = data[:4] == MAGIC and data[8:] == bytes(4)
    well_formed &= int.from_bytes(data[4:8], "big") <= MAX_HEADER_SIZE
    if well_formed:
        assert decode_prefix(data) == int.from_bytes(data[4:8], "big")
    else:
        with pytest.raises(WireFormatError):
            decode_prefix(data)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        (b"FLC2" + struct.pack("!II", 10, 0), r"bad magic b'FLC2', expected b'FLC1'"),
        (b"GET / HTTP/1.1", r"truncated frame prefix: 14 bytes, need 12"),
        (b"FLC1\x00\x00", r"truncated frame prefix: 6 bytes, need 12"),
        (
            b"FLC1" + struct.pack("!II", MAX_HEADER_SIZE + 1, 0),
            rf"header too large: prefix announces {MAX_HEADER_SIZE + 1} bytes, limit 65536",
        ),
        (b"FLC1" + struct.pack("!II", 10, 1), r"unknown frame flags 0x1: .*newer format"),
    ],
)
def test_prefix_violations(prefix: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        decode_prefix(prefix)


def test_wire_format_error_is_a_cell_error() -> None:
    with pytest.raises(CellError):
        decode_prefix(b"nonsense-bytes")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xff\xff", r"undecodable frame header: .*corrupt"),
        (b"\x0a\x05\x0a\x01\xff\x12\x00", r"undecodable frame header: .*UTF-8"),
        (b"\x10\x07", r"unknown body kind 7 in frame header"),
        (b"\x18\x05", r"body kind NONE with a body of 5 bytes"),
        (
            b"\x10\x01\x18" + bytes([0x80, 0x80, 0x80, 0x10]),
            r"body too large: 33554432 bytes, the limit is 16777216; .*stream of chunks",
        ),
        (bytes(MAX_HEADER_SIZE + 1), r"frame header too large: 65537 bytes, limit 65536"),
    ],
)
def test_header_violations(data: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        decode_frame_header(data)


def test_a_stream_chunk_larger_than_its_stream_is_rejected() -> None:
    data = encode_frame_header({}, BodyKind.BYTES, 100, StreamInfo(1, 0, total_size=10**6))
    assert decode_frame_header(data).stream == StreamInfo(1, 0, False, 10**6)
    data = encode_frame_header({}, BodyKind.BYTES, 100, StreamInfo(1, 0, total_size=99))
    with pytest.raises(WireFormatError, match=r"chunk of 100 bytes is larger than .*99 bytes"):
        decode_frame_header(data)


def test_the_receiver_limit_on_the_body_is_its_own() -> None:
    data = encode_frame_header({}, BodyKind.BYTES, 1000)
    assert decode_frame_header(data, max_body_size=1000).body_size == 1000
    with pytest.raises(WireFormatError, match=r"body too large: 1000 bytes, the limit is 999"):
        decode_frame_header(data, max_body_size=999)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"headers": {"n": 1}}, r"header 'n' value is int, not str"),
        ({"headers": {"n": b"x"}}, r"header 'n' value is bytes, not str"),
        ({"headers": {3: "x"}}, r"header key 3 is int, not str"),
        ({"headers": {"n": "\ud800"}}, r"header 'n' is not valid UTF-8 text"),
        ({"headers": {"big": "x" * MAX_HEADER_SIZE}}, r"frame header too large: 655\d\d bytes"),
        ({"body_size": DEFAULT_MAX_BODY_SIZE + 1}, r"body too large: 16777217 bytes"),
        ({"body_size": -1}, r"body_size must be an int in \[0, 2\*\*64\), not -1"),
        ({"body_size": 1.5}, r"body_size must be an int"),
        ({"body_kind": BodyKind.NONE}, r"body kind NONE with a body of 10 bytes; use BYTES"),
        ({"body_kind": "bytes"}, r"body_kind must be a BodyKind, not 'bytes'"),
        ({"stream": StreamInfo(-1, 0)}, r"stream_id must be an int in \[0, 2\*\*64\)"),
        ({"stream": StreamInfo(1, 2**64)}, r"seq must be an int in \[0, 2\*\*64\)"),
    ],
)
def test_encoding_rejects_what_a_receiver_would(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"headers": {}, "body_kind": BodyKind.BYTES, "body_size": 10}
    args.update(kwargs)
    with pytest.raises(WireFormatError, match=message):
        encode_frame_header(**args)  # type: ignore[arg-type]


def _frame(headers: dict[str, str], body: bytes, kind: BodyKind = BodyKind.BYTES) -> bytes:
    return encode_frame_head(headers, kind, len(body)) + body


def test_read_frame_reads_consecutive_frames_then_none_at_eof() -> None:
    stream = io.BytesIO(
        _frame({"a": "1"}, b"hello")
        + _frame({}, b"", BodyKind.NONE)
        + _frame({"b": "2"}, b"x" * 70_000)
    )
    first = read_frame(stream.readinto)
    second = read_frame(stream.readinto)
    third = read_frame(stream.readinto)
    assert first == (FrameHeader({"a": "1"}, BodyKind.BYTES, 5), bytearray(b"hello"))
    assert second == (FrameHeader({}, BodyKind.NONE, 0), bytearray())
    assert third == (FrameHeader({"b": "2"}, BodyKind.BYTES, 70_000), bytearray(b"x" * 70_000))
    assert read_frame(stream.readinto) is None


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (5, r"ended after 5 of the 12 prefix bytes"),
        (PREFIX_SIZE, r"ended before the \d+-byte header"),
        (PREFIX_SIZE + 3, r"ended after 3 of the \d+ header bytes"),
        (-10, r"ended after 90 of the 100 body bytes"),
        (-100, r"ended before the 100-byte body"),
    ],
)
def test_read_frame_reports_where_the_connection_ended(cut: int, message: str) -> None:
    data = _frame({"channel": "x"}, bytes(100))[:cut]
    with pytest.raises(WireFormatError, match=rf"truncated frame: the connection {message}"):
        read_frame(io.BytesIO(data).readinto)


def test_read_frame_checks_the_body_limit_before_reading_the_body() -> None:
    reads: list[int] = []
    stream = io.BytesIO(_frame({}, bytes(2000)))

    def readinto(buffer: memoryview) -> int:
        reads.append(len(buffer))
        return stream.readinto(buffer)

    with pytest.raises(WireFormatError, match=r"body too large: 2000 bytes, the limit is 1000"):
        read_frame(readinto, max_body_size=1000)
    assert 2000 not in reads


def test_read_frame_rejects_a_stream_that_is_not_fl_core() -> None:
    with pytest.raises(WireFormatError, match=r"bad magic b'GET '"):
        read_frame(io.BytesIO(b"GET / HTTP/1.1\r\n\r\n").readinto)


def test_frames_cross_a_real_socket_sent_in_pieces() -> None:
    left, right = socket.socketpair()
    body = [memoryview(b"a" * 300_000), memoryview(b"b" * 5)]
    head = encode_frame_head({"topic": "t"}, BodyKind.BYTES, 300_005)

    def send() -> None:
        with left:
            left.sendall(head)
            for part in body:
                left.sendall(part)

    sender = threading.Thread(target=send)
    sender.start()
    with right:
        frame = read_frame(right.recv_into)
        assert read_frame(right.recv_into) is None
    sender.join()
    assert frame is not None
    assert frame[0] == FrameHeader({"topic": "t"}, BodyKind.BYTES, 300_005)
    assert frame[1] == b"a" * 300_000 + b"b" * 5


@given(
    sizes=st.lists(st.integers(0, 50), max_size=8),
    chunk_size=st.integers(1, 40),
)
@QUICK
def test_split_into_chunks_regroups_parts_without_copying(
    sizes: list[int], chunk_size: int
) -> None:
    parts = [bytes([i]) * n for i, n in enumerate(sizes)]
    chunks = list(split_into_chunks(parts, chunk_size))
    joined = [b"".join(chunk) for chunk in chunks]
    assert b"".join(joined) == b"".join(parts)
    assert all(len(c) == chunk_size for c in joined[:-1])
    assert 0 < len(joined[-1]) <= chunk_size or joined == [b""]
    owners = {id(p) for p in parts}
    assert all(id(piece.obj) in owners for chunk in chunks for piece in chunk)


def test_split_into_chunks_of_an_empty_payload_is_one_empty_chunk() -> None:
    assert list(split_into_chunks([b"", b""], 4)) == [[]]
    with pytest.raises(ValueError, match="chunk_size must be positive, not 0"):
        list(split_into_chunks([b"x"], 0))

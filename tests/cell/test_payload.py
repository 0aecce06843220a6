"""Payload encoding for bytes-only transports: kinds, chunking, reassembly, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.cell.payload import (
    PayloadAssembler,
    PayloadKind,
    PayloadLimits,
    PayloadRefusedError,
    decode_payload,
    encode_payload,
)
from fl_core.errors import CellError
from fl_core.model import FLModel

LIMITS = PayloadLimits()


def _model() -> FLModel:
    return FLModel(
        params={
            "w": np.arange(3000, dtype=np.float32).reshape(30, 100),
            "b": np.array([1.5, -2.0]),
            "n": np.arange(5, dtype=np.int64),
        },
        metrics={"acc": 0.5},
        meta={"num_samples": 3},
    )


def _same(a: FLModel, b: object) -> bool:
    assert isinstance(b, FLModel)
    return (
        a.params.keys() == b.params.keys()
        and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
        and all(a.params[k].dtype == b.params[k].dtype for k in a.params)
        and (a.metrics, a.meta) == (b.metrics, b.meta)
    )


@pytest.mark.parametrize(
    ("payload", "kind"),
    [(None, "none"), (b"ab", "bytes"), ({"a": [1, None]}, "json"), ("t", "json"), (2.5, "json")],
)
def test_each_payload_round_trips_through_one_frame(payload: object, kind: str) -> None:
    encoded = encode_payload(payload, where="a test")
    assert encoded.kind == kind
    body = encoded.joined()
    assert decode_payload(encoded.kind, body, LIMITS) == payload


def test_a_model_round_trips_and_its_arrays_alias_the_body() -> None:
    model = _model()
    encoded = encode_payload(model, where="a test")
    body = bytearray(encoded.joined())
    back = decode_payload(PayloadKind.MODEL, body, LIMITS)
    assert _same(model, back)
    assert isinstance(back, FLModel) and np.shares_memory(back.params["w"], np.frombuffer(body))


@pytest.mark.parametrize("bad", [{1, 2}, object(), {"x": float("nan")}, {3: "int key"}])
def test_payloads_json_cannot_carry_are_refused_naming_where(bad: object) -> None:
    with pytest.raises(
        PayloadRefusedError, match=r"the payload of request a -> b .*cannot be sent"
    ):
        encode_payload(bad, where="request a -> b")


def test_big_parts_are_chunked_as_views_and_small_ones_packed() -> None:
    big = np.ones(10_000, dtype=np.uint8)
    encoded = encode_payload(b"h" * 10, where="t")
    encoded.parts = [memoryview(b"h" * 10), memoryview(big), memoryview(b"t" * 3)]
    encoded.size = 10_013
    chunks = list(encoded.chunks(4096))
    assert b"".join(bytes(c) for c in chunks) == b"h" * 10 + bytes(big) + b"t" * 3
    assert [memoryview(c).nbytes for c in chunks] == [4096, 4096, 1821]
    # The middle chunk lies inside the big part: a view, not a copy.
    assert isinstance(chunks[1], memoryview) and chunks[1].obj is big


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=0, max_size=8),
    chunk=st.integers(1, 4096),
)
def test_chunks_rebuild_the_payload_exactly(sizes: list[int], chunk: int) -> None:
    parts = [memoryview(bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    encoded = encode_payload(b"", where="t")
    encoded.parts, encoded.size = parts, sum(sizes)
    chunks = [bytes(c) for c in encoded.chunks(chunk)]
    assert b"".join(chunks) == b"".join(bytes(p) for p in parts)
    assert all(len(c) == chunk for c in chunks[:-1]) and len(chunks[-1]) <= chunk
    assert len(chunks) >= 1


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 20_000), min_size=0, max_size=6))
def test_the_assembler_rebuilds_a_model_split_anywhere(cuts: list[int]) -> None:
    model = _model()
    data = bytes(encode_payload(model, where="t").joined())
    assembler = PayloadAssembler(PayloadKind.MODEL, len(data), LIMITS)
    points = sorted({min(c, len(data)) for c in cuts})
    names = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        names += [name for name, _ in assembler.feed(data[start:end])]
    assert names == ["w", "b", "n"]
    assert _same(model, assembler.result())


def test_received_in_place_through_reserve_and_commit() -> None:
    model = FLModel(params={"w": np.arange(1 << 16, dtype=np.float32)})
    data = memoryview(bytes(encode_payload(model, where="t").joined()))
    assembler = PayloadAssembler(PayloadKind.MODEL, len(data), LIMITS)
    assert assembler.reserve(100) is None  # the header has not arrived
    assembler.feed(data[:4096])
    position = 4096
    while position < len(data):
        view = assembler.reserve(min(8192, len(data) - position))
        assert view is not None
        view[:] = data[position : position + len(view)]
        assembler.commit(len(view))
        position += len(view)
    assert _same(model, assembler.result())


def test_in_place_room_is_what_is_left_of_the_current_array() -> None:
    model = FLModel(params={"a": np.arange(1000, dtype=np.float32), "b": np.ones(7, np.int64)})
    data = memoryview(bytes(encode_payload(model, where="t").joined()))
    header = bytes(data).find(model.params["a"].tobytes())  # where array a's bytes begin
    assembler = PayloadAssembler(PayloadKind.MODEL, len(data), LIMITS)
    assert assembler.in_place_room() == 0  # the header has not arrived
    assembler.feed(data[:header])
    assert assembler.in_place_room() == 4000
    assembler.feed(data[header : header + 1000])
    assert assembler.in_place_room() == 3000
    position = header + 1000
    while (room := assembler.in_place_room()) > 0:
        view = assembler.reserve(room)
        assert view is not None
        view[:] = data[position : position + room]
        assembler.commit(room)
        position += room
    assert position == len(data)
    assert _same(model, assembler.result())


def test_handing_out_arrays_forgets_them() -> None:
    model = _model()
    data = bytes(encode_payload(model, where="t").joined())
    assembler = PayloadAssembler(PayloadKind.MODEL, len(data), LIMITS, keep_arrays=False)
    arrays = assembler.feed(data)
    assert [name for name, _ in arrays] == ["w", "b", "n"]
    assert np.array_equal(arrays[0][1], model.params["w"])
    with pytest.raises(CellError, match="handed out one by one"):
        assembler.result()


@pytest.mark.parametrize(
    ("kind", "size", "limits", "problem"),
    [
        (PayloadKind.BYTES, 11, PayloadLimits(max_size=10), "over this cell's limit of 10"),
        (PayloadKind.JSON, 11, PayloadLimits(max_json_size=10), "over this cell's limit of 10"),
        (PayloadKind.NONE, 3, LIMITS, "a NONE payload with 3 bytes"),
    ],
)
def test_sizes_are_refused_before_memory_is_reserved(
    kind: PayloadKind, size: int, limits: PayloadLimits, problem: str
) -> None:
    with pytest.raises(CellError, match=problem):
        PayloadAssembler(kind, size, limits)


def test_more_bytes_than_announced_are_refused() -> None:
    assembler = PayloadAssembler(PayloadKind.BYTES, 4, LIMITS)
    assembler.feed(b"abc")
    with pytest.raises(CellError, match="longer than announced: 5 bytes, announced 4"):
        assembler.feed(b"de")


@pytest.mark.parametrize(
    ("kind", "body", "problem"),
    [
        (PayloadKind.JSON, b"{nope", "bad json payload: undecodable"),
        (PayloadKind.JSON, b'{"a": NaN}', "NaN is not JSON"),
        (PayloadKind.MODEL, b"FLM1" + b"\xff" * 60, "model header too large"),
        (PayloadKind.MODEL, b"XXXX" + b"\0" * 60, "bad model header magic"),
    ],
)
def test_bad_bodies_are_refused_saying_why(kind: PayloadKind, body: bytes, problem: str) -> None:
    with pytest.raises(CellError, match=problem):
        decode_payload(kind, body, LIMITS)


def test_a_truncated_streamed_model_is_refused() -> None:
    data = bytes(encode_payload(_model(), where="t").joined())
    assembler = PayloadAssembler(PayloadKind.MODEL, len(data) - 8, LIMITS)
    with pytest.raises(CellError, match="its header describes"):
        assembler.feed(data[: len(data) - 8])

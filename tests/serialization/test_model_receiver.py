"""ModelReceiver: chunks split anywhere, arrays handed out as soon as complete."""

from __future__ import annotations

import itertools
import socket
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.model import FLModel, ParamsType
from fl_core.serialization import WireFormatError
from fl_core.serialization.model_codec import ModelLimits, ModelReceiver, encode_model
from fl_core.serialization.model_header import parse_model_header

LIMITS = ModelLimits(max_total_bytes=1 << 30)


def _model() -> FLModel:
    rng = np.random.default_rng(1)
    return FLModel(
        params={
            "first": np.zeros((0,), np.float32),
            "conv.w": rng.standard_normal((3, 5, 7)).astype(np.float32),
            "scalar": np.array(-3, np.int64),
            "mid.empty": np.zeros((2, 0), np.complex128),
            "flags": rng.integers(0, 2, 13).astype(bool),
            "c": (rng.standard_normal(9) + 1j).astype(np.complex64),
            "h": rng.standard_normal(33).astype(np.float16),
            "last.empty": np.zeros((0, 3), np.uint16),
        },
        params_type=ParamsType.DIFF,
        metrics={"loss": 0.125},
        meta={"num_samples": 12},
        current_round=2,
        total_rounds=5,
    )


def _encoded(model: FLModel) -> tuple[bytes, bytes]:
    header, buffers = encode_model(model)
    return header, b"".join(buffers)


def _check_final(got: FLModel, model: FLModel) -> None:
    assert list(got.params) == list(model.params)
    for name, array in model.params.items():
        assert got.params[name].dtype == array.dtype
        np.testing.assert_array_equal(got.params[name], array)
    assert (got.params_type, got.metrics, got.meta) == (
        model.params_type,
        model.metrics,
        model.meta,
    )
    assert (got.current_round, got.total_rounds) == (2, 5)


@given(cuts=st.lists(st.integers(0, 2000), max_size=40), empty_feeds=st.booleans())
@settings(database=None, deadline=None, max_examples=200)
def test_random_splits_rebuild_the_model_and_hand_out_arrays_when_complete(
    cuts: list[int], empty_feeds: bool
) -> None:
    model = _model()
    header, body = _encoded(model)
    ends = {s.name: s.end for s in parse_model_header(header, LIMITS).arrays}
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    receiver = ModelReceiver(header, LIMITS)
    handed: list[str] = []
    for start, stop in itertools.pairwise(points):
        if empty_feeds:
            handed += [name for name, _ in receiver.feed(b"")]
        got = receiver.feed(memoryview(body)[start:stop])
        for name, array in got:
            # Complete means every byte is in place when it is handed out.
            np.testing.assert_array_equal(array, model.params[name])
        handed += [name for name, _ in got]
        # As soon as complete: everything that ends by now was handed out.
        assert handed == [n for n in model.params if ends[n] <= stop]
    assert handed == list(model.params)
    _check_final(receiver.finish(), model)


def test_each_array_is_handed_out_by_the_feed_that_completes_it() -> None:
    model = FLModel(params={"a": np.arange(3, dtype=np.uint8), "b": np.arange(2, dtype=np.uint8)})
    header, body = _encoded(model)
    assert len(body) == 66  # a at [0, 3), padding, b at [64, 66)
    receiver = ModelReceiver(header, LIMITS)
    assert receiver.feed(body[:2]) == []
    [(name, array)] = receiver.feed(body[2:3])
    assert name == "a" and array.tolist() == [0, 1, 2]
    assert receiver.feed(body[3:65]) == []
    assert [n for n, _ in receiver.feed(body[65:])] == ["b"]
    assert receiver.remaining == 0 and receiver.received == 66


def test_finish_returns_the_very_arrays_that_were_handed_out() -> None:
    header, body = _encoded(_model())
    receiver = ModelReceiver(header, LIMITS)
    handed = dict(receiver.feed(body))
    final = receiver.finish()
    assert all(final.params[name] is array for name, array in handed.items())
    assert all(a.flags.writeable for a in final.params.values())


def test_an_empty_body_reports_its_arrays_on_the_first_feed() -> None:
    header, body = _encoded(FLModel(params={"e": np.zeros(0), "f": np.zeros((0, 2))}))
    assert body == b""
    receiver = ModelReceiver(header, LIMITS)
    assert [n for n, _ in receiver.feed(b"")] == ["e", "f"]
    assert receiver.feed(b"") == []
    assert list(receiver.finish().params) == ["e", "f"]


def test_missing_bytes_fail_at_finish_naming_the_incomplete_array() -> None:
    header, body = _encoded(_model())
    cut = next(s.end for s in parse_model_header(header, LIMITS).arrays if s.name == "h") - 5
    receiver = ModelReceiver(header, LIMITS)
    receiver.feed(body[:cut])
    with pytest.raises(WireFormatError, match=rf"truncated: received {cut} of {len(body)} bytes"):
        receiver.finish()
    with pytest.raises(WireFormatError, match=r"array 'h' is incomplete"):
        receiver.finish()


def test_extra_bytes_fail_at_once_and_kill_the_receiver() -> None:
    header, body = _encoded(_model())
    receiver = ModelReceiver(header, LIMITS)
    receiver.feed(body[:10])
    with pytest.raises(WireFormatError, match=r"model body too long: 3 bytes beyond the \d+"):
        receiver.feed(body[10:] + b"xyz")
    with pytest.raises(WireFormatError, match=r"too long"):
        receiver.feed(b"")
    with pytest.raises(WireFormatError, match=r"too long"):
        receiver.finish()


def test_the_header_is_checked_before_anything_is_allocated() -> None:
    header, _ = _encoded(FLModel(params={"big": np.zeros(1000, np.float64)}))
    allocated: list[str] = []

    def allocate(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        allocated.append(name)
        return np.empty(shape, dtype)

    with pytest.raises(WireFormatError, match=r"reaches 8000 bytes at array 'big'"):
        ModelReceiver(header, ModelLimits(max_total_bytes=7999), allocate=allocate)
    assert allocated == []


def test_a_caller_can_supply_reused_arrays() -> None:
    model = FLModel(params={"w": np.arange(6.0).reshape(2, 3)})
    header, body = _encoded(model)
    pool = {"w": np.full((2, 3), -1.0)}
    receiver = ModelReceiver(header, LIMITS, allocate=lambda name, shape, dtype: pool[name])
    receiver.feed(body)
    assert receiver.finish().params["w"] is pool["w"]
    np.testing.assert_array_equal(pool["w"], model.params["w"])
    wrong = ModelReceiver(header, LIMITS, allocate=lambda name, shape, dtype: np.empty((3, 2)))
    with pytest.raises(ValueError, match=r"allocate\('w'\) must return a writable C-contiguous"):
        wrong.feed(body)  # arrays are allocated as their first bytes arrive


def test_arrays_are_allocated_only_as_their_bytes_arrive() -> None:
    model = FLModel(params={"a": np.arange(4.0), "b": np.arange(8.0)})
    header, body = _encoded(model)
    asked: list[str] = []

    def allocate(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        asked.append(name)
        return np.empty(shape, dtype=dtype)

    receiver = ModelReceiver(header, LIMITS, allocate=allocate)
    assert asked == []
    first = receiver.feed(memoryview(body)[:8])
    assert asked == ["a"] and first == []
    receiver.feed(memoryview(body)[8:])
    assert asked == ["a", "b"]
    np.testing.assert_array_equal(receiver.finish().params["b"], model.params["b"])


def test_get_buffer_receives_from_a_socket_straight_into_the_arrays() -> None:
    model = _model()
    header, buffers = encode_model(model)
    left, right = socket.socketpair()

    def send() -> None:
        with left:
            for part in buffers:
                left.sendall(part)

    sender = threading.Thread(target=send)
    sender.start()
    receiver = ModelReceiver(header, LIMITS)
    handed: list[str] = []
    with right:
        while receiver.remaining:
            buffer = receiver.get_buffer()
            n = right.recv_into(buffer)
            assert n, "sender closed early"
            handed += [name for name, _ in receiver.buffer_updated(n)]
        assert len(receiver.get_buffer()) == 0
    sender.join()
    assert handed == list(model.params)
    _check_final(receiver.finish(), model)


def test_buffer_updated_refuses_more_than_the_buffer_held() -> None:
    header, _ = _encoded(FLModel(params={"a": np.zeros(4, np.uint8)}))
    receiver = ModelReceiver(header, LIMITS)
    assert len(receiver.get_buffer()) == 4
    with pytest.raises(ValueError, match=r"buffer_updated\(5\): the buffer had 4 bytes"):
        receiver.buffer_updated(5)

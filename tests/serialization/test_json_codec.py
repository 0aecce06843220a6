"""Strict JSON for meta and JSON frame bodies."""

from __future__ import annotations

import enum

import pytest

from fl_core.serialization import WireFormatError
from fl_core.serialization.json_codec import JsonLimits, decode_json, encode_json


class _Key(enum.StrEnum):
    SITE = "site"


def test_round_trip_is_exact_and_compact() -> None:
    value = {"a": [1, 2.5, None, True, "ü"], "b": {"c": {}}, _Key.SITE: "site-1"}
    data = encode_json(value)
    assert data == '{"a":[1,2.5,null,true,"ü"],"b":{"c":{}},"site":"site-1"}'.encode()
    assert decode_json(data, max_size=len(data)) == value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"x": Infinity}', r"undecodable JSON body: Infinity is not JSON"),
        (b'{"x": 1, "x": 1}', r"undecodable JSON body: duplicate key 'x'"),
        (b"\xff", r"undecodable JSON body: not UTF-8"),
        (b"[[[1]]]", r"JSON body\[0\]\[0\] is nested more than 2 containers deep"),
        (b"[1, 2, 3, 4]", r"JSON body has more than 4 values"),
        (b" " * 101, r"JSON body is 101 bytes, over the limit of 100"),
    ],
)
def test_decode_rejections(data: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        decode_json(data, max_size=100, limits=JsonLimits(max_depth=2, max_items=4))


def test_encode_refuses_values_that_would_not_come_back_equal() -> None:
    with pytest.raises(WireFormatError, match=r"value\['t'\] is a tuple, which is not JSON"):
        encode_json({"t": (1,)})
    with pytest.raises(WireFormatError, match=r"value is nan; only finite numbers"):
        encode_json(float("nan"))
    with pytest.raises(WireFormatError, match=r"value cannot be encoded as JSON: .*digits"):
        encode_json(10**5000)

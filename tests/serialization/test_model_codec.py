"""FLModel wire codec: round trips, zero copies, and every rejection."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.model import FLModel, ParamsType
from fl_core.serialization import WireFormatError
from fl_core.serialization.model_codec import (
    ModelLimits,
    decode_model,
    encode_model,
    split_model_payload,
)
from fl_core.serialization.model_header import (
    ALIGNMENT,
    WIRE_DTYPES,
    pack_header_json,
    parse_model_header,
)

QUICK = settings(database=None, deadline=None, max_examples=100)
LIMITS = ModelLimits(max_total_bytes=1 << 30)


def _sample(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape)
    # Random bytes are valid for every allowed dtype except bool (only 0 and 1).
    return array.astype(bool) if dtype.kind == "b" else array


def _body(buffers: list[memoryview]) -> bytes:
    return b"".join(buffers)


def _round_trip(model: FLModel) -> FLModel:
    header, buffers = encode_model(model)
    return decode_model(header, _body(buffers))


def _assert_same(decoded: FLModel, model: FLModel) -> None:
    assert list(decoded.params) == list(model.params)
    for name, array in model.params.items():
        got = decoded.params[name]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        # Bytewise: NaN payloads in random float bytes must survive too.
        assert got.tobytes() == np.ascontiguousarray(array).tobytes(), name
    assert decoded.params_type == model.params_type
    assert decoded.metrics == model.metrics
    assert decoded.meta == model.meta
    assert (decoded.current_round, decoded.total_rounds) == (
        model.current_round,
        model.total_rounds,
    )


@pytest.mark.parametrize("dtype_name", list(WIRE_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (7,), (5, 3), (2, 3, 4)])
def test_every_allowed_dtype_and_shape_round_trips(dtype_name: str, shape: tuple[int, ...]) -> None:
    dtype = np.dtype(dtype_name)
    model = FLModel(params={"x": _sample(dtype, shape), "after": np.arange(3, dtype=np.int8)})
    _assert_same(_round_trip(model), model)


def test_a_mixed_model_with_metadata_round_trips_in_order() -> None:
    model = FLModel(
        params={
            "z.bias": np.float32(1.5) * np.ones(3, np.float32),
            "a.weight": _sample(np.dtype("<f8"), (4, 5)),
            "empty": np.zeros((0, 4), np.float16),
            "mask": np.array([True, False]),
        },
        params_type=ParamsType.DIFF,
        metrics={"loss": 0.25, "acc": 1},
        meta={"num_samples": 100, "site": "site-1", "hist": [1, 2.5, None, {"k": [True]}]},
        current_round=3,
        total_rounds=10,
    )
    decoded = _round_trip(model)
    _assert_same(decoded, model)
    assert all(type(v) is float for v in decoded.metrics.values())


def test_numpy_metrics_are_converted_to_floats() -> None:
    model = FLModel(metrics={"loss": np.float32(0.5), "n": np.int64(3)})
    assert _round_trip(model).metrics == {"loss": 0.5, "n": 3.0}


def test_many_small_arrays_and_full_meta_fit_the_default_limits() -> None:
    params = {f"layer{i}.w": np.full((1, 2), i, np.int16) for i in range(20_000)}
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(30):  # meta, d and 30 more: exactly the default depth of 32
        node["k"] = node = {}
    model = FLModel(params=params, meta={"d": deep, "l": list(range(99_000))})
    decoded = _round_trip(model)
    _assert_same(decoded, model)
    assert decoded.params["layer19999.w"].tolist() == [[19999, 19999]]


def test_offsets_are_aligned_and_the_header_is_padded() -> None:
    model = FLModel(params={"a": np.ones(3, np.uint8), "b": np.ones(5, np.float64)})
    header, buffers = encode_model(model)
    assert len(header) % ALIGNMENT == 0
    layout = parse_model_header(header, LIMITS)
    assert [(s.offset, s.nbytes) for s in layout.arrays] == [(0, 3), (64, 40)]
    body = _body(buffers)
    assert len(body) == layout.body_size == 104
    assert body[3:64] == bytes(61)


def test_encoding_shares_memory_with_contiguous_arrays() -> None:
    array = np.arange(1000, dtype=np.float32)
    _, buffers = encode_model(FLModel(params={"w": array}))
    (view,) = buffers
    assert np.shares_memory(np.frombuffer(view, np.uint8), array)


def test_a_non_contiguous_array_is_copied_once_into_c_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    header, buffers = encode_model(FLModel(params={"t": array}))
    assert not np.shares_memory(np.frombuffer(buffers[0], np.uint8), array)
    np.testing.assert_array_equal(decode_model(header, _body(buffers)).params["t"], array)


def test_decoding_50_mb_shares_memory_with_the_body() -> None:
    array = np.arange(12_500_000, dtype=np.float32)
    header, buffers = encode_model(FLModel(params={"big": array, "tail": np.ones(3)}))
    body = _body(buffers)
    decoded = decode_model(header, body)
    assert np.shares_memory(decoded.params["big"], np.frombuffer(body, np.uint8))
    assert decoded.params["big"].flags.aligned
    assert not decoded.params["big"].flags.writeable  # bytes are immutable
    np.testing.assert_array_equal(decoded.params["big"], array)


def test_a_mutable_body_gives_writable_arrays() -> None:
    header, buffers = encode_model(FLModel(params={"w": np.zeros(4)}))
    body = bytearray(_body(buffers))
    decoded = decode_model(header, body)
    decoded.params["w"] += 1
    assert np.frombuffer(body, np.float64).tolist() == [1.0] * 4


def test_split_model_payload_separates_header_and_body_without_copying() -> None:
    model = FLModel(params={"w": np.arange(5.0)})
    header, buffers = encode_model(model)
    payload = header + _body(buffers)
    head, body = split_model_payload(payload, LIMITS)
    assert bytes(head) == header
    assert body.obj is payload
    _assert_same(decode_model(head, body), model)
    with pytest.raises(WireFormatError, match=r"truncated model payload: 10 bytes"):
        split_model_payload(payload[:10], LIMITS)


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            FLModel(params={"o": np.array([{"a": 1}], dtype=object)}),
            r"array 'o' has dtype object: object arrays would need pickle",
        ),
        (
            FLModel(params={"be": np.ones(2, dtype=">f4")}),
            r"array 'be' has dtype >f4, which is big-endian; the wire is little-endian",
        ),
        (
            FLModel(params={"s": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])}),
            r"array 's' has dtype .*: structured and void dtypes are not allowed",
        ),
        (FLModel(params={"v": np.zeros(2, dtype="V4")}), r"structured and void dtypes"),
        (FLModel(params={"u": np.array(["ab"])}), r"array 'u' has dtype <U2: string arrays"),
        (
            FLModel(params={"t": np.zeros(2, dtype="datetime64[s]")}),
            r"array 't' has dtype datetime64\[s\], which is not allowed; allowed dtypes: bool",
        ),
        (FLModel(params={"l": [1.0, 2.0]}), r"param 'l' is a list, not a plain numpy array"),  # type: ignore[dict-item]
        (
            FLModel(params={"m": np.ma.masked_array([1.0], mask=[True])}),
            r"param 'm' is a MaskedArray, not a plain numpy array",
        ),
        (FLModel(params={"": np.ones(1)}), r"a param has a name of 0 characters; it must have 1"),
        (
            FLModel(params={"n" * 257: np.ones(1)}),
            r"a name of 257 characters; it must have 1 to 256",
        ),
        (FLModel(params={7: np.ones(1)}), r"a param has a name of type int, not str"),  # type: ignore[dict-item]
        (FLModel(params={"d": np.ones((1,) * 33)}), r"array 'd' has 33 dimensions, max 32"),
        (FLModel(metrics={"loss": math.nan}), r"metric 'loss' is nan; metrics must be finite"),
        (FLModel(metrics={"loss": np.float32("inf")}), r"metric 'loss' is .*inf.*; .*finite"),
        (FLModel(metrics={"ok": True}), r"metric 'ok' is bool, not a real number"),
        (FLModel(metrics={"c": 1j}), r"metric 'c' is complex, not a real number"),
        (FLModel(metrics={"s": "0.5"}), r"metric 's' is str, not a real number"),
        (FLModel(meta={"t": (1, 2)}), r"meta\['t'\] is a tuple, which is not JSON.*use a list"),
        (FLModel(meta={"n": np.int64(3)}), r"meta\['n'\] is a numpy.int64, .*\.item\(\)"),
        (FLModel(meta={"s": {1, 2}}), r"meta\['s'\] is a set, which is not JSON"),
        (FLModel(meta={"o": _Opaque()}), r"meta\['o'\] is a .*_Opaque, which is not JSON"),
        (FLModel(meta={"x": [math.inf]}), r"meta\['x'\]\[0\] is inf; only finite numbers"),
        (FLModel(meta={"d": {1: "a"}}), r"meta\['d'\] has a key 1 of type int; keys must be str"),
        (FLModel(meta={"s": "\ud800"}), r"model header cannot be encoded as JSON"),
        (FLModel(params_type="HALF"), r"params_type 'HALF' is not FULL or DIFF"),  # type: ignore[arg-type]
        (FLModel(current_round=-1), r"current_round must be a non-negative int or None, not -1"),
        (FLModel(total_rounds=True), r"total_rounds must be a non-negative int or None, not True"),
        (FLModel(total_rounds=2.0), r"total_rounds must be a non-negative int"),  # type: ignore[arg-type]
    ],
)
def test_encoding_rejects_what_may_not_travel(model: FLModel, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        encode_model(model)


def test_encoding_enforces_the_callers_limits() -> None:
    model = FLModel(params={"a": np.ones(10, np.uint8), "b": np.ones(10, np.uint8)})
    assert encode_model(model, ModelLimits(max_total_bytes=74))
    with pytest.raises(WireFormatError, match=r"reaches 74 bytes at array 'b', over .* of 73"):
        encode_model(model, ModelLimits(max_total_bytes=73))
    with pytest.raises(WireFormatError, match=r"model has 2 arrays, the limit is 1"):
        encode_model(model, ModelLimits(max_total_bytes=100, max_arrays=1))
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["k"] = node = {}
    with pytest.raises(WireFormatError, match=r"nested more than 32 containers deep"):
        encode_model(FLModel(meta=deep))
    with pytest.raises(WireFormatError, match=r"meta has more than 10 values"):
        encode_model(FLModel(meta={"l": list(range(10))}), ModelLimits(1, max_meta_items=10))


# --- decoding a tampered header ------------------------------------------------------


def _valid() -> tuple[dict[str, Any], bytes]:
    model = FLModel(
        params={"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.int16)},
        metrics={"loss": 0.5},
        meta={"num_samples": 4},
    )
    header, buffers = encode_model(model)
    doc = json.loads(header[8:])
    return doc, _body(buffers)


def _decode(doc: dict[str, Any], body: bytes, limits: ModelLimits | None = None) -> FLModel:
    return decode_model(pack_header_json(json.dumps(doc).encode()), body, limits)


def test_the_untampered_header_decodes() -> None:
    doc, body = _valid()
    assert _decode(doc, body).params["a"].tolist() == [0.0, 1.0, 2.0, 3.0]


def _set(path: str, value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _drop(key: str) -> Any:
    return lambda doc: doc.pop(key)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("arrays.0.dtype", "object"), r"array 'a' has dtype 'object', which is not allowed"),
        (_set("arrays.0.dtype", "<f4"), r"array 'a' has dtype '<f4', which is not allowed"),
        (_set("arrays.0.dtype", ">f4"), r"array 'a' has dtype '>f4', which is not allowed"),
        (
            _set("arrays.0.shape", [5]),
            r"array 'a': nbytes is 16, but shape \[5\] of float32 needs 20",
        ),
        (_set("arrays.0.nbytes", 17), r"nbytes is 17, but shape \[4\] of float32 needs 16"),
        (_set("arrays.0.shape", [-4]), r"array 'a': shape \[-4\] has -4, not a non-negative int"),
        (_set("arrays.0.shape", [True]), r"shape \[True\] has True, not a non-negative int"),
        (_set("arrays.0.shape", "4"), r"array 'a': shape must be a list of at most 32 ints"),
        (_set("arrays.0.shape", [1] * 33), r"shape must be a list of at most 32 ints"),
        (
            _set("arrays.1.offset", 8),
            r"array 'b' at bytes \[8, 16\) overlaps array 'a' at \[0, 16\)",
        ),
        (_set("arrays.1.offset", 128), r"array 'b' starts at byte 128, expected 64"),
        (_set("arrays.0.offset", 64), r"array 'a' starts at byte 64, expected 0"),
        (_set("arrays.0.offset", -1), r"array 'a': offset must be a non-negative int, not -1"),
        (_set("arrays.1.name", "a"), r"array name 'a' appears more than once"),
        (_set("arrays.1.name", ""), r"array #1 has a name of 0 characters"),
        (_set("arrays.1.name", "x" * 257), r"array #1 has a name of 257 characters"),
        (_set("arrays.1.name", 5), r"array #1 has a name of type int, not str"),
        (_set("arrays.1", [1]), r"array #1 is list, not an object"),
        (_set("arrays.1.extra", 1), r"array #1 has keys \[.*'extra'.*\], expected"),
        (_set("arrays", {}), r"arrays is a JSON dict, not a list"),
        (_set("metrics", {"loss": 10**400}), r"metric 'loss' is 1000.*; metrics must be finite"),
        (_set("metrics", {"loss": "x"}), r"metric 'loss' is str, not a real number"),
        (_set("metrics", []), r"metrics is a JSON list, not an object"),
        (_set("meta", [1]), r"meta is a JSON list, not an object"),
        (_set("params_type", "full"), r"params_type is 'full', not one of \['FULL', 'DIFF'\]"),
        (_set("current_round", -2), r"current_round must be a non-negative int or None, not -2"),
        (_set("total_rounds", 1.5), r"total_rounds must be a non-negative int or None, not 1.5"),
        (
            _set("pickle", "gASVCw=="),
            r"model header keys are wrong: missing \[\], unknown \['pickle'\]",
        ),
        (_drop("arrays"), r"model header keys are wrong: missing \['arrays'\], unknown \[\]"),
    ],
)
def test_decoding_rejects_a_tampered_header(mutate: Any, message: str) -> None:
    doc, body = _valid()
    mutate(doc)
    with pytest.raises(WireFormatError, match=message):
        _decode(doc, body)


def test_decoding_enforces_the_callers_limits() -> None:
    doc, body = _valid()
    with pytest.raises(WireFormatError, match=r"lists 2 arrays, the limit is 1"):
        _decode(doc, body, ModelLimits(max_total_bytes=10**6, max_arrays=1))
    with pytest.raises(
        WireFormatError, match=r"reaches 72 bytes at array 'b', over the limit of 71"
    ):
        _decode(doc, body, ModelLimits(max_total_bytes=71))
    with pytest.raises(
        WireFormatError, match=r"model header too large: \d+ bytes, the limit is 50"
    ):
        _decode(doc, body, ModelLimits(max_total_bytes=10**6, max_header_size=50))
    doc["meta"] = {"deep": [[[[1]]]]}
    with pytest.raises(WireFormatError, match=r"meta\['deep'\]\[0\]\[0\] is nested more than 3"):
        _decode(doc, body, ModelLimits(max_total_bytes=10**6, max_meta_depth=3))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"FLM", r"truncated model header: 3 bytes, the prefix alone is 8"),
        (b"PK\x03\x04" + bytes(60), r"bad model header magic b'PK\\x03\\x04', expected b'FLM1'"),
        (
            b"FLM1" + struct.pack("!I", 100) + b"{}",
            r"model header truncated: its prefix announces 108 bytes, got 10",
        ),
        (b"FLM1" + struct.pack("!I", 2) + b"{}  ", r"model header followed by 2 extra bytes"),
        (pack_header_json(b"\x80\x04\x95"), r"undecodable model header: not UTF-8"),
        (pack_header_json(b'{"a": 1'), r"undecodable model header: Expecting"),
        (pack_header_json(b"[1, 2]"), r"model header is a JSON list, not an object"),
        (pack_header_json(b'{"metrics": NaN}'), r"undecodable model header: NaN is not JSON"),
        (pack_header_json(b'{"a": 1, "a": 2}'), r"undecodable model header: duplicate key 'a'"),
        (pack_header_json(b"[" * 100_000), r"undecodable model header: nested too deeply"),
        (pack_header_json(b"1" * 5000), r"undecodable model header: .*digits"),
    ],
)
def test_decoding_rejects_a_broken_header(header: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        decode_model(header, b"")


@pytest.mark.parametrize(
    ("cut", "word"), [(-1, "truncated: 71 bytes"), (None, "too long: 73 bytes")]
)
def test_decoding_rejects_a_body_of_the_wrong_length(cut: int | None, word: str) -> None:
    doc, body = _valid()
    body = body[:cut] if cut else body + b"\x00"
    with pytest.raises(WireFormatError, match=rf"model body {word}, the header describes 72"):
        _decode(doc, body)


@given(st.binary(max_size=300))
@QUICK
def test_garbage_never_escapes_as_another_error(data: bytes) -> None:
    for header in (data, b"FLM1" + struct.pack("!I", len(data)) + data):
        with pytest.raises(WireFormatError):
            decode_model(header, b"")

"""The header of an FLModel on the wire: layout, limits and validation.

A model is sent as a header followed by a body of raw array bytes. The
header is self-delimiting::

    offset  size      field
    0       4         magic b"FLM1"
    4       4         json_size (uint32, big-endian)
    8       json_size UTF-8 JSON, padded with spaces so the header's total
                      length is a multiple of 64

and the JSON object has exactly these keys::

    {"params_type": "FULL" | "DIFF",
     "current_round": int >= 0 | null, "total_rounds": int >= 0 | null,
     "metrics": {str: finite number},
     "meta": {str: JSON value},
     "arrays": [{"name": str, "dtype": "float32", "shape": [2, 3],
                 "offset": 0, "nbytes": 24}, ...]}

Array bytes are little-endian and C-ordered. Each array starts at the first
multiple of `ALIGNMENT` at or after the end of the one before (the first at
0), so offsets follow from sizes alone: no gaps, no overlaps, nothing hidden.
The padding keeps every decoded array aligned for SIMD and BLAS; its bytes
are zero when sent and ignored when read. The body ends where the last
array ends.

`model_codec` builds on this module; most callers want that one.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from fl_core.model import ParamsType
from fl_core.serialization import WireFormatError
from fl_core.serialization.json_codec import JsonLimits, check_jsonable, loads_strict

__all__ = [
    "ALIGNMENT",
    "MAX_NAME_LENGTH",
    "MAX_NDIM",
    "MODEL_MAGIC",
    "MODEL_PREFIX_SIZE",
    "WIRE_DTYPES",
    "ArraySpec",
    "ModelHeader",
    "ModelLimits",
    "align",
    "check_metric",
    "check_name",
    "check_round",
    "model_header_size",
    "pack_header_json",
    "parse_model_header",
    "wire_dtype_name",
]

MODEL_MAGIC: Final = b"FLM1"
_PREFIX: Final = struct.Struct("!4sI")
MODEL_PREFIX_SIZE: Final = _PREFIX.size
ALIGNMENT: Final = 64
MAX_NAME_LENGTH: Final = 256
MAX_NDIM: Final = 32

WIRE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    name: np.dtype(code)
    for name, code in [
        ("bool", "|b1"),
        ("int8", "|i1"),
        ("int16", "<i2"),
        ("int32", "<i4"),
        ("int64", "<i8"),
        ("uint8", "|u1"),
        ("uint16", "<u2"),
        ("uint32", "<u4"),
        ("uint64", "<u8"),
        ("float16", "<f2"),
        ("float32", "<f4"),
        ("float64", "<f8"),
        ("complex64", "<c8"),
        ("complex128", "<c16"),
    ]
}
"""The only dtypes a model may carry, by their wire name; all little-endian."""

_NAME_OF: Final = {dtype: name for name, dtype in WIRE_DTYPES.items()}
_ALLOWED: Final = ", ".join(WIRE_DTYPES)
_HEADER_KEYS: Final = frozenset(
    {"params_type", "current_round", "total_rounds", "metrics", "meta", "arrays"}
)
_ARRAY_KEYS: Final = frozenset({"name", "dtype", "shape", "offset", "nbytes"})


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a receiver accepts. `max_total_bytes` bounds the body (all arrays
    and padding) and is the caller's choice; the rest have safe defaults."""

    max_total_bytes: int
    max_arrays: int = 65_536
    max_header_size: int = 16 * 1024 * 1024
    max_meta_depth: int = 32
    max_meta_items: int = 100_000

    def json_limits(self) -> JsonLimits:
        """The bounds applied to `meta`."""
        return JsonLimits(max_depth=self.max_meta_depth, max_items=self.max_meta_items)


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One array's place in the body."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def end(self) -> int:
        """The body offset just past this array's last byte."""
        return self.offset + self.nbytes


@dataclass(frozen=True, slots=True)
class ModelHeader:
    """A parsed, validated model header: everything but the array bytes."""

    params_type: ParamsType
    metrics: dict[str, float]
    meta: dict[str, Any]
    current_round: int | None
    total_rounds: int | None
    arrays: tuple[ArraySpec, ...]
    body_size: int


def align(offset: int) -> int:
    """The first multiple of `ALIGNMENT` at or after `offset`."""
    return -(-offset // ALIGNMENT) * ALIGNMENT


def wire_dtype_name(name: str, dtype: np.dtype[Any]) -> str:
    """The wire name of an array's dtype; `WireFormatError` if it may not travel."""
    where = f"array {name!r} has dtype {dtype}"
    if dtype.kind == "O":
        raise WireFormatError(
            f"{where}: object arrays would need pickle, which is never used on the wire; "
            f"allowed dtypes: {_ALLOWED}"
        )
    if dtype.fields is not None or dtype.kind == "V":
        raise WireFormatError(
            f"{where}: structured and void dtypes are not allowed; send each field as its "
            f"own array (allowed dtypes: {_ALLOWED})"
        )
    if dtype.kind in "US":
        raise WireFormatError(
            f"{where}: string arrays are not allowed; put text in meta (allowed: {_ALLOWED})"
        )
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
    if big:
        raise WireFormatError(
            f"{where}, which is big-endian; the wire is little-endian: convert with "
            f"a.astype(a.dtype.newbyteorder('<'))"
        )
    wire = _NAME_OF.get(dtype)
    if wire is None:
        raise WireFormatError(f"{where}, which is not allowed; allowed dtypes: {_ALLOWED}")
    return wire


def check_name(name: object, where: str) -> str:
    """Return `name` if it is a non-empty str of at most `MAX_NAME_LENGTH` chars."""
    if not isinstance(name, str):
        raise WireFormatError(f"{where} has a name of type {type(name).__name__}, not str")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise WireFormatError(
            f"{where} has a name of {len(name)} characters; it must have 1 to {MAX_NAME_LENGTH}"
        )
    return name


def check_round(key: str, value: object) -> int | None:
    """Return a round number (int >= 0) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireFormatError(f"{key} must be a non-negative int or None, not {value!r}")
    return value


def check_metric(key: object, value: object) -> tuple[str, float]:
    """Return a metric as (str, finite float); numpy reals are accepted and converted."""
    if not isinstance(key, str):
        raise WireFormatError(f"metric key {key!r} is {type(key).__name__}, not str")
    real = int | float | np.integer | np.floating
    if isinstance(value, bool | np.bool_) or not isinstance(value, real):
        raise WireFormatError(f"metric {key!r} is {type(value).__name__}, not a real number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise WireFormatError(f"metric {key!r} is {value!r}; metrics must be finite numbers")
    return key, number


def model_header_size(prefix: bytes | bytearray | memoryview, limits: ModelLimits) -> int:
    """The total header size announced by its first `MODEL_PREFIX_SIZE` bytes.

    A stream receiver reads this many bytes before building a `ModelReceiver`.
    """
    got = memoryview(prefix).nbytes
    if got < MODEL_PREFIX_SIZE:
        raise WireFormatError(
            f"truncated model header: {got} bytes, the prefix alone is {MODEL_PREFIX_SIZE}"
        )
    magic, json_size = _PREFIX.unpack_from(prefix)
    if magic != MODEL_MAGIC:
        raise WireFormatError(f"bad model header magic {magic!r}, expected {MODEL_MAGIC!r}")
    if json_size > limits.max_header_size:
        raise WireFormatError(
            f"model header too large: {json_size} bytes, the limit is {limits.max_header_size}"
        )
    return MODEL_PREFIX_SIZE + int(json_size)


def pack_header_json(payload: bytes) -> bytes:
    """Prefix and pad a JSON document into a complete model header."""
    padded = align(MODEL_PREFIX_SIZE + len(payload)) - MODEL_PREFIX_SIZE
    return _PREFIX.pack(MODEL_MAGIC, padded) + payload.ljust(padded, b" ")


def _int_field(spec: dict[str, Any], key: str, where: str) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireFormatError(f"{where}: {key} must be a non-negative int, not {value!r}")
    return value


def _parse_array(
    entry: object, index: int, expected_offset: int, prev: ArraySpec | None
) -> ArraySpec:
    where = f"array #{index}"
    if not isinstance(entry, dict):
        raise WireFormatError(f"{where} is {type(entry).__name__}, not an object")
    keys = set(entry)
    if keys != _ARRAY_KEYS:
        raise WireFormatError(f"{where} has keys {sorted(keys)}, expected {sorted(_ARRAY_KEYS)}")
    name = check_name(entry["name"], where)
    where = f"array {name!r}"
    dtype = WIRE_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise WireFormatError(
            f"{where} has dtype {entry['dtype']!r}, which is not allowed; allowed: {_ALLOWED}"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireFormatError(f"{where}: shape must be a list of at most {MAX_NDIM} ints")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise WireFormatError(f"{where}: shape {shape} has {dim!r}, not a non-negative int")
    offset = _int_field(entry, "offset", where)
    nbytes = _int_field(entry, "nbytes", where)
    expected_nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != expected_nbytes:
        raise WireFormatError(
            f"{where}: nbytes is {nbytes}, but shape {shape} of {entry['dtype']} "
            f"needs {expected_nbytes}"
        )
    if prev is not None and offset < prev.end and offset + nbytes > prev.offset:
        raise WireFormatError(
            f"{where} at bytes [{offset}, {offset + nbytes}) overlaps array {prev.name!r} "
            f"at [{prev.offset}, {prev.end})"
        )
    if offset != expected_offset:
        raise WireFormatError(
            f"{where} starts at byte {offset}, expected {expected_offset}: arrays follow "
            f"each other in order, each at the next multiple of {ALIGNMENT}"
        )
    return ArraySpec(name, dtype, tuple(shape), offset, nbytes)


def parse_model_header(header: bytes | bytearray | memoryview, limits: ModelLimits) -> ModelHeader:
    """Parse and validate a complete model header (prefix, JSON and padding).

    Raises `WireFormatError` naming the first rule broken: bad magic, a
    header too large or truncated, undecodable JSON, missing or unknown keys,
    a bad params_type, round, metric or meta value, a disallowed dtype, a
    shape that does not match nbytes, overlapping or misplaced offsets, too
    many arrays, or a body over `limits.max_total_bytes`.
    """
    total = model_header_size(header, limits)
    got = memoryview(header).nbytes
    if got != total:
        problem = "truncated" if got < total else f"followed by {got - total} extra bytes"
        raise WireFormatError(
            f"model header {problem}: its prefix announces {total} bytes, got {got}"
        )
    doc = loads_strict(memoryview(header)[MODEL_PREFIX_SIZE:], where="model header")
    if not isinstance(doc, dict):
        raise WireFormatError(f"model header is a JSON {type(doc).__name__}, not an object")
    if set(doc) != _HEADER_KEYS:
        missing, unknown = _HEADER_KEYS - set(doc), set(doc) - _HEADER_KEYS
        raise WireFormatError(
            f"model header keys are wrong: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    try:
        params_type = ParamsType(doc["params_type"])
    except ValueError:
        raise WireFormatError(
            f"params_type is {doc['params_type']!r}, not one of {[t.value for t in ParamsType]}"
        ) from None
    metrics_doc = doc["metrics"]
    if not isinstance(metrics_doc, dict):
        raise WireFormatError(f"metrics is a JSON {type(metrics_doc).__name__}, not an object")
    metrics = dict(check_metric(k, v) for k, v in metrics_doc.items())
    meta = doc["meta"]
    if not isinstance(meta, dict):
        raise WireFormatError(f"meta is a JSON {type(meta).__name__}, not an object")
    check_jsonable(meta, where="meta", limits=limits.json_limits())
    entries = doc["arrays"]
    if not isinstance(entries, list):
        raise WireFormatError(f"arrays is a JSON {type(entries).__name__}, not a list")
    if len(entries) > limits.max_arrays:
        raise WireFormatError(
            f"model header lists {len(entries)} arrays, the limit is {limits.max_arrays}"
        )
    specs: list[ArraySpec] = []
    names: set[str] = set()
    end = 0
    for index, entry in enumerate(entries):
        spec = _parse_array(entry, index, align(end), specs[-1] if specs else None)
        if spec.name in names:
            raise WireFormatError(f"array name {spec.name!r} appears more than once")
        names.add(spec.name)
        end = spec.end
        if end > limits.max_total_bytes:
            raise WireFormatError(
                f"model body reaches {end} bytes at array {spec.name!r}, over the limit of "
                f"{limits.max_total_bytes}"
            )
        specs.append(spec)
    return ModelHeader(
        params_type=params_type,
        metrics=metrics,
        meta=meta,
        current_round=check_round("current_round", doc["current_round"]),
        total_rounds=check_round("total_rounds", doc["total_rounds"]),
        arrays=tuple(specs),
        body_size=end,
    )

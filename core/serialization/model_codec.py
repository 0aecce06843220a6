"""An FLModel on the wire: a small JSON header plus raw array buffers.

Never pickle: the header is strict JSON (layout in `model_header`), array
bytes are exactly the arrays' memory, and only the dtypes in `WIRE_DTYPES`
travel. Three ways to use it:

- `encode_model(model)` -> `(header, buffers)`: the buffers are memoryviews
  of the arrays themselves (plus tiny zero paddings), for a gather write such
  as `socket.sendmsg([head, header, *buffers])`. No array byte is copied,
  except that a non-C-contiguous array is made contiguous first (one copy).
- `decode_model(header, body)`: arrays are `np.frombuffer` views into
  `body`; nothing is copied, the arrays keep `body` alive, and they are
  read-only if `body` is (`bytes`) and writable if it is (`bytearray`).
- `ModelReceiver(header, limits)`: for a body that arrives in chunks split
  anywhere; bytes go straight into preallocated arrays and each array is
  handed out the moment it is complete, so an aggregator can fold it while
  the rest still travels.

When header and body travel as one payload (header first), `split_model_payload`
separates them without copying.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from fl_core.model import FLModel, ParamsType
from fl_core.serialization import WireFormatError
from fl_core.serialization.json_codec import JsonLimits, check_jsonable, encode_json
from fl_core.serialization.model_header import (
    ALIGNMENT,
    MAX_NDIM,
    ArraySpec,
    ModelHeader,
    ModelLimits,
    align,
    check_metric,
    check_name,
    check_round,
    model_header_size,
    pack_header_json,
    parse_model_header,
    wire_dtype_name,
)

__all__ = [
    "Allocator",
    "ModelLimits",
    "ModelReceiver",
    "decode_model",
    "encode_model",
    "split_model_payload",
]

Buffer = bytes | bytearray | memoryview
"""Byte containers accepted as header, body or chunk (memoryviews of any format)."""
Allocator = Callable[[str, tuple[int, ...], np.dtype[Any]], np.ndarray]
"""`allocate(name, shape, dtype)` returns a writable C-contiguous array to receive into."""

_UNBOUNDED: Final = ModelLimits(max_total_bytes=sys.maxsize)
_PADDING: Final = memoryview(bytes(ALIGNMENT))
_RELEASED: Final = np.empty(0, dtype=np.uint8)


def _byte_view(array: np.ndarray) -> memoryview:
    # reshape(-1) of a C-contiguous array is a view, so is .view(uint8):
    # the memoryview aliases the array's own memory.
    return array.reshape(-1).view(np.uint8).data


def encode_model(
    model: FLModel, limits: ModelLimits | None = None
) -> tuple[bytes, list[memoryview]]:
    """Encode `model` as `(header, buffers)`; the body is the buffers joined.

    Buffers alias the model's arrays: do not modify them until sent. Raises
    `WireFormatError` for anything a receiver would reject (the same checks
    as `decode_model`), so mistakes surface at the sender. `limits` defaults
    to no bound on total size.
    """
    limits = limits or _UNBOUNDED
    try:
        params_type = ParamsType(model.params_type)
    except ValueError:
        raise WireFormatError(f"params_type {model.params_type!r} is not FULL or DIFF") from None
    if not isinstance(model.metrics, dict):
        raise WireFormatError(f"metrics is a {type(model.metrics).__name__}, not a dict")
    metrics = dict(check_metric(k, v) for k, v in model.metrics.items())
    if not isinstance(model.meta, dict):
        raise WireFormatError(f"meta is a {type(model.meta).__name__}, not a dict")
    check_jsonable(model.meta, where="meta", limits=limits.json_limits())
    if len(model.params) > limits.max_arrays:
        raise WireFormatError(
            f"model has {len(model.params)} arrays, the limit is {limits.max_arrays}"
        )
    entries: list[dict[str, Any]] = []
    buffers: list[memoryview] = []
    end = 0
    for name, array in model.params.items():
        check_name(name, "a param")
        if not isinstance(array, np.ndarray) or isinstance(array, np.ma.MaskedArray):
            raise WireFormatError(
                f"param {name!r} is a {type(array).__name__}, not a plain numpy array"
            )
        dtype_name = wire_dtype_name(name, array.dtype)
        if array.ndim > MAX_NDIM:
            raise WireFormatError(f"array {name!r} has {array.ndim} dimensions, max {MAX_NDIM}")
        shape = [int(d) for d in array.shape]
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)  # the one copy: the wire order is C order
        offset = align(end)
        if offset > end:
            buffers.append(_PADDING[: offset - end])
        if array.nbytes:
            buffers.append(_byte_view(array))
        end = offset + int(array.nbytes)
        if end > limits.max_total_bytes:
            raise WireFormatError(
                f"model body reaches {end} bytes at array {name!r}, over the limit of "
                f"{limits.max_total_bytes}"
            )
        entries.append(
            {
                "name": name,
                "dtype": dtype_name,
                "shape": shape,
                "offset": offset,
                "nbytes": int(array.nbytes),
            }
        )
    doc = {
        "params_type": params_type.value,
        "current_round": check_round("current_round", model.current_round),
        "total_rounds": check_round("total_rounds", model.total_rounds),
        "metrics": metrics,
        "meta": model.meta,
        "arrays": entries,
    }
    # meta was bounded above; the array list is bounded by max_arrays, not by
    # the meta item count, and meta sits one level down in the document.
    doc_limits = JsonLimits(max_depth=limits.max_meta_depth + 1, max_items=sys.maxsize)
    header = pack_header_json(encode_json(doc, where="model header", limits=doc_limits))
    if len(header) > limits.max_header_size:
        raise WireFormatError(
            f"model header too large: {len(header)} bytes, the limit is {limits.max_header_size}"
        )
    return header, buffers


def _as_bytes(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _model(layout: ModelHeader, params: dict[str, np.ndarray]) -> FLModel:
    return FLModel(
        params=params,
        params_type=layout.params_type,
        metrics=dict(layout.metrics),
        meta=layout.meta,
        current_round=layout.current_round,
        total_rounds=layout.total_rounds,
    )


def decode_model(header: Buffer, body: Buffer, limits: ModelLimits | None = None) -> FLModel:
    """Decode a model whose whole body is in memory, without copying array data.

    Raises `WireFormatError` if the header breaks a rule or the body is not
    exactly as long as the header says. `limits` defaults to no bound on
    total size beyond the body's actual length.
    """
    layout = parse_model_header(header, limits or _UNBOUNDED)
    view = _as_bytes(body)
    if len(view) != layout.body_size:
        problem = "truncated" if len(view) < layout.body_size else "too long"
        raise WireFormatError(
            f"model body {problem}: {len(view)} bytes, the header describes {layout.body_size}"
        )
    params = {
        spec.name: np.frombuffer(
            view, dtype=spec.dtype, count=spec.nbytes // spec.dtype.itemsize, offset=spec.offset
        ).reshape(spec.shape)
        for spec in layout.arrays
    }
    return _model(layout, params)


def split_model_payload(payload: Buffer, limits: ModelLimits) -> tuple[memoryview, memoryview]:
    """Split `header + body` sent as one payload into `(header, body)` views."""
    view = _as_bytes(payload)
    size = model_header_size(view, limits)
    if len(view) < size:
        raise WireFormatError(
            f"truncated model payload: {len(view)} bytes, its header alone is {size}"
        )
    return view[:size], view[size:]


def _empty(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


class ModelReceiver:
    """Rebuild a model from body chunks that may split anywhere.

    Each array is allocated when its first byte arrives (`np.empty`, or
    `allocate` to reuse memory: fresh pages cost a page fault each on first
    touch), and every chunk is copied once, straight into its arrays. `feed` returns the arrays
    it completed, in header order; `finish` returns the model. Zero-byte
    arrays count as complete when the body reaches their offset, so a
    `feed(b"")` reports those at the start of an empty body.

    `layout` is the parsed header (`body_size`, metrics, meta, array specs),
    available before any body byte arrives. `prepare(view)`, if given, is
    called with each region just before `feed` writes into it (to map its
    pages in ahead of the copy). Not thread-safe: feed one stream from one
    thread. After a `WireFormatError` the receiver is dead and
    raises it again.
    """

    def __init__(
        self,
        header: Buffer,
        limits: ModelLimits,
        *,
        allocate: Allocator | None = None,
        prepare: Callable[[memoryview], None] | None = None,
    ) -> None:
        self.layout: ModelHeader = parse_model_header(header, limits)
        self._alloc = allocate or _empty
        self._prepare = prepare
        # Each array is allocated when its first byte arrives (zero-byte ones
        # when the body reaches them): a consumer that folds and drops arrays
        # one by one then holds one array's memory, not the model's, and
        # reused memory goes round from a dropped array to the next one.
        count = len(self.layout.arrays)
        self._arrays: list[np.ndarray | None] = [None] * count
        self._views: list[memoryview | None] = [None] * count
        self._pos = 0
        self._done = 0  # arrays [0, _done) are complete and have been reported
        self._released = 0  # arrays [0, _released) were dropped by `release`
        self._scratch = memoryview(bytearray(ALIGNMENT))
        self._last_buffer = 0
        self._error: WireFormatError | None = None

    @staticmethod
    def _check_allocated(spec: ArraySpec, array: object) -> None:
        ok = (
            isinstance(array, np.ndarray)
            and array.shape == spec.shape
            and array.dtype == spec.dtype
            and array.flags.c_contiguous
            and array.flags.writeable
        )
        if not ok:
            raise ValueError(
                f"allocate({spec.name!r}) must return a writable C-contiguous array of shape "
                f"{spec.shape} and dtype {spec.dtype}"
            )

    @property
    def received(self) -> int:
        """Body bytes received so far."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Body bytes still expected."""
        return self.layout.body_size - self._pos

    def _fail(self, problem: str) -> WireFormatError:
        self._error = WireFormatError(problem)
        return self._error

    def get_buffer(self) -> memoryview:
        """A writable view where the next body bytes go (as `BufferedProtocol`).

        Fill a prefix of it (e.g. `sock.recv_into(buf)`) and call
        `buffer_updated(n)`. It is a part of the next incomplete array, or a
        scratch area for padding; empty once the body is complete.
        """
        if self._error is not None:
            raise self._error
        specs = self.layout.arrays
        index = self._done
        # Skip arrays already full but not yet reported (only zero-byte ones).
        while index < len(specs) and specs[index].end <= self._pos:
            index += 1
        if index == len(specs):
            buffer = self._scratch[:0]
        elif self._pos < specs[index].offset:
            buffer = self._scratch[: specs[index].offset - self._pos]
        else:
            buffer = self._view(index)[self._pos - specs[index].offset :]
        self._last_buffer = len(buffer)
        return buffer

    def buffer_updated(self, nbytes: int) -> list[tuple[str, np.ndarray]]:
        """Record `nbytes` written into the last `get_buffer()` view.

        Returns the arrays this completed, as `(name, array)` in header order.
        """
        if self._error is not None:
            raise self._error
        if not 0 <= nbytes <= self._last_buffer:
            raise ValueError(f"buffer_updated({nbytes}): the buffer had {self._last_buffer} bytes")
        self._last_buffer -= nbytes
        self._pos += nbytes
        return self._completed()

    def _completed(self) -> list[tuple[str, np.ndarray]]:
        specs = self.layout.arrays
        start = self._done
        while self._done < len(specs) and specs[self._done].end <= self._pos:
            self._done += 1
        return [(specs[i].name, self._array(i)) for i in range(start, self._done)]

    def _array(self, index: int) -> np.ndarray:
        array = self._arrays[index]
        if array is None:
            spec = self.layout.arrays[index]
            array = self._alloc(spec.name, spec.shape, spec.dtype)
            self._check_allocated(spec, array)
            self._arrays[index] = array
        return array

    def _view(self, index: int) -> memoryview:
        view = self._views[index]
        if view is None:
            view = self._views[index] = _byte_view(self._array(index))
        return view

    def feed(self, chunk: Buffer) -> list[tuple[str, np.ndarray]]:
        """Copy `chunk` into the arrays; return those it completed, in order.

        Raises `WireFormatError` if the chunk goes past the end of the body.
        """
        if self._error is not None:
            raise self._error
        data = _as_bytes(chunk)
        if len(data) > self.remaining:
            raise self._fail(
                f"model body too long: {len(data) - self.remaining} bytes beyond the "
                f"{self.layout.body_size} the header describes"
            )
        completed = self._completed()
        while data:
            buffer = self.get_buffer()
            n = min(len(buffer), len(data))
            if self._prepare is not None and n:
                self._prepare(buffer[:n])
            buffer[:n] = data[:n]
            data = data[n:]
            completed += self.buffer_updated(n)
        return completed

    def release(self) -> None:
        """Forget the arrays already reported, so they are freed once their user drops them.

        For a consumer that folds each array as it arrives: memory then stays
        near the arrays in flight instead of the whole model. `finish` is
        unavailable afterwards.
        """
        for index in range(self._released, self._done):
            self._arrays[index] = _RELEASED
            self._views[index] = memoryview(b"")
        self._released = self._done

    def finish(self) -> FLModel:
        """The complete model; `WireFormatError` if body bytes are missing.

        Raises `RuntimeError` after `release`: the model is no longer whole.
        """
        if self._error is not None:
            raise self._error
        if self._released:
            raise RuntimeError("finish() after release(): the arrays were handed out and dropped")
        if self._pos < self.layout.body_size:
            missing = next(s.name for s in self.layout.arrays if s.end > self._pos)
            raise self._fail(
                f"model body truncated: received {self._pos} of {self.layout.body_size} bytes; "
                f"array {missing!r} is incomplete"
            )
        self._completed()
        return _model(
            self.layout, {s.name: self._array(i) for i, s in enumerate(self.layout.arrays)}
        )

"""Message payloads on bytes-only transports: what is sent and how it is rebuilt.

Over a wire transport a cell sends every payload as bytes, tagged with its
kind so the receiver picks the decoder; nothing a peer sends is unpickled.

- `None` travels as nothing (`NONE`),
- `bytes` / `bytearray` / a contiguous `memoryview` as is (`BYTES`),
- an `FLModel` as a model header plus its raw array buffers (`MODEL`,
  see `fl_core.serialization.model_codec`), without copying array bytes,
- anything else that strict JSON can carry (dict, list, str, number, bool)
  as UTF-8 JSON (`JSON`).

`encode_payload` gives the bytes as a list of parts (views of the caller's
memory); `PayloadAssembler` rebuilds the value from chunks that may split
anywhere, copying each byte once into its final place. A model's arrays are
handed out one by one as they complete, so a consumer can fold an array
while the rest still travels.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from fl_core.cell.receive_memory import POPULATE_MIN, ReceiveMemory
from fl_core.errors import CellError

if TYPE_CHECKING:
    import numpy as np

    from fl_core.serialization.model_codec import ModelReceiver
    from fl_core.serialization.model_header import ModelHeader

GiB: Final = 1024**3
MiB: Final = 1024**2


def _lazy_buffer(kind: PayloadKind, size: int) -> bytearray | memoryview:
    """A buffer for `size` bytes that takes memory only as it is written.

    `bytearray(size)` would zero every byte at once: a peer announcing a
    large payload and sending one byte would cost the whole size. An
    anonymous mapping gets its zero pages from the kernel on first write.
    """
    import mmap

    if size < POPULATE_MIN:
        return bytearray(size)
    try:
        return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    except OSError as exc:
        raise CellError(f"cannot reserve {size} bytes for a {kind} payload: {exc}") from exc


class PayloadKind(enum.StrEnum):
    """What a payload's bytes hold; travels in the `Header.PAYLOAD` header."""

    NONE = "none"
    BYTES = "bytes"
    MODEL = "model"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """What a receiving cell accepts from a peer.

    `max_size` bounds bytes and model payloads (a model has no 2 GiB limit,
    but a peer must not make a cell reserve unbounded memory);
    `max_json_size` bounds JSON documents, which are parsed whole.
    """

    max_size: int = 64 * GiB
    max_json_size: int = 64 * MiB
    max_model_arrays: int = 65_536


@dataclass(slots=True)
class EncodedPayload:
    """A payload as bytes: its kind and the parts that, joined, are its bytes."""

    kind: PayloadKind
    parts: list[memoryview]
    size: int

    def joined(self) -> bytes | memoryview:
        """The parts as one buffer: the only part itself, or one copy of all."""
        if len(self.parts) == 1:
            return self.parts[0]
        return b"".join(self.parts)

    def chunks(self, chunk_size: int) -> Iterator[bytes | memoryview]:
        """Chunk bodies of at most `chunk_size` bytes, each one contiguous buffer.

        A chunk that lies inside one part is a view of it (no copy); only
        runs of small parts (a model header, biases, padding) are copied
        together, so big arrays go out without being copied.
        """
        pending: list[memoryview] = []
        pending_size = 0
        for part in self.parts:
            while part.nbytes:
                if pending_size == 0 and part.nbytes >= chunk_size:
                    yield part[:chunk_size]
                    part = part[chunk_size:]
                    continue
                take = part[: chunk_size - pending_size]
                pending.append(take)
                pending_size += take.nbytes
                part = part[take.nbytes :]
                if pending_size == chunk_size:
                    yield b"".join(pending)
                    pending, pending_size = [], 0
        if pending_size or self.size == 0:
            yield b"".join(pending)


class PayloadRefusedError(CellError):
    """A payload this cell cannot send (not bytes, a model, or JSON data)."""


def _bytes_view(payload: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(payload)
    if not view.c_contiguous:
        raise CellError("a bytes payload must be contiguous memory")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def kind_of(payload: object) -> PayloadKind:
    """The kind a payload travels as (JSON for anything not None, bytes or a model)."""
    from fl_core.model import FLModel

    if payload is None:
        return PayloadKind.NONE
    if isinstance(payload, bytes | bytearray | memoryview):
        return PayloadKind.BYTES
    if isinstance(payload, FLModel):
        return PayloadKind.MODEL
    return PayloadKind.JSON


def encode_payload(payload: object, *, where: str) -> EncodedPayload:
    """`payload` as kind + parts; `CellError` (naming `where`) if it cannot travel."""
    from fl_core.model import FLModel
    from fl_core.serialization import WireFormatError

    kind = kind_of(payload)
    if kind is PayloadKind.NONE:
        return EncodedPayload(PayloadKind.NONE, [], 0)
    if isinstance(payload, bytes | bytearray | memoryview):
        view = _bytes_view(payload)
        return EncodedPayload(PayloadKind.BYTES, [view], view.nbytes)
    try:
        if isinstance(payload, FLModel):
            from fl_core.serialization.model_codec import encode_model

            header, buffers = encode_model(payload)
            parts = [memoryview(header), *buffers]
            return EncodedPayload(PayloadKind.MODEL, parts, sum(p.nbytes for p in parts))
        from fl_core.serialization.json_codec import encode_json

        data = encode_json(payload, where=f"the payload of {where}")
        return EncodedPayload(PayloadKind.JSON, [memoryview(data)], len(data))
    except WireFormatError as exc:
        raise PayloadRefusedError(
            f"the payload of {where} ({type(payload).__name__}) cannot be sent: {exc.problem}; "
            f"send an FLModel, bytes, or plain JSON data"
        ) from exc


def parse_kind(value: str) -> PayloadKind:
    """The kind named in a header; `CellError` for a name this cell does not know."""
    try:
        return PayloadKind(value)
    except ValueError:
        raise CellError(f"unknown payload kind {value!r}") from None


def check_size(kind: PayloadKind, size: int, limits: PayloadLimits) -> None:
    """Refuse a payload size before any memory is reserved for it."""
    if kind is PayloadKind.NONE and size:
        raise CellError(f"a NONE payload with {size} bytes")
    bound = limits.max_json_size if kind is PayloadKind.JSON else limits.max_size
    if size < 0 or size > bound:
        raise CellError(f"{kind} payload of {size} bytes is over this cell's limit of {bound}")


class PayloadAssembler:
    """Rebuilds one payload from its chunks, in order.

    `feed` copies a chunk into place and returns the model arrays it
    completed (always empty for other kinds). With `keep_arrays=False` a
    model's arrays are forgotten once handed out, so memory stays near one
    array instead of one model; `result` is then unavailable for models.
    Not thread-safe: one feeder at a time.
    """

    def __init__(
        self,
        kind: PayloadKind,
        size: int,
        limits: PayloadLimits,
        *,
        keep_arrays: bool = True,
        memory: ReceiveMemory | None = None,
    ) -> None:
        check_size(kind, size, limits)
        self.kind = kind
        self.size = size
        self.limits = limits
        self.keep_arrays = keep_arrays
        self.received = 0
        self._buffer: bytearray | memoryview | None = None
        self._head = bytearray()  # a model's header, until it is complete
        self._head_size = 0
        self._model: ModelReceiver | None = None
        self._memory = memory if memory is not None else ReceiveMemory()
        if kind in (PayloadKind.BYTES, PayloadKind.JSON):
            self._buffer = _lazy_buffer(kind, size)

    @property
    def complete(self) -> bool:
        """Whether every byte has arrived."""
        return self.received == self.size

    @property
    def layout(self) -> ModelHeader | None:
        """A model's parsed header, once it has arrived."""
        return self._model.layout if self._model is not None else None

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[tuple[str, np.ndarray]]:
        """Take the next chunk; `CellError` if it breaks the payload's rules."""
        from fl_core.serialization import WireFormatError

        data = _bytes_view(chunk)
        if data.nbytes > self.size - self.received:
            raise CellError(
                f"{self.kind} payload longer than announced: "
                f"{self.received + data.nbytes} bytes, announced {self.size}"
            )
        start = self.received
        self.received += data.nbytes
        if self._buffer is not None:
            self._buffer[start : self.received] = data
            return []
        if self.kind is PayloadKind.NONE:
            return []
        try:
            return self._feed_model(data)
        except WireFormatError as exc:
            raise CellError(f"bad model payload: {exc.problem}") from exc

    def _feed_model(self, data: memoryview) -> list[tuple[str, np.ndarray]]:
        from fl_core.serialization.model_codec import ModelReceiver
        from fl_core.serialization.model_header import (
            MODEL_PREFIX_SIZE,
            ModelLimits,
            model_header_size,
        )

        if self._model is None:
            limits = ModelLimits(max_total_bytes=self.size, max_arrays=self.limits.max_model_arrays)
            need = self._head_size or MODEL_PREFIX_SIZE
            take = min(need - len(self._head), data.nbytes)
            self._head += data[:take]
            data = data[take:]
            if not self._head_size and len(self._head) == MODEL_PREFIX_SIZE:
                self._head_size = model_header_size(self._head, limits)
                take = min(self._head_size - len(self._head), data.nbytes)
                self._head += data[:take]
                data = data[take:]
            if not self._head_size or len(self._head) < self._head_size:
                if self.complete:
                    raise CellError(f"truncated model payload: {self.size} bytes in all")
                return []
            self._model = ModelReceiver(
                self._head, limits, allocate=self._memory.allocate, prepare=self._memory.prepare
            )
            self._head = bytearray()
            if self._model.layout.body_size != self.size - self._head_size:
                raise CellError(
                    f"model payload of {self.size} bytes, but its header describes "
                    f"{self._head_size} + {self._model.layout.body_size}"
                )
        arrays = self._model.feed(data)
        if not self.keep_arrays and arrays:
            self._model.release()
        return arrays

    def in_place_room(self) -> int:
        """Bytes the next `reserve` can take in place (what is left of the current array).

        0 while the model's header is still coming, or for a payload that is not a model.
        """
        if self._model is None or self.received >= self.size:
            return 0
        return self._model.get_buffer().nbytes

    def reserve(self, size: int) -> memoryview | None:
        """Where the next `size` bytes can be received in place, if they fit one array.

        Only for a model past its header; receive into the view, then call
        `commit(size)` instead of `feed`.
        """
        if self._model is None or not 0 < size <= self.size - self.received:
            return None
        buffer = self._model.get_buffer()
        if buffer.nbytes < size:
            return None
        self._memory.prepare(buffer[:size])
        return buffer[:size]

    def commit(self, size: int) -> list[tuple[str, np.ndarray]]:
        """Record `size` bytes received into the last `reserve`d view."""
        assert self._model is not None
        from fl_core.serialization import WireFormatError

        try:
            arrays = self._model.buffer_updated(size)
        except (WireFormatError, ValueError) as exc:
            raise CellError(f"bad model payload: {exc}") from exc
        self.received += size
        if not self.keep_arrays and arrays:
            self._model.release()
        return arrays

    def result(self) -> object:
        """The whole payload; `CellError` if it is incomplete or undecodable."""
        from fl_core.serialization import WireFormatError
        from fl_core.serialization.json_codec import decode_json

        if not self.complete:
            raise CellError(
                f"{self.kind} payload incomplete: {self.received} of {self.size} bytes arrived"
            )
        if self.kind is PayloadKind.NONE:
            return None
        if self.kind is PayloadKind.BYTES:
            return self._buffer
        try:
            if self.kind is PayloadKind.JSON:
                assert self._buffer is not None
                return decode_json(
                    self._buffer, max_size=self.limits.max_json_size, where="JSON payload"
                )
            if self._model is None:
                self.feed(b"")  # an empty model payload fails here with its reason
            assert self._model is not None
            if not self.keep_arrays:
                raise CellError("the model's arrays were handed out one by one and not kept")
            return self._model.finish()
        except WireFormatError as exc:
            raise CellError(f"bad {self.kind} payload: {exc.problem}") from exc


def decode_payload(
    kind: PayloadKind, body: bytes | bytearray | memoryview | None, limits: PayloadLimits
) -> object:
    """A payload that arrived whole in one frame body, decoded without copying arrays."""
    from fl_core.serialization import WireFormatError

    data = _bytes_view(body if body is not None else b"")
    check_size(kind, data.nbytes, limits)
    if kind is PayloadKind.NONE:
        return None
    if kind is PayloadKind.BYTES:
        return body
    try:
        if kind is PayloadKind.JSON:
            from fl_core.serialization.json_codec import decode_json

            return decode_json(data, max_size=limits.max_json_size, where="JSON payload")
        from fl_core.serialization.model_codec import decode_model, split_model_payload
        from fl_core.serialization.model_header import ModelLimits

        model_limits = ModelLimits(max_total_bytes=data.nbytes, max_arrays=limits.max_model_arrays)
        header, model_body = split_model_payload(data, model_limits)
        return decode_model(header, model_body, model_limits)
    except WireFormatError as exc:
        raise CellError(f"bad {kind} payload: {exc.problem}") from exc

"""A payload that is still arriving, handed to a streaming handler.

A handler registered with `streaming=True` is called as soon as the first
chunk of a large payload arrives, with an `IncomingPayload` as the message's
payload. It consumes the payload while the rest travels: `arrays()` yields a
model's arrays one by one as each completes (and then forgets them, so the
cell holds only the bytes in flight), `result()` returns the whole value.
Chunks are acknowledged to the sender only as the handler consumes them, so
a slow consumer slows the sender instead of filling memory.

Over the in-process transport, or for a payload that fit in one frame, the
same object wraps the value that is already there.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from fl_core.cell.payload import PayloadAssembler, PayloadKind, PayloadLimits
from fl_core.errors import CellError

if TYPE_CHECKING:
    import numpy as np

    from fl_core.serialization.model_header import ModelHeader

_NOT_YET = object()


class IncomingPayload:
    """One payload for a streaming handler; consume it from one thread."""

    def __init__(
        self,
        kind: PayloadKind,
        size: int,
        limits: PayloadLimits,
        *,
        source: str,
        idle_timeout: float,
        on_consumed: Callable[[int], None] | None = None,
        value: object = _NOT_YET,
    ) -> None:
        self.kind = kind
        """What the payload is (`MODEL` for an FLModel, ...)."""
        self.size = size
        """Its size in bytes on the wire (0 when it was handed over as an object)."""
        self.source = source
        self._limits = limits
        self._idle_timeout = idle_timeout
        self._on_consumed = on_consumed
        self._value = value
        self._cond = threading.Condition()
        self._chunks: deque[bytes | bytearray | memoryview] = deque()
        self._queued = 0
        self._arrived = 0
        self._consumed = 0
        self._error: CellError | None = None
        self._discarded = False
        self._assembler: PayloadAssembler | None = None
        self._early: deque[tuple[str, np.ndarray]] = deque()  # completed while reading the layout
        self._taken = False

    @classmethod
    def of(cls, value: object, kind: PayloadKind, *, source: str) -> IncomingPayload:
        """Wrap a payload that is already whole."""
        return cls(kind, 0, PayloadLimits(), source=source, idle_timeout=0.0, value=value)

    # --- the producer side (the cell) -------------------------------------------------

    def put(self, chunk: bytes | bytearray | memoryview) -> None:
        """Queue the next chunk; a discarded payload drops it and counts it consumed."""
        size = memoryview(chunk).nbytes
        with self._cond:
            if self._error is not None:
                return
            self._arrived += size
            if not self._discarded:
                self._chunks.append(chunk)
                self._queued += size
                self._cond.notify_all()
                return
            self._consumed += size
            consumed = self._consumed
        if self._on_consumed is not None:
            self._on_consumed(consumed)

    def fail(self, error: CellError) -> None:
        """The stream broke: the consumer's next wait raises `error`."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._chunks.clear()
            self._cond.notify_all()

    def discard(self) -> None:
        """The handler is done with it: drop what is queued and whatever still comes."""
        with self._cond:
            self._discarded = True
            dropped = sum(memoryview(c).nbytes for c in self._chunks)
            self._chunks.clear()
            self._consumed += dropped
            consumed = self._consumed
        if dropped and self._on_consumed is not None:
            self._on_consumed(consumed)

    @property
    def buffered(self) -> int:
        """Bytes that arrived and wait to be consumed (at most the sender's window)."""
        with self._cond:
            return sum(memoryview(c).nbytes for c in self._chunks)

    @property
    def unconsumed(self) -> int:
        """Bytes that arrived and are not consumed yet (queued, or held by the consumer)."""
        with self._cond:
            return self._arrived - self._consumed

    @property
    def failed(self) -> CellError | None:
        """The error that ended the stream, if any."""
        return self._error

    # --- the consumer side (the handler) ---------------------------------------------

    def _next_chunk(self, until: float | None = None) -> bytes | bytearray | memoryview:
        idle = time.monotonic() + self._idle_timeout
        with self._cond:
            while not self._chunks:
                if self._error is not None:
                    raise self._error
                now = time.monotonic()
                if until is not None and now >= until:
                    raise CellError(f"the payload from {self.source} did not arrive in time")
                if now >= idle:
                    raise CellError(
                        f"the payload from {self.source} stalled: no data for "
                        f"{self._idle_timeout:g} s"
                    )
                self._cond.wait(min(idle, until if until is not None else idle) - now)
            return self._chunks.popleft()

    def _consumed_chunk(self, chunk: bytes | bytearray | memoryview) -> None:
        with self._cond:
            self._consumed += memoryview(chunk).nbytes
            consumed = self._consumed
        if self._on_consumed is not None:
            self._on_consumed(consumed)

    def _assembler_for(self, keep_arrays: bool) -> PayloadAssembler:
        if self._taken:
            raise CellError("the payload was already consumed")
        if self._assembler is None:
            self._assembler = PayloadAssembler(
                self.kind, self.size, self._limits, keep_arrays=keep_arrays
            )
        return self._assembler

    def chunks(self) -> Iterator[memoryview]:
        """The raw payload bytes, chunk by chunk, as they arrive."""
        if self._value is not _NOT_YET:
            raise CellError("the payload arrived whole; use result()")
        if self._taken:
            raise CellError("the payload was already consumed")
        self._taken = True
        left = self.size
        while left:
            chunk = self._next_chunk()
            view = memoryview(chunk)
            left -= view.nbytes
            yield view
            self._consumed_chunk(chunk)

    def arrays(self, timeout: float | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """A model's arrays `(name, array)` in order, each as soon as it is complete.

        The cell keeps no reference to an array it handed out. Waits at most
        `timeout` seconds in all, counted from the first array asked for
        (None: as long as data keeps coming). Raises `CellError` if the
        payload is not a model, or the stream breaks, stalls or is late.
        """
        if self.kind is not PayloadKind.MODEL:
            raise CellError(f"the payload from {self.source} is {self.kind}, not a model")
        if self._value is not _NOT_YET:
            if self._taken:
                raise CellError("the payload was already consumed")
            self._taken = True
            from fl_core.model import FLModel

            assert isinstance(self._value, FLModel)
            yield from self._value.params.items()
            return
        until = None if timeout is None else time.monotonic() + timeout
        assembler = self._assembler_for(keep_arrays=False)
        self._taken = True
        while self._early:
            yield self._early.popleft()
        while not assembler.complete:
            chunk = self._next_chunk(until)
            completed = assembler.feed(chunk)
            self._consumed_chunk(chunk)
            yield from completed
            del completed

    def layout(self) -> ModelHeader:
        """A model's header (names, shapes, dtypes, metrics, meta) before its arrays.

        Call it before `arrays()`; it consumes only the header's bytes.
        """
        if self.kind is not PayloadKind.MODEL:
            raise CellError(f"the payload from {self.source} is {self.kind}, not a model")
        if self._value is not _NOT_YET:
            from fl_core.model import FLModel
            from fl_core.serialization.model_codec import encode_model
            from fl_core.serialization.model_header import ModelLimits, parse_model_header

            assert isinstance(self._value, FLModel)
            header, _ = encode_model(self._value)
            return parse_model_header(header, ModelLimits(max_total_bytes=2**63))
        assembler = self._assembler_for(keep_arrays=False)
        while assembler.layout is None:
            # The header is small and comes first: this chunk holds it, or it
            # starts it; a chunk's arrays are kept until arrays() hands them out.
            chunk = self._next_chunk()
            self._early.extend(assembler.feed(chunk))
            self._consumed_chunk(chunk)
        layout = assembler.layout
        assert layout is not None
        return layout

    def result(self, timeout: float | None = None) -> object:
        """The whole payload (an FLModel, bytes, or JSON data).

        Waits at most `timeout` seconds in all (None: as long as data keeps
        coming); raises `CellError` if the stream breaks or stalls.
        """
        if self._value is not _NOT_YET:
            if self._taken:
                raise CellError("the payload was already consumed")
            self._taken = True
            value, self._value = self._value, None  # handed over: keep no reference
            return value
        until = None if timeout is None else time.monotonic() + timeout
        assembler = self._assembler_for(keep_arrays=True)
        self._taken = True
        while not assembler.complete:
            chunk = self._next_chunk(until)
            assembler.feed(chunk)
            self._consumed_chunk(chunk)
        return assembler.result()

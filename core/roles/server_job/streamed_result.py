"""A site's result as the workflow reads it while it is still arriving.

`StreamedResult` adapts the cell's `IncomingPayload` of a streamed model to
the workflow's `IncomingResult`: the header is parsed before any array, the
arrays are handed over one by one as they complete, and a stream that
breaks is reported as a `ResultBrokenError` saying how far it got.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fl_core.errors import CellError
from fl_core.spec.workflow import ArrayLayout, ResultBrokenError, ResultHeader

if TYPE_CHECKING:
    import numpy as np

    from fl_core.cell.incoming import IncomingPayload
    from fl_core.serialization.model_header import ModelHeader


def header_of(layout: ModelHeader) -> ResultHeader:
    """The workflow's view of a parsed model header."""
    return ResultHeader(
        params_type=str(layout.params_type),
        metrics=layout.metrics,
        meta=layout.meta,
        arrays=tuple(ArrayLayout(a.name, a.shape, a.dtype) for a in layout.arrays),
        current_round=layout.current_round,
        total_rounds=layout.total_rounds,
    )


class StreamedResult:
    """An `IncomingResult` over a model streaming in; read it before `deadline`.

    Arrays yielded are fresh receive memory nobody else holds (views of a
    private mapping for big ones), so `owns_arrays` is True.
    """

    def __init__(
        self, site: str, payload: IncomingPayload, layout: ModelHeader, deadline: float
    ) -> None:
        self._site = site
        self._payload = payload
        self._names = [a.name for a in layout.arrays]
        self._header = header_of(layout)
        self._deadline = deadline
        self._started = False
        self.delivered = 0
        """Arrays yielded so far."""
        self.broken: ResultBrokenError | None = None
        """Set once the stream broke off while the workflow read it."""

    @property
    def site(self) -> str:
        """The site that sent the result."""
        return self._site

    @property
    def header(self) -> ResultHeader:
        """params_type, metrics, meta and the arrays' layout."""
        return self._header

    @property
    def owns_arrays(self) -> bool:
        """True: every array comes from this result's own receive memory."""
        return True

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """The arrays as each completes; `ResultBrokenError` if the stream breaks."""
        if self._started:
            raise CellError(f"the result of {self._site} was already consumed")
        self._started = True
        remaining = max(0.0, self._deadline - time.monotonic())
        items = self._payload.arrays(remaining)
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except CellError as exc:
                total = len(self._names)
                incomplete = self._names[self.delivered] if self.delivered < total else None
                self.broken = ResultBrokenError(self._site, self.delivered, total, incomplete, exc)
                raise self.broken from exc
            self.delivered += 1
            yield item
            # Not kept past the consumer's turn: it may have been the last reference.
            del item

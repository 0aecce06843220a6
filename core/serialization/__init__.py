"""Safe wire encoding of cell frames and models.

Everything here treats its input as hostile: a peer's bytes are parsed with
explicit limits, never unpickled, and every violation is a `WireFormatError`
that says what was wrong.

- `fl_core.serialization.envelope`: the frame layout of stream transports
  (fixed prefix, protobuf `FrameHeader`, raw body) and the only module that
  touches protobuf classes.
- `fl_core.serialization.model_codec`: an `FLModel` as a small JSON header
  plus raw array buffers; zero-copy encode and decode, and an incremental
  `ModelReceiver` for chunked bodies.
- `fl_core.serialization.json_codec`: strict, bounded JSON for `meta` and
  JSON frame bodies.

The submodules are not imported here, so `import fl_core.serialization`
stays cheap and pulls in neither protobuf nor numpy.
"""

from __future__ import annotations

from fl_core.errors import CellError

__all__ = ["WireFormatError"]


class WireFormatError(CellError):
    """Bytes (or an object to be encoded) break the wire format.

    Raised for a bad magic, an oversized or truncated header, an undecodable
    header, a body over its limit, a disallowed dtype, a non-finite metric,
    and every other violation; the message says which rule was broken and
    where. `problem` holds the same text.
    """

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)

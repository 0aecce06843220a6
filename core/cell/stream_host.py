"""What a cell's streams need of the cell, and the control frames they send with it.

Sending, receiving and relaying streams (`streams`, `receiving`, `relay`)
see their cell only through a `StreamHost`: its name and threads, its links
(to send ACKs and ABORTs toward a cell), its table of requests in flight
(a stream that breaks fails the request it carries), and three calls back
into the cell's messaging: deliver a message that arrived, tell whether a
streaming handler wants it as it arrives, and answer a request with an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.stream_state import on_path
from fl_core.errors import CellError
from fl_core.spec.transport import Connection, Frame

if TYPE_CHECKING:
    from fl_core.cell.links import Links
    from fl_core.cell.pending import PendingRequests
    from fl_core.cell.resources import CellResources

__all__ = ["StreamHost"]

log = logging.getLogger("fl_core.cell")


@dataclass(frozen=True, slots=True)
class StreamHost:
    """The cell that owns some streams, as they see it."""

    fqcn: str
    resources: CellResources
    links: Links
    pending: PendingRequests
    deliver: Callable[[Message], None]
    """A message for this cell arrived: whole, or the start of one for a streaming handler."""
    wants_stream: Callable[[Message], bool]
    """Whether a streaming handler takes `message` while its payload still arrives."""
    answer: Callable[[Message, Status, str], None]
    """Answer a request with an error reply of this status and reason."""

    def control(self, target: str, headers: dict[str, str]) -> None:
        """Send an ACK or ABORT toward `target`; lost if there is no route any more."""
        headers[Header.DESTINATION] = target
        headers[Header.ORIGIN] = self.fqcn
        try:
            self.links.send_toward(target, Frame(headers, None))
        except CellError as exc:
            log.info("%s: stream control to %s lost: %s", self.fqcn, target, exc)

    def abort(
        self, target: str, stream_origin: str, sid: str, reason: str, *, lost: bool = False
    ) -> None:
        """Tell `target` a stream ended early; `lost` when a link on its path closed."""
        self.control(
            target,
            {
                Header.MSG_TYPE: MessageType.ABORT,
                Header.STREAM: sid,
                Header.STREAM_ORIGIN: stream_origin,
                Header.ERROR: reason,
                Header.STATUS: Status.UNREACHABLE if lost else Status.HANDLER_ERROR,
            },
        )

    def may_abort(self, conn: Connection, link: Connection, sender: str, peer: str) -> bool:
        """Whether an ABORT from `sender` over `conn` may end a stream with `peer` on `link`."""
        if conn is link and on_path(sender, self.fqcn, peer):
            return True
        log.warning(
            "%s: ignored an ABORT from %s for a stream with %s: not on its path",
            self.fqcn,
            sender,
            peer,
        )
        return False

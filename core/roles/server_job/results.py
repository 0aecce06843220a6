"""A site's result, taken on the workflow's thread: checked, handed over, answered.

`ResultTaker` is the server job's half of `Topic.SUBMIT_RESULT`: a result
comes whole (an `FLModel`) or streamed (an `IncomingPayload` read array by
array through `StreamedResult`). Whatever happens, the site hears back:
accepted, or refused with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fl_core.cell.cell import Cell
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Message
from fl_core.cell.payload import PayloadKind
from fl_core.errors import CellError
from fl_core.model import FLModel
from fl_core.roles.protocol.script_errors import ScriptError
from fl_core.roles.protocol.task import Outcome, TaskHeader
from fl_core.roles.server_job.streamed_result import StreamedResult
from fl_core.spec.workflow import (
    GatherReport,
    ResultHandler,
    StreamHandler,
    Task,
    WholeResult,
)


@dataclass(frozen=True, slots=True)
class SiteFailure:
    """Why a site failed a task: one line, and the traceback if the script raised."""

    round_number: int
    reason: str
    detail: str = ""


@dataclass
class RunRecord:
    """What a finished run leaves for the caller."""

    metrics: list[dict[str, object]] = field(default_factory=list)
    failures: dict[str, SiteFailure] = field(default_factory=dict)
    script_errors: list[ScriptError] = field(default_factory=list)


class ResultTaker:
    """Takes the sites' results for the workflow; failures go into `failures`."""

    def __init__(self, cell: Cell, failures: dict[str, SiteFailure]) -> None:
        self.cell = cell
        self.failures = failures

    def take(
        self,
        message: Message,
        site: str,
        task: Task,
        report: GatherReport,
        on_result: ResultHandler,
        on_stream: StreamHandler | None,
        deadline: float,
    ) -> None:
        """Hand `site`'s result for `task` to the workflow, note it in `report`, answer the site."""
        payload = message.payload
        if isinstance(payload, IncomingPayload):
            ok = message.get(TaskHeader.OUTCOME) == Outcome.OK
            if ok and payload.kind != PayloadKind.MODEL:
                report.failed[site] = f"sent a {payload.kind} payload, not a model"
                self.refuse(message, report.failed[site])
                return
            if ok and on_stream is not None and payload.size:
                # size 0: it came whole (in-process, or one frame); folded below.
                self._fold_stream(message, site, payload, report, on_stream, deadline)
                return
            try:
                payload = payload.result(max(0.0, deadline - time.monotonic()))
            except CellError as exc:
                report.failed[site] = f"its result did not arrive whole: {exc}"
                self.refuse(message, report.failed[site])
                return
        if message.get(TaskHeader.OUTCOME) != Outcome.OK:
            reason = message.get(TaskHeader.REASON) or "failed without a reason"
            detail = payload if isinstance(payload, str) else ""
            report.failed[site] = reason
            self.failures[site] = SiteFailure(task.round_number, reason, detail)
            self.cell.reply(message, None, **{TaskHeader.ACCEPTED: "yes"})
            return
        if not isinstance(payload, FLModel):
            report.failed[site] = f"sent a {type(payload).__name__}, not a model"
            self.refuse(message, report.failed[site])
            return
        if on_stream is not None:
            try:
                whole = WholeResult(site, payload)
            except ValueError as exc:
                report.failed[site] = str(exc)
                self.refuse(message, report.failed[site])
                return
            del payload  # the adapter holds the model now; see WholeResult on ownership
            try:
                on_stream(site, whole)
            finally:
                self.cell.reply(message, None, **{TaskHeader.ACCEPTED: "yes"})
            report.received.append(site)
            return
        try:
            on_result(site, payload)
        finally:
            # The site must hear back even if the workflow's fold raised.
            self.cell.reply(message, None, **{TaskHeader.ACCEPTED: "yes"})
        report.received.append(site)

    def _fold_stream(
        self,
        message: Message,
        site: str,
        payload: IncomingPayload,
        report: GatherReport,
        on_stream: StreamHandler,
        deadline: float,
    ) -> None:
        """Hand a streaming result to the workflow, then tell the site how it went."""
        try:
            layout = payload.layout()
        except CellError as exc:
            report.failed[site] = f"its result did not arrive whole: {exc}"
            self.refuse(message, report.failed[site])
            return
        result = StreamedResult(site, payload, layout, deadline)
        error: BaseException | None = None
        try:
            on_stream(site, result)
        except BaseException as exc:  # re-raised below, once the site has its answer
            error = exc
        broken = result.broken
        if broken is not None:
            report.failed[site] = broken.reason
            self.refuse(message, broken.reason)
        else:
            # Whatever the workflow left unread (it refused the result) is dropped.
            payload.discard()
            self.cell.reply(message, None, **{TaskHeader.ACCEPTED: "yes"})
            if error is None:
                report.received.append(site)
        if error is not None and error is not broken:
            raise error

    def refuse(self, message: Message, reason: str) -> None:
        """Tell the site its result was not taken, and why; drop what is still arriving."""
        if isinstance(message.payload, IncomingPayload):
            message.payload.discard()  # the rest of a refused result is dropped as it comes
        # A site whose stream broke may be gone: the cell drops a reply to a
        # requester that is no longer there, so this never raises for that.
        self.cell.reply(message, None, **{TaskHeader.ACCEPTED: "no", TaskHeader.REASON: reason})

"""The server job runner: serves tasks to client jobs and runs the workflow.

It implements `WorkflowContext`. Sites pull tasks with long polls; a pending
poll is answered the moment the workflow assigns a task, and results are
folded on the workflow's thread (one at a time) before the site is told its
result was accepted, which also paces senders of large models. A workflow
that passes `on_stream` reads a streamed result array by array while it
arrives, so the server job never holds a whole incoming result.

It serves only the client jobs of the sites it was given, `<site>.<job_id>`:
a join, poll, result or metric from any other cell is refused (and the cell
logs the refusal). The cell network proves who a message comes from (each
link admits a cell only under a name it has proved; see
`fl_core.roles.protocol.parent`); this decides who, of those, takes part.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fl_core.cell.cell import DEFERRED, Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.cell.timer import TimerHandle
from fl_core.errors import FlCoreError, JobFailedError
from fl_core.model import FLModel
from fl_core.roles.protocol.script_errors import ScriptError
from fl_core.roles.protocol.task import TaskHeader, TaskKind, Topic
from fl_core.roles.server_job.model_writer import ModelWriter
from fl_core.roles.server_job.results import ResultTaker, RunRecord, SiteFailure
from fl_core.roles.server_job.site_log import SiteLog
from fl_core.spec.workflow import (
    GatherReport,
    ResultHandler,
    StreamHandler,
    Task,
    Workflow,
    WorkflowEvent,
)

log = logging.getLogger(__name__)

EventSink = Callable[[WorkflowEvent, int, dict[str, object]], None]

MODEL_FILE = "global_model.npz"
METRICS_FILE = "metrics.json"
SITE_LOG_FILE = "site_metrics.jsonl"
LEAVE_TIMEOUT = 15.0
"""Seconds an ended job waits for its sites' scripts to end (`Topic.LEAVE`): a client
job tells its script `end`, gives it 5 s to exit, then stops it."""


@dataclass
class _Site:
    assignment: tuple[str, Task] | None = None
    delivered: bool = False
    waiter: Message | None = None
    waiter_timer: TimerHandle | None = None


@dataclass
class _Abort:
    reason: str


@dataclass
class _Lost:
    site: str
    reason: str


class ServerRunner:
    """Runs one job's workflow in the server job cell `server.<job_id>`."""

    def __init__(
        self,
        cell: Cell,
        job_id: str,
        workspace: Path,
        workflow: Workflow,
        sites: Collection[str],
        *,
        poll_timeout: float = 30.0,
        on_event: EventSink | None = None,
        fail_on_script_error: bool = False,
    ) -> None:
        self.cell = cell
        self._job_id = job_id
        self._members = frozenset(sites)
        self._workspace = workspace
        self.workflow = workflow
        self.poll_timeout = poll_timeout
        self._on_event = on_event
        self._fail_on_script_error = fail_on_script_error
        self._fatal: str | None = None  # a script error that fails the job
        self._left: set[str] = set()
        self.record = RunRecord()
        self.results = ResultTaker(cell, self.record.failures)
        self._lock = threading.Lock()
        self._sites: dict[str, _Site] = {}
        self._lost_before_join: dict[str, str] = {}
        self._joined = threading.Condition(self._lock)
        self._ended = False
        self._inbox: queue.Queue[Message | _Abort | _Lost] = queue.Queue()
        self._abort_reason: str | None = None
        self._round = 0  # of the task being gathered, for failure records
        self._site_log = SiteLog(workspace / SITE_LOG_FILE)
        self._writer = ModelWriter(f"fl-model-writer-{job_id}")
        (workspace / "models").mkdir(parents=True, exist_ok=True)
        for topic, handler in (
            (Topic.JOIN, self._on_join),
            (Topic.GET_TASK, self._on_get_task),
            (Topic.LOG, self._on_log),
            (Topic.SCRIPT_ERROR, self._on_script_error),
            (Topic.LEAVE, self._on_leave),
        ):
            cell.register_handler(Channel.SERVER_MAIN, topic, handler)
        # Results are taken as they start to arrive and read on the workflow
        # thread one at a time: meanwhile the other sites' streams wait within
        # their flow-control windows, so this process holds one incoming
        # result at a time, not one per site.
        cell.register_handler(
            Channel.SERVER_MAIN, Topic.SUBMIT_RESULT, self._on_submit, streaming=True
        )

    # --- WorkflowContext ---------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def workspace(self) -> Path:
        return self._workspace

    def sites(self) -> list[str]:
        with self._lock:
            return sorted(self._sites)

    def aborted(self) -> bool:
        return self._abort_reason is not None

    def emit(self, event: WorkflowEvent, round_number: int, **data: object) -> None:
        if self._on_event is not None:
            self._on_event(event, round_number, data)

    def save_model(self, model: FLModel, round_number: int) -> Path:
        # Written in the background: the next round does not wait for the disk.
        path = self._workspace / "models" / MODEL_FILE
        self._writer.submit(path, model.params)
        return path

    def record_metrics(self, round_number: int, metrics: Mapping[str, object]) -> None:
        self.record.metrics.append({"round": round_number, **metrics})
        path = self._workspace / METRICS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record.metrics, indent=2, default=str) + "\n")
        tmp.replace(path)

    def send_task(
        self,
        task: Task,
        targets: Sequence[str],
        timeout: float,
        on_result: ResultHandler,
        *,
        on_stream: StreamHandler | None = None,
    ) -> GatherReport:
        report = GatherReport()
        self._round = task.round_number
        waiting: dict[str, str] = {}
        wake: list[Message] = []
        with self._lock:
            for site in targets:
                state = self._sites.get(site)
                if state is None:
                    report.failed[site] = "not part of this job"
                    continue
                task_id = uuid.uuid4().hex[:12]
                state.assignment = (task_id, task)
                state.delivered = False
                waiting[site] = task_id
                if state.waiter is not None:
                    wake.append(self._take_waiter(state))
        for request in wake:
            self._answer_poll(request)

        deadline = time.monotonic() + timeout
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(item, _Abort):
                break
            if isinstance(item, _Lost):
                if item.site in waiting:
                    del waiting[item.site]
                    report.failed[item.site] = item.reason
                continue
            self._take_result(item, task, waiting, report, on_result, on_stream, deadline)
            # The loop variable would keep the last result alive until the next one.
            del item

        with self._lock:
            for site in waiting:
                report.timed_out.append(site)
                self._sites[site].assignment = None
            stale = self._take_queued()
        for message in stale:
            self.results.refuse(message, "the task is no longer open")
        return report

    # --- running -------------------------------------------------------------------

    def wait_for_sites(self, count: int, timeout: float, *, of: int | None = None) -> None:
        """Block until `count` sites joined; raises `JobFailedError` on timeout.

        With `of` (how many sites the job was deployed to), it fails at once,
        with their reasons, when so many are lost before joining that `count`
        can no longer be reached.
        """
        deadline = time.monotonic() + timeout
        with self._joined:
            while len(self._sites) < count:
                lost = dict(self._lost_before_join)
                if of is not None and of - len(lost) < count:
                    reasons = "; ".join(f"{site}: {why}" for site, why in sorted(lost.items()))
                    raise JobFailedError(
                        self._job_id, f"{len(lost)} of {of} sites could not join: {reasons}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._abort_reason is not None:
                    raise JobFailedError(
                        self._job_id,
                        f"only {len(self._sites)} of {count} sites joined within {timeout:g} s",
                    )
                self._joined.wait(remaining)

    def run(self, initial: FLModel) -> FLModel:
        """Run the workflow to its end; then tell every site the job is over.

        Unless the job was aborted, it then waits (up to `LEAVE_TIMEOUT`) for
        every site's scripts to end, so their script errors are in the record.
        """
        try:
            final = self.workflow.run(self, initial)
            self._writer.flush()  # a model that could not be written fails the job
        except JobFailedError:
            if self._fatal is not None:  # the workflow saw the abort it caused
                raise JobFailedError(self._job_id, self._fatal) from None
            raise
        finally:
            self.end()
            if self._abort_reason is None:
                self.wait_for_leaves(LEAVE_TIMEOUT)
        if self._fatal is not None:
            raise JobFailedError(self._job_id, self._fatal)
        return final

    def wait_for_leaves(self, timeout: float) -> None:
        """Wait until every site still in the job said it is done (`Topic.LEAVE`)."""
        deadline = time.monotonic() + timeout
        with self._joined:
            while not set(self._sites) <= self._left:
                if self._abort_reason is not None and self._fatal is None:
                    return  # aborted meanwhile (Ctrl-C): nobody waits for scripts
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(set(self._sites) - self._left)
                    log.warning(
                        "job %s: %s did not report the end of their scripts within %g s",
                        self._job_id,
                        ", ".join(missing),
                        timeout,
                    )
                    return
                self._joined.wait(remaining)

    def abort(self, reason: str) -> None:
        """Ask the workflow to stop; `send_task` returns at once."""
        self._abort_reason = reason
        self._inbox.put(_Abort(reason))
        with self._joined:
            self._joined.notify_all()

    def site_lost(self, site: str, reason: str) -> None:
        """`site`'s client job is gone: its open task fails with `reason` at once.

        The site leaves the job, so later rounds do not wait for it; the
        workflow decides whether the sites left are enough.
        """
        with self._lock:
            state = self._sites.pop(site, None)
            waiter = state.waiter if state is not None else None
            if state is not None and state.waiter_timer is not None:
                state.waiter_timer.cancel()
        if state is None:
            with self._joined:
                self._lost_before_join[site] = reason
                self._joined.notify_all()
            return
        log.warning("job %s: %s is lost: %s", self._job_id, site, reason)
        self.record.failures.setdefault(site, SiteFailure(self._round, reason))
        self._inbox.put(_Lost(site, reason))
        with self._joined:
            self._joined.notify_all()  # `wait_for_leaves` no longer waits for it
        del waiter  # its requester is gone; nobody waits for the reply

    def end(self) -> None:
        """Answer every pending and future task poll with END, and finish writing models."""
        try:
            self._writer.flush()
        except FlCoreError as exc:
            log.error("job %s: %s", self._job_id, exc)
        self._site_log.close()
        with self._lock:
            self._ended = True
            waiters = [self._take_waiter(s) for s in self._sites.values() if s.waiter]
            stale = self._take_queued()
        for request in waiters:
            self.cell.reply(request, None, **{TaskHeader.KIND: TaskKind.END})
        for message in stale:
            self.results.refuse(message, "the job has ended")

    # --- handlers --------------------------------------------------------------------

    def _member(self, message: Message) -> str:
        """The site whose client job sent `message`; refuses any other cell."""
        site, _, job_id = message.origin.partition(".")
        if job_id != self._job_id or site not in self._members:
            raise FlCoreError(f"{message.origin} is not a client job of job {self._job_id}")
        return site

    def _on_join(self, message: Message) -> object:
        site = self._member(message)
        with self._joined:
            if self._ended:
                raise FlCoreError(f"job {self._job_id} has ended")
            self._sites.setdefault(site, _Site())
            self._joined.notify_all()
        log.info("%s joined job %s", site, self._job_id)
        return None

    def _site_of(self, message: Message) -> str:
        site = self._member(message)
        if site not in self._sites:
            raise FlCoreError(f"{message.origin} has not joined job {self._job_id}")
        return site

    def _on_get_task(self, message: Message) -> object:
        # Replies go out after the lock is released: an in-process reply runs
        # the requester's callbacks on this thread.
        stale: Message | None = None
        ready: tuple[str, Task] | None = None
        with self._lock:
            ended = self._ended
            if not ended:
                state = self._sites[self._site_of(message)]
                if state.assignment is not None and not state.delivered:
                    state.delivered = True
                    ready = state.assignment
                else:
                    stale = self._take_waiter(state) if state.waiter is not None else None
                    state.waiter = message
                    state.waiter_timer = self.cell.resources.timer.call_later(
                        self.poll_timeout, lambda: self._expire_poll(state, message)
                    )
        if ended:
            self.cell.reply(message, None, **{TaskHeader.KIND: TaskKind.END})
        elif ready is not None:
            self._reply_task(message, ready)
        if stale is not None:
            self.cell.reply(stale, None, **{TaskHeader.KIND: TaskKind.WAIT})
        return DEFERRED

    def _expire_poll(self, state: _Site, message: Message) -> None:
        with self._lock:
            if state.waiter is not message:
                return
            state.waiter = None
        self.cell.reply(message, None, **{TaskHeader.KIND: TaskKind.WAIT})

    def _take_waiter(self, state: _Site) -> Message:
        request = state.waiter
        assert request is not None
        state.waiter = None
        if state.waiter_timer is not None:
            state.waiter_timer.cancel()
        return request

    def _answer_poll(self, request: Message) -> None:
        with self._lock:
            state = self._sites[request.origin.split(".", 1)[0]]
            if state.assignment is None or state.delivered:
                kind = TaskKind.END if self._ended else TaskKind.WAIT
                answer = None
            else:
                state.delivered = True
                assignment = state.assignment
                kind = TaskKind.TASK
                answer = assignment
        if answer is None:
            self.cell.reply(request, None, **{TaskHeader.KIND: kind})
        else:
            self._reply_task(request, answer)

    def _reply_task(self, request: Message, assignment: tuple[str, Task]) -> None:
        task_id, task = assignment
        self.cell.reply(
            request,
            task.data,
            **{
                TaskHeader.KIND: TaskKind.TASK,
                TaskHeader.TASK_ID: task_id,
                TaskHeader.TASK_NAME: task.name,
                TaskHeader.ROUND: str(task.round_number),
            },
        )

    def _on_submit(self, message: Message) -> object:
        task_id = message.get(TaskHeader.TASK_ID)
        with self._lock:
            assignment = self._sites[self._site_of(message)].assignment
            # Checked and queued under the lock that `send_task` holds while it
            # closes a round, so a result is either queued for the open round
            # (and drained if the round then closes) or refused here at once.
            if assignment is not None and assignment[0] == task_id:
                self._inbox.put(message)
                return DEFERRED
        self.results.refuse(message, f"task {task_id} is no longer open")
        return DEFERRED

    def _on_script_error(self, message: Message) -> object:
        error = ScriptError.from_payload(self._site_of(message), message.payload)
        log.warning("job %s: %s", self._job_id, error.describe())
        with self._lock:
            self.record.script_errors.append(error)
        if self._fail_on_script_error and self._fatal is None:
            self._fatal = f"{error.describe()} (executor.fail_on_script_error is set)"
            self.abort(self._fatal)
        return None

    def _on_leave(self, message: Message) -> object:
        site = self._site_of(message)
        with self._joined:
            self._left.add(site)
            self._joined.notify_all()
        return None

    def _on_log(self, message: Message) -> object:
        self._site_of(message)
        if not isinstance(message.payload, dict):
            raise FlCoreError(f"metric from {message.origin} is not a mapping")
        self._site_log.write({**message.payload, "time": time.time()})
        return None

    # --- results -----------------------------------------------------------------------

    def _take_result(
        self,
        message: Message,
        task: Task,
        waiting: dict[str, str],
        report: GatherReport,
        on_result: ResultHandler,
        on_stream: StreamHandler | None,
        deadline: float,
    ) -> None:
        site = message.origin.split(".", 1)[0]
        task_id = message.get(TaskHeader.TASK_ID)
        if waiting.get(site) != task_id:
            self.results.refuse(message, f"task {task_id} is not the current task of {site}")
            return
        del waiting[site]
        with self._lock:
            self._sites[site].assignment = None
        self.results.take(message, site, task, report, on_result, on_stream, deadline)

    def _take_queued(self) -> list[Message]:
        """Results still queued; called under the lock when a round or the job closes."""
        queued: list[Message] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return queued
            if isinstance(item, Message):
                queued.append(item)

"""The client job runner: pulls tasks from its server job, runs them, returns results.

It holds no thread while waiting: each step is a callback on a reply, so a
thousand simulated sites cost a thousand small objects, not threads. Task
pulls are long polls: the server job answers as soon as a task exists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.errors import CellError, RequestTimeoutError, TargetUnreachableError
from fl_core.model import FLModel, MetaKey
from fl_core.roles.client_job.in_process import Assignment, TaskOutcome
from fl_core.roles.protocol.script_errors import ScriptError
from fl_core.roles.protocol.task import Outcome as OutcomeKind
from fl_core.roles.protocol.task import TaskHeader, TaskKind, Topic

if TYPE_CHECKING:
    from fl_core.roles.client_job.executors import TaskExecutor

log = logging.getLogger(__name__)

JOIN_RETRY = 0.05
"""Seconds between join attempts while the server job is not reachable yet."""
REPORT_TIMEOUT = 10.0
"""Seconds a script error report or the leave may take to be acknowledged."""


class ClientRunner:
    """Runs one site's part of one job."""

    def __init__(
        self,
        cell: Cell,
        site: str,
        server_job: str,
        executor: TaskExecutor,
        *,
        poll_timeout: float = 30.0,
        request_timeout: float = 60.0,
        join_timeout: float = 0.0,
    ) -> None:
        self.cell = cell
        self.site = site
        self.server_job = server_job
        self.executor = executor
        self.poll_timeout = poll_timeout
        self.request_timeout = request_timeout
        self.join_timeout = join_timeout
        """Seconds to keep retrying the join while the server job is not reachable yet
        (its process may start after this one); 0 tries once."""
        self._join_deadline = 0.0
        self.done = threading.Event()
        self.error: str | None = None
        self._stopping = False

    def start(self) -> None:
        """Join the job and begin pulling tasks (returns at once)."""
        self._join_deadline = time.monotonic() + self.join_timeout
        self._join()

    def _join(self) -> None:
        future = self.cell.request_async(
            self.server_job, Channel.SERVER_MAIN, Topic.JOIN, None, self.request_timeout
        )
        future.add_done_callback(self._guarded(self._on_joined))

    def stop(self) -> None:
        """Stop pulling; the runner is done once any pending poll returns."""
        self._stopping = True

    def _guarded(
        self, callback: Callable[[Future[Message]], None]
    ) -> Callable[[Future[Message]], None]:
        """`callback`, but an exception in it ends the runner with that error.

        Future callbacks swallow exceptions; unguarded, a failure here would
        leave the site silently stuck and `done` never set.
        """

        def run(future: Future[Message]) -> None:
            try:
                callback(future)
            except Exception as exc:
                log.exception("%s: client runner step failed", self.site)
                self._finish(f"client runner failed: {type(exc).__name__}: {exc}")

        return run

    def _finish(self, error: str | None = None) -> None:
        if error and self.error is None:
            self.error = error
            log.error("%s: %s", self.site, error)
        self.done.set()

    def _on_joined(self, future: Future[Message]) -> None:
        try:
            future.result()
        except TargetUnreachableError as exc:
            if time.monotonic() < self._join_deadline and not self._stopping:
                self.cell.resources.timer.call_later(JOIN_RETRY, self._guarded_join)
                return
            self._finish(f"could not join job at {self.server_job}: {exc}")
            return
        except CellError as exc:
            self._finish(f"could not join job at {self.server_job}: {exc}")
            return
        self._poll()

    def _guarded_join(self) -> None:
        try:
            self._join()
        except Exception as exc:
            self._finish(f"could not join job at {self.server_job}: {exc}")

    def _poll(self) -> None:
        if self._stopping:
            self._finish()
            return
        future = self.cell.request_async(
            self.server_job,
            Channel.SERVER_MAIN,
            Topic.GET_TASK,
            None,
            self.poll_timeout + self.request_timeout,
        )
        future.add_done_callback(self._guarded(self._on_task))

    def _on_task(self, future: Future[Message]) -> None:
        try:
            reply = future.result()
        except RequestTimeoutError:
            self._poll()
            return
        except CellError as exc:
            self._finish(f"lost the server job {self.server_job}: {exc}")
            return
        kind = reply.get(TaskHeader.KIND)
        if kind == TaskKind.WAIT:
            self._poll()
        elif kind == TaskKind.END:
            # Its scripts end first (a once script is told `end`), so a script that
            # fails on the way out is reported before the server job writes its summary.
            self.executor.finish(self.site, self._leave)
        elif kind == TaskKind.TASK and not isinstance(reply.payload, FLModel):
            got = type(reply.payload).__name__
            self._finish(f"the server job sent a task whose payload is a {got}, not a model")
        elif kind == TaskKind.TASK:
            assert isinstance(reply.payload, FLModel)
            task = Assignment(
                reply.get(TaskHeader.TASK_ID),
                reply.get(TaskHeader.TASK_NAME),
                int(reply.get(TaskHeader.ROUND, "0")),
                reply.payload,
            )
            self._run(task)
        else:
            self._finish(f"unexpected reply to {Topic.GET_TASK}: kind {kind!r}")

    def _run(self, task: Assignment) -> None:
        # Debug: a simulator with a thousand sites would write thousands of lines.
        log.debug(
            "%s: task %s (%s, round %d) received, %.1f MiB",
            self.site,
            task.task_id,
            task.name,
            task.round_number + 1,
            task.model.nbytes() / 2**20,
        )
        # The callback keeps the task's ids, not its model: an executor that hands
        # the model to another process can then let it go.
        ids = replace(task, model=FLModel())
        self.executor.execute(self.site, task, lambda outcome: self._submit(ids, outcome))

    def _submit(self, task: Assignment, outcome: TaskOutcome) -> None:
        log.debug(
            "%s: task %s done (%s), sending the result",
            self.site,
            task.task_id,
            "ok" if outcome.result is not None else f"failed: {outcome.reason}",
        )
        headers: dict[str, str] = {TaskHeader.TASK_ID: task.task_id}
        payload: object
        if outcome.result is not None:
            outcome.result.meta[MetaKey.SITE] = self.site
            headers[TaskHeader.OUTCOME] = OutcomeKind.OK
            payload = outcome.result
        else:
            headers[TaskHeader.OUTCOME] = OutcomeKind.FAILED
            headers[TaskHeader.REASON] = outcome.reason
            payload = outcome.detail or None
        future = self.cell.request_async(
            self.server_job,
            Channel.SERVER_MAIN,
            Topic.SUBMIT_RESULT,
            payload,
            self.request_timeout,
            headers,
        )
        future.add_done_callback(self._guarded(lambda f: self._on_submitted(task, f)))

    def _on_submitted(self, task: Assignment, future: Future[Message]) -> None:
        try:
            reply = future.result()
        except CellError as exc:
            self._finish(f"could not return the result of task {task.task_id}: {exc}")
            return
        if reply.get(TaskHeader.ACCEPTED) != "yes":
            log.warning(
                "%s: result of task %s (round %d) not accepted: %s",
                self.site,
                task.task_id,
                task.round_number,
                reply.get(TaskHeader.REASON),
            )
        else:
            log.debug("%s: result of task %s accepted", self.site, task.task_id)
        self._poll()

    def _leave(self) -> None:
        try:
            future = self.cell.request_async(
                self.server_job, Channel.SERVER_MAIN, Topic.LEAVE, None, REPORT_TIMEOUT
            )
        except CellError as exc:
            log.warning("%s: could not tell the server job it is done: %s", self.site, exc)
            self._finish()
            return
        future.add_done_callback(lambda _: self._finish())

    def report_script_error(self, error: ScriptError) -> None:
        """Tell the server job a script ended badly; waits for it to be recorded.

        Called on an executor's thread, never a cell's: it blocks until the server
        job answers (or `REPORT_TIMEOUT`), so the report lands before this site leaves.
        """
        try:
            self.cell.request(
                self.server_job,
                Channel.SERVER_MAIN,
                Topic.SCRIPT_ERROR,
                error.payload(),
                REPORT_TIMEOUT,
            )
        except CellError as exc:
            log.warning("%s (not reported to the server job: %s)", error.describe(), exc)
            return
        # The server job prints the WARNING; in the simulator it is this process too.
        log.info("%s (reported to the server job)", error.describe())

    def send_log(self, key: str, value: float, step: int | None) -> None:
        """Forward a metric the script logged to the server job."""
        payload = {"site": self.site, "key": key, "value": value, "step": step}
        try:
            self.cell.fire(self.server_job, Channel.SERVER_MAIN, Topic.LOG, payload)
        except CellError as exc:
            log.warning("%s: metric %s not delivered: %s", self.site, key, exc)

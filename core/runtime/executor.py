"""The in-process executor: runs the user's training script in a worker thread.

`per_task` runs the script once per task on a bounded worker pool, so a
thousand simulated sites share a few threads: `is_running()` is True until the
script has sent its result. `once` starts the script once per site on its own
thread for the whole job; `receive()` then blocks until the next task.
"""

from __future__ import annotations

import builtins
import logging
import queue
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, TracebackType

import numpy as np

from fl_core.client.session import ClientSession, bound_session
from fl_core.config import LaunchMode
from fl_core.model import FLModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A task handed to a site's script."""

    task_id: str
    name: str
    round_number: int
    model: FLModel


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a script made of a task: a result, or a failure with its traceback."""

    result: FLModel | None = None
    reason: str = ""
    detail: str = ""


Done = Callable[[Outcome], None]
LogSink = Callable[[str, str, float, int | None], None]


def _read_only(model: FLModel) -> FLModel:
    """A view of `model` whose arrays cannot be written: sites share the server's arrays."""
    params: dict[str, np.ndarray] = {}
    for name, array in model.params.items():
        view = array.view()
        view.flags.writeable = False
        params[name] = view
    return FLModel(
        params=params,
        params_type=model.params_type,
        metrics=dict(model.metrics),
        meta=dict(model.meta),
        current_round=model.current_round,
        total_rounds=model.total_rounds,
    )


class _Session(ClientSession):
    """The Client API's view of one site."""

    def __init__(self, site: str, job_id: str, logs: LogSink) -> None:
        self._site = site
        self._job_id = job_id
        self._logs = logs
        self._lock = threading.Lock()
        self._current: tuple[Assignment, Done] | None = None
        self._sent = False

    @property
    def site_name(self) -> str:
        return self._site

    @property
    def job_id(self) -> str:
        return self._job_id

    def log(self, key: str, value: float, step: int | None) -> None:
        self._logs(self._site, key, value, step)

    def _take_current(self) -> tuple[Assignment, Done] | None:
        with self._lock:
            current, self._current = self._current, None
            return current

    def send(self, model: FLModel) -> None:
        current = self._take_current()
        if current is None:
            raise RuntimeError("flare.send() called with no task to answer: call receive() first")
        self._sent = True
        _, done = current
        # The runtime gets its own dicts: arrays the script still reaches
        # through its FLModel then count as referenced (see the aggregator).
        done(
            Outcome(
                result=FLModel(
                    params=dict(model.params),
                    params_type=model.params_type,
                    metrics=dict(model.metrics),
                    meta=dict(model.meta),
                    current_round=model.current_round,
                    total_rounds=model.total_rounds,
                )
            )
        )


class _PerTaskSession(_Session):
    def __init__(self, site: str, job_id: str, logs: LogSink, task: Assignment, done: Done):
        super().__init__(site, job_id, logs)
        self._current = (task, done)
        self._given = False

    def receive(self, timeout: float | None) -> FLModel | None:
        with self._lock:
            if self._given or self._current is None:
                return None
            self._given = True
            return _read_only(self._current[0].model)

    def is_running(self) -> bool:
        return not self._sent


class _OnceSession(_Session):
    _END = None

    def __init__(self, site: str, job_id: str, logs: LogSink) -> None:
        super().__init__(site, job_id, logs)
        self.inbox: queue.Queue[tuple[Assignment, Done] | None] = queue.Queue()
        self._ended = False
        self.finished: str | None = None
        """Why the script thread ended, once it has."""

    def receive(self, timeout: float | None) -> FLModel | None:
        if self._ended:
            return None
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._ended = True
            return None
        with self._lock:
            self._current = item
        return _read_only(item[0].model)

    def is_running(self) -> bool:
        return not self._ended


def _script_traceback(exc: BaseException, script: Path) -> str:
    """The traceback from the script's own frames on (runtime frames dropped)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != str(script):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


class InProcessExecutor:
    """Runs one job's training script for many sites inside this process."""

    def __init__(
        self,
        script: Path,
        launch: LaunchMode,
        pool: Executor,
        job_id: str,
        logs: LogSink,
    ) -> None:
        self.script = script
        self.launch = launch
        self._pool = pool
        self._job_id = job_id
        self._logs = logs
        self._code: CodeType = compile(script.read_bytes(), str(script), "exec")
        self._once: dict[str, _OnceSession] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def execute(self, site: str, task: Assignment, done: Done) -> None:
        """Run `task` for `site`; `done(outcome)` is called exactly once."""
        if self.launch is LaunchMode.PER_TASK:
            session = _PerTaskSession(site, self._job_id, self._logs, task, done)
            self._pool.submit(self._run_script, session, done)
            return
        with self._lock:
            once = self._once.get(site)
            if once is None:
                once = self._once[site] = _OnceSession(site, self._job_id, self._logs)
                thread = threading.Thread(
                    target=self._run_script,
                    args=(once, None),
                    name=f"fl-script-{site}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            if once.finished is None:
                once.inbox.put((task, done))
                return
        done(Outcome(reason=f"the script of site {site} ended: {once.finished}"))

    def _run_script(self, session: _Session, done: Done | None) -> None:
        failure: Outcome | None = None
        namespace = {
            "__name__": "__main__",
            "__file__": str(self.script),
            "__builtins__": builtins,
        }
        with bound_session(session):
            try:
                exec(self._code, namespace)
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    failure = Outcome(reason=f"the script exited with status {exc.code}")
            except BaseException as exc:
                failure = Outcome(
                    reason=f"{type(exc).__name__}: {exc}",
                    detail=_script_traceback(exc, self.script),
                )
        namespace.clear()
        leftover = session._take_current()
        if leftover is not None:
            _, pending_done = leftover
            pending_done(failure or Outcome(reason="the script ended without calling flare.send()"))
        if isinstance(session, _OnceSession):
            with self._lock:
                session.finished = failure.reason if failure else "it returned"
            self._fail_queued(session)

    def _fail_queued(self, session: _OnceSession) -> None:
        why = session.finished
        while True:
            try:
                item = session.inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1](Outcome(reason=f"the script of site {session.site_name} ended: {why}"))

    def stop(self) -> None:
        """Tell `once` scripts that the job is over and wait briefly for them."""
        with self._lock:
            sessions = list(self._once.values())
            threads = list(self._threads)
        for session in sessions:
            session.inbox.put(None)
        for thread in threads:
            thread.join(timeout=10)
            if thread.is_alive():
                log.warning("training script thread %s did not end", thread.name)

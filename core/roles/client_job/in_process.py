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
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import CodeType, TracebackType

import numpy as np

from fl_core.cell.timer import Timer, TimerHandle
from fl_core.client.session import ClientSession, bound_session
from fl_core.config import LaunchMode
from fl_core.model import FLModel
from fl_core.roles.protocol.script_errors import ScriptError, ScriptErrorSink, last_line

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A task handed to a site's script."""

    task_id: str
    name: str
    round_number: int
    model: FLModel


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What a script made of a task: a result, or a failure with its traceback."""

    result: FLModel | None = None
    reason: str = ""
    detail: str = ""


Done = Callable[[TaskOutcome], None]
LogSink = Callable[[str, str, float, int | None], None]


def _read_only(model: FLModel) -> FLModel:
    """A view of `model` whose arrays cannot be written: sites share the server's arrays."""
    params: dict[str, np.ndarray] = {}
    for name, array in model.params.items():
        view = array.view()
        view.flags.writeable = False
        params[name] = view
    return replace(model, params=params, metrics=dict(model.metrics), meta=dict(model.meta))


class _Session(ClientSession):
    """The Client API's view of one site."""

    def __init__(self, site: str, job_id: str, logs: LogSink, torch_sites: set[str]) -> None:
        self._site = site
        self._job_id = job_id
        self._logs = logs
        self._torch_sites = torch_sites
        self._lock = threading.Lock()
        self._current: tuple[Assignment, Done] | None = None
        self._sent = False
        self.last_round: int | None = None
        """The round of the last result the script sent."""
        self.hold = False
        """Keep the result until the script has ended (`fail_on_script_error`, per_task)."""
        self.held: tuple[Done, TaskOutcome] | None = None

    @property
    def site_name(self) -> str:
        return self._site

    @property
    def job_id(self) -> str:
        return self._job_id

    def log(self, key: str, value: float, step: int | None) -> None:
        self._logs(self._site, key, value, step)

    def take_current(self) -> tuple[Assignment, Done] | None:
        """The task in hand, now no longer held (None if there is none)."""
        with self._lock:
            current, self._current = self._current, None
            return current

    def wants_torch(self) -> bool:
        return self._site in self._torch_sites

    def send(self, model: FLModel, *, sent_torch: bool = False) -> None:
        current = self.take_current()
        if current is None:
            raise RuntimeError("flare.send() called with no task to answer: call receive() first")
        self._sent = True
        self.last_round = current[0].round_number
        if sent_torch:
            self._torch_sites.add(self._site)
        else:
            self._torch_sites.discard(self._site)
        _, done = current
        # The runtime gets its own dicts: arrays the script still reaches
        # through its FLModel then count as referenced (see the aggregator).
        outcome = TaskOutcome(
            result=replace(
                model,
                params=dict(model.params),
                metrics=dict(model.metrics),
                meta=dict(model.meta),
            )
        )
        if self.hold:
            self.held = (done, outcome)
        else:
            done(outcome)


class _PerTaskSession(_Session):
    def __init__(
        self,
        site: str,
        job_id: str,
        logs: LogSink,
        torch_sites: set[str],
        task: Assignment,
        done: Done,
    ) -> None:
        super().__init__(site, job_id, logs, torch_sites)
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

    def __init__(self, site: str, job_id: str, logs: LogSink, torch_sites: set[str]) -> None:
        super().__init__(site, job_id, logs, torch_sites)
        self.inbox: queue.Queue[tuple[Assignment, Done] | None] = queue.Queue()
        self._pending: tuple[Assignment, Done] | None = None
        """A task `is_running` took from the inbox, for the next `receive`."""
        self._ended = False
        self.finished: _Ending | None = None
        """How the script thread ended, once it has."""

    def receive(self, timeout: float | None) -> FLModel | None:
        with self._lock:
            item, self._pending = self._pending, None
        if item is None:
            item = self._next(timeout)
        if item is None:
            return None
        with self._lock:
            self._current = item
        return _read_only(item[0].model)

    def _next(self, timeout: float | None) -> tuple[Assignment, Done] | None:
        if self._ended:
            return None
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._ended = True
        return item

    def is_running(self) -> bool:
        """Waits for the next task (kept for `receive`) or the end, as FLARE's does."""
        with self._lock:
            if self._current is not None or self._pending is not None:
                return True
        item = self._next(None)
        if item is None:
            return False
        with self._lock:
            self._pending = item
        return True

    def take_current(self) -> tuple[Assignment, Done] | None:
        """The task in hand (or handed over but not yet received), now no longer held."""
        with self._lock:
            current, self._current = self._current, None
            if current is None:
                current, self._pending = self._pending, None
            return current


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a script's run ended: the exit code a process of its own would have."""

    exit_code: int = 0
    what: str = "returned"
    last_line: str = ""
    detail: str = ""
    raised: bool = False
    """It raised an exception (not `sys.exit`): `last_line` is that exception."""

    def phrase(self, when: str) -> str:
        """`the training script <what> <when>: <last line>`."""
        text = f"the training script {self.what} {when}"
        return f"{text}: {self.last_line}" if self.last_line else text


def _when_gone(session: _Session) -> str:
    """When a once script that a task found gone had ended."""
    if session.last_round is None:
        return "before it took its first task"
    return f"after sending its result of round {session.last_round + 1}"


def _ending_of(exc: BaseException, script: Path) -> _Ending | None:
    """How `exc` ended the script; None for a clean `sys.exit(0)`."""
    if isinstance(exc, SystemExit):
        if exc.code in (None, 0):
            return None
        if isinstance(exc.code, int):
            return _Ending(exc.code, f"exited with code {exc.code}")
        # sys.exit("message") prints the message and exits with 1, as Python does.
        return _Ending(1, "exited with code 1", last_line(str(exc.code)))
    return _Ending(
        1,
        "raised an exception (exit code 1)",
        last_line(f"{type(exc).__name__}: {exc}"),
        _script_traceback(exc, script),
        raised=True,
    )


def _script_traceback(exc: BaseException, script: Path) -> str:
    """The traceback from the script's own frames on (runtime frames dropped)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != str(script):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


class _Once:
    """Calls a `Done` at most once and stops the task's timeout when it does."""

    def __init__(self, done: Done) -> None:
        self._done = done
        self._lock = threading.Lock()
        self._called = False
        self.timer: TimerHandle | None = None

    def __call__(self, outcome: TaskOutcome) -> None:
        with self._lock:
            if self._called:
                return
            self._called = True
        if self.timer is not None:
            self.timer.cancel()
        self._done(outcome)


class InProcessExecutor:
    """Runs one job's training script for many sites inside this process.

    `per_task` scripts run on `threads` daemon workers (a hung script can
    never keep the process alive); `once` scripts get a daemon thread per
    site. A task's `timeout` counts from the moment its script starts.
    """

    def __init__(
        self,
        script: Path,
        launch: LaunchMode,
        *,
        threads: int,
        job_id: str,
        logs: LogSink,
        timer: Timer,
        task_timeout: float | None = None,
        on_script_error: ScriptErrorSink | None = None,
        fail_on_script_error: bool = False,
    ) -> None:
        self.script = script
        self._on_script_error = on_script_error
        self._fail_on_script_error = fail_on_script_error
        self._busy: dict[str, int] = {}
        """Scripts of each site queued or running; `finish` waits for none."""
        self._finishing: dict[str, list[Callable[[], None]]] = {}
        self.launch = launch
        self._job_id = job_id
        self._logs = logs
        self._timer = timer
        self._task_timeout = task_timeout
        self._code: CodeType = compile(script.read_bytes(), str(script), "exec")
        self._once: dict[str, _OnceSession] = {}
        self._torch_sites: set[str] = set()
        """Sites whose script sent torch tensors last: their tasks arrive as tensors."""
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopped: str | None = None
        self._work: queue.SimpleQueue[tuple[_PerTaskSession, _Once] | None] = queue.SimpleQueue()
        if launch is LaunchMode.PER_TASK:
            for index in range(threads):
                self._start_thread(self._worker, f"fl-site-worker-{index + 1}")

    def _start_thread(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def execute(self, site: str, task: Assignment, done: Done) -> None:
        """Run `task` for `site`; `done(outcome)` is called exactly once."""
        once_done = _Once(done)
        with self._lock:
            stopped = self._stopped
            if stopped is None and self.launch is LaunchMode.PER_TASK:
                session = _PerTaskSession(
                    site, self._job_id, self._logs, self._torch_sites, task, once_done
                )
                session.hold = self._fail_on_script_error
                self._busy[site] = self._busy.get(site, 0) + 1
                self._work.put((session, once_done))
                return
            if stopped is None:
                once = self._once.get(site)
                if once is None:
                    once = self._once[site] = _OnceSession(
                        site, self._job_id, self._logs, self._torch_sites
                    )
                    self._busy[site] = self._busy.get(site, 0) + 1
                    self._start_thread(self._run_script, f"fl-script-{site}", once)
                if once.finished is None:
                    self._arm_timeout(once_done)
                    once.inbox.put((task, once_done))
                    return
                stopped = once.finished.phrase(_when_gone(once))
        once_done(TaskOutcome(reason=stopped))

    def _arm_timeout(self, done: _Once) -> None:
        limit = self._task_timeout
        if limit is not None:
            reason = f"the script did not send a result within {limit:g} s"
            done.timer = self._timer.call_later(limit, lambda: done(TaskOutcome(reason=reason)))

    def _worker(self) -> None:
        while (item := self._work.get()) is not None:
            session, done = item
            if self._stopped is not None:
                done(TaskOutcome(reason=self._stopped))
                self._idle(session.site_name)
                continue
            self._arm_timeout(done)
            self._run_script(session)

    def finish(self, site: str, then: Callable[[], None]) -> None:
        """No more work for `site`: a once script sees the end; `then()` once none runs."""
        with self._lock:
            if self._busy.get(site, 0) > 0 and self._stopped is None:
                self._finishing.setdefault(site, []).append(then)
                once = self._once.get(site)
                if once is not None:
                    once.inbox.put(None)
                return
        then()

    def _idle(self, site: str) -> None:
        with self._lock:
            busy = self._busy[site] = self._busy.get(site, 1) - 1
            waiting = self._finishing.pop(site, []) if busy <= 0 else []
        for then in waiting:
            then()

    def _run_script(self, session: _Session) -> None:
        try:
            self._run(session)
        finally:
            self._idle(session.site_name)

    def _run(self, session: _Session) -> None:
        ending: _Ending | None = None
        namespace = {
            "__name__": "__main__",
            "__file__": str(self.script),
            "__builtins__": builtins,
        }
        with bound_session(session):
            try:
                exec(self._code, namespace)
            except BaseException as exc:
                ending = _ending_of(exc, self.script)
        namespace.clear()
        leftover = session.take_current()
        held, session.held = session.held, None
        if leftover is not None:
            _, pending_done = leftover
            if ending is None:
                pending_done(TaskOutcome(reason="the script ended without calling flare.send()"))
            else:
                # An exception while the task is in hand is the task's failure, as it reads.
                reason = (
                    ending.last_line if ending.raised else ending.phrase("before it sent a result")
                )
                pending_done(TaskOutcome(reason=reason, detail=ending.detail))
        elif held is not None:  # per_task with fail_on_script_error: its end decides
            held_done, result = held
            if ending is not None:
                result = TaskOutcome(
                    reason=ending.phrase("after sending its result"), detail=ending.detail
                )
            held_done(result)
            ending = None
        failed_queued = False
        if isinstance(session, _OnceSession):
            with self._lock:
                session.finished = ending or _Ending()
            failed_queued = self._fail_queued(session)
        if ending is not None and leftover is None and not failed_queued:
            # No task is waiting for this failure: the report is the only place it shows.
            self._report(session, ending)

    def _report(self, session: _Session, ending: _Ending) -> None:
        error = ScriptError(
            session.site_name, session.last_round, ending.exit_code, ending.last_line, ending.what
        )
        if self._stopped is not None:
            log.info("%s (the job had ended)", error.describe())
        elif self._on_script_error is None:
            log.warning("%s", error.describe())
        else:
            self._on_script_error(error)

    def _fail_queued(self, session: _OnceSession) -> bool:
        """Fail the tasks the ended script never took; whether there were any."""
        ended = session.finished
        assert ended is not None
        failed = False
        while True:
            try:
                item = session.inbox.get_nowait()
            except queue.Empty:
                return failed
            if item is not None:
                failed = True
                reason = ended.phrase(_when_gone(session))
                item[1](TaskOutcome(reason=reason, detail=ended.detail))

    def stop(self, reason: str, grace: float = 5.0) -> list[str]:
        """End the job for every script; returns the threads still running after `grace` s.

        Queued tasks fail with `reason`; `once` scripts see `receive()` return
        None. Running scripts cannot be interrupted: they are daemon threads,
        so they never keep the process alive.
        """
        with self._lock:
            self._stopped = reason
            sessions = list(self._once.values())
            threads = list(self._threads)
        for session in sessions:
            session.inbox.put(None)
        for _ in threads:
            self._work.put(None)
        deadline = time.monotonic() + grace
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:  # nothing more will end: whoever waits for a site, wait no longer
            waiting = [then for callbacks in self._finishing.values() for then in callbacks]
            self._finishing.clear()
        for then in waiting:
            then()
        return [t.name for t in threads if t.is_alive()]

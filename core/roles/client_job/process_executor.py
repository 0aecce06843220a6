"""The process executor: runs the user's training script as a process of its own.

Each site gets a worker thread and, while it has work, a training process
started by the site's `Launcher` with this process's interpreter
(`sys.executable`, never whatever `python3` is first on PATH). The two talk
through a `Pipe`: this side holds the ACTIVE end, the script's
`flare.init()` opens the PASSIVE end from `FL_CORE_PIPE`
(`fl_core.client.pipe_session` describes the topics).

A task goes through three steps, each watched for the process ending:

1. start (if no process runs for the site): launch, then wait up to
   `start_timeout` for the script to open its end of the pipe;
2. hand over: send the task's model; the executor then drops its reference,
   so a client job holds the model once, not once per step;
3. wait for the script's `result` (its `log` messages are forwarded on the
   way).

`launch: once` keeps the process for the next task; `per_task` tells it
`end` and waits for it to exit. A process that exits (or crashes) before
answering fails the task with its exit code and the tail of its stderr;
the next task starts a fresh process. A task that runs past `task_timeout`
(counted from the start of step 1) stops the process and fails. `stop`
ends every process: `end` first, then SIGTERM and SIGKILL after `grace`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fl_core.client.pipe_session import ENV_VAR, PARAMS_FORMAT, TORCH, PipeTopic
from fl_core.config import LaunchMode
from fl_core.pids import describe_exit
from fl_core.roles.client_job.in_process import Assignment, Done, LogSink, TaskOutcome
from fl_core.roles.client_job.trainer_process import TrainerProcess, close_pipe, outcome_of
from fl_core.roles.protocol.script_errors import ScriptError, ScriptErrorSink, last_line
from fl_core.spec.launcher import Launcher, LaunchSpec, ProcessType
from fl_core.spec.pipe import PeerGoneError, Pipe, PipeContext, PipeError, PipeMessage, PipeSide

__all__ = ["ProcessExecutor"]

log = logging.getLogger(__name__)

_SLICE = 0.25
"""Seconds per pipe wait, between checks of the process, the deadline and `stop`."""


class _Failed(Exception):
    """A task's step failed; carries the outcome to report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.outcome = TaskOutcome(reason=reason, detail=detail)


_Item = tuple[Assignment, Done] | Callable[[], None] | None
"""A site worker's inbox: a task, a `finish` callback, or None to stop."""


class ProcessExecutor:
    """Runs one job's training script in its own process for each site.

    `make_pipe()` returns a fresh, unopened ACTIVE end built from the job's
    pipe choice; `pipe_name` is that component's registered name (the
    script rebuilds its end from it). `workspace` holds a folder per site
    (`trainers/<site>/`: the script's cwd, its `stdout.log`, `stderr.log`
    and the pipe's folder). `threads` bounds how many sites' tasks run at
    once (the simulator's `--threads`); None, no bound.
    """

    def __init__(
        self,
        script: Path,
        launch: LaunchMode,
        *,
        job_id: str,
        workspace: Path,
        launcher: Launcher,
        make_pipe: Callable[[], Pipe],
        pipe_name: str,
        logs: LogSink,
        args: Sequence[str] = (),
        task_timeout: float | None = None,
        start_timeout: float = 120.0,
        python: str | None = None,
        send_timeout: float = 3600.0,
        threads: int | None = None,
        on_script_error: ScriptErrorSink | None = None,
        fail_on_script_error: bool = False,
    ) -> None:
        self.script = script
        self.launch = launch
        self.job_id = job_id
        self.workspace = workspace.resolve()  # the script runs elsewhere: paths are absolute
        self.launcher = launcher
        self.make_pipe = make_pipe
        self.pipe_name = pipe_name
        self.args = tuple(args)
        self.task_timeout = task_timeout
        self.start_timeout = start_timeout
        self.send_timeout = send_timeout
        """Seconds a hand-over may take when the task has no `task_timeout`."""
        self.python = python or sys.executable
        self.on_script_error = on_script_error
        """Hears of a script that ends badly after its result (else a WARNING is logged)."""
        self.fail_on_script_error = fail_on_script_error
        """per_task: a script that ends badly after its result fails that task."""
        self._logs = logs
        self._lock = threading.Lock()
        self._inboxes: dict[str, queue.SimpleQueue[_Item]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._trainers: dict[str, TrainerProcess] = {}
        self._torch_sites: set[str] = set()
        self._launches = 0
        self._stopped: str | None = None
        self._stopping = threading.Event()
        self._grace = 5.0
        self._slots = threading.BoundedSemaphore(threads) if threads else contextlib.nullcontext()

    # --- the executor's interface ------------------------------------------------

    def execute(self, site: str, task: Assignment, done: Done) -> None:
        """Run `task` for `site` in its training process; `done(outcome)` is called once."""
        with self._lock:
            stopped = self._stopped
            if stopped is None:
                inbox = self._inboxes.get(site)
                if inbox is None:
                    inbox = self._inboxes[site] = queue.SimpleQueue()
                    # A daemon: a worker wedged in a pipe must not keep this process
                    # alive (its training process dies with this one anyway).
                    thread = threading.Thread(
                        target=self._serve,
                        args=(site, inbox),
                        name=f"fl-trainer-{site}",
                        daemon=True,
                    )
                    self._threads[site] = thread
                    thread.start()
                inbox.put((task, done))
                return
        done(TaskOutcome(reason=stopped))

    def finish(self, site: str, then: Callable[[], None]) -> None:
        """No more work for `site`: its process is told `end`, then `then()` is called.

        A bad end (non-zero, killed, stopped) is reported to `on_script_error` first.
        """
        with self._lock:
            inbox = self._inboxes.get(site) if self._stopped is None else None
            if inbox is not None:
                inbox.put(then)  # after any task still in hand
                return
        then()

    def stop(self, reason: str, grace: float = 5.0) -> list[str]:
        """End every training process; returns the sites whose process outlived `grace` s.

        A task in progress fails with `reason`. Each process is told `end`,
        then SIGTERMed and, after `grace`, SIGKILLed with its children.
        """
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            self._grace = grace
            threads = dict(self._threads)
            inboxes = list(self._inboxes.values())
        self._stopping.set()
        for inbox in inboxes:
            inbox.put(None)
        deadline = time.monotonic() + grace
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        # A worker still busy is stuck in a long hand-over to a script that does not
        # take its task: ending the process ends the hand-over.
        for site, thread in threads.items():
            trainer = self._trainers.get(site)
            if thread.is_alive() and trainer is not None:
                trainer.handle.terminate(grace)
        deadline = time.monotonic() + grace + 1.0
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        return [site for site, thread in threads.items() if thread.is_alive()]

    # --- one site's worker --------------------------------------------------------

    def _serve(self, site: str, inbox: queue.SimpleQueue[_Item]) -> None:
        try:
            while (item := inbox.get()) is not None:
                if callable(item):
                    self._end(site, report=True)
                    self._call(site, item)
                    continue
                task, done = item
                del item
                if self._stopped is not None:
                    self._report(site, done, TaskOutcome(reason=self._stopped))
                    continue
                pending = [task]
                del task  # `_run_task` drops the model once the script has it
                end = True
                with self._slots:
                    try:
                        outcome = self._run_task(site, pending)
                        end = self.launch is LaunchMode.PER_TASK
                    except _Failed as failed:
                        outcome = failed.outcome
                    except Exception as exc:  # a bug here must fail the task, not hang the site
                        log.exception("%s: the process executor failed", site)
                        outcome = TaskOutcome(reason=f"the process executor failed: {exc}")
                    if outcome.result is None and self._stopped is not None:
                        outcome = TaskOutcome(reason=self._stopped, detail=outcome.detail)
                    if end and outcome.result is not None and self.fail_on_script_error:
                        # Its exit decides whether the result counts.
                        error, end = self._end(site, patient=True), False
                        if error is not None:
                            outcome = TaskOutcome(reason=error.describe())
                    # Else the result first: ending a per_task process may take up to grace.
                    self._report(site, done, outcome)
                    if end:
                        self._end(site, report=outcome.result is not None)
        finally:
            self._end(site)
            while (item := self._take_left(inbox)) is not None:
                if callable(item):
                    self._call(site, item)
                else:
                    self._report(
                        site, item[1], TaskOutcome(reason=self._stopped or "the job ended")
                    )

    @staticmethod
    def _call(site: str, then: Callable[[], None]) -> None:
        try:
            then()
        except Exception:
            log.exception("%s: a finish callback failed", site)

    @staticmethod
    def _report(site: str, done: Done, outcome: TaskOutcome) -> None:
        try:
            done(outcome)
        except Exception:
            # The callback is the runner's; if it breaks, this site's worker must
            # still answer the tasks queued behind, so the error is only logged.
            log.exception("%s: handing over a task's outcome failed", site)

    @staticmethod
    def _take_left(inbox: queue.SimpleQueue[_Item]) -> _Item:
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return None
            if item is not None:
                return item

    def _run_task(self, site: str, pending: list[Assignment]) -> TaskOutcome:
        task = pending.pop()
        if self._stopping.is_set():  # it may have waited for a slot while the job ended
            raise _Failed(self._stopped or "the job ended")
        began = time.monotonic()
        deadline = math.inf if self.task_timeout is None else began + self.task_timeout
        trainer = self._trainers.get(site)
        if trainer is not None and trainer.handle.poll() is not None:
            self._end(site, report=True)  # it died between tasks, after its last result
            trainer = None
        if trainer is None:
            trainer = self._start(site, deadline)
        headers = {
            "task_id": task.task_id,
            "task_name": task.name,
            "round": str(task.round_number),
        }
        if site in self._torch_sites:
            headers[PARAMS_FORMAT] = TORCH  # it sent tensors last time
        log.debug("%s: handing task %s to training process %d", site, task.task_id, trainer.number)
        self._hand_over(trainer, PipeMessage(PipeTopic.TASK, headers, task.model), deadline)
        task_id = task.task_id
        round_number = task.round_number
        del task  # the script has the model now; this process need not keep it
        outcome = self._wait_result(site, trainer, task_id, deadline)
        if outcome.result is not None:
            trainer.last_round = round_number
        return outcome

    def _start(self, site: str, deadline: float) -> TrainerProcess:
        """Launch the site's script and wait for it to open its end of the pipe."""
        with self._lock:
            self._launches += 1
            number = self._launches
        home = self.workspace / "trainers" / site
        try:
            home.mkdir(parents=True, exist_ok=True)
            # A name no other executor can hold: a job restarted in the same workspace
            # (or an earlier one still tearing down) has its own `pipe-<n>-...` folders.
            folder = Path(tempfile.mkdtemp(prefix=f"pipe-{number}-", dir=home))
        except OSError as exc:
            raise _Failed(f"cannot create a pipe folder in {home}: {exc}") from exc
        # Unique across jobs and restarts: a pipe root the job config names is shared.
        name = f"{site}-{number}-{secrets.token_hex(4)}"
        pipe = self.make_pipe()
        stderr_file = home / "stderr.log"
        step = f"cannot open the {self.pipe_name} pipe for the script"
        try:
            pipe.prepare(PipeContext(folder, f"{site}.{self.job_id}", secrets.token_hex(16)))
            pipe.open(name, PipeSide.ACTIVE)
            peer = {
                "name": self.pipe_name,
                "options": pipe.peer_options(),
                "pipe": name,
                "site": site,
                "job_id": self.job_id,
            }
            try:
                environment = json.dumps(peer)
            except (TypeError, ValueError) as exc:
                raise PipeError(f"its peer_options() are not plain JSON: {exc}") from exc
            offset = stderr_file.stat().st_size if stderr_file.exists() else 0
            spec = LaunchSpec(
                job_id=self.job_id,
                role=ProcessType.TRAINER,
                argv=[self.python, str(self.script), *self.args],
                workspace=home,
                log_file=home / "stdout.log",
                stderr_file=stderr_file,
                env={ENV_VAR: environment, "PYTHONUNBUFFERED": "1"},
            )
            step = "cannot start the training script"
            handle = self.launcher.launch(spec)
        except BaseException as exc:
            # Nothing runs yet: undo the pipe's end and folder whatever went wrong.
            close_pipe(site, pipe, number)
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, Exception):
                raise _Failed(f"{step}: {exc}") from exc
            raise
        trainer = TrainerProcess(handle, pipe, folder, stderr_file, offset, number)
        self._trainers[site] = trainer
        log.info("%s: training process %d started (pipe %s)", site, number, self.pipe_name)
        limit = min(deadline, time.monotonic() + self.start_timeout)
        while not pipe.peer_alive():
            self._check_running(trainer, "before it opened its end of the pipe")
            if time.monotonic() >= limit:
                raise _Failed(self._late_start(deadline))
            time.sleep(0.05)
        return trainer

    def _late_start(self, deadline: float) -> str:
        if time.monotonic() >= deadline:
            return self._timed_out()
        return (
            f"the training script did not open its end of the pipe within "
            f"{self.start_timeout:g} s (does it call flare.init()?); it was stopped"
        )

    def _timed_out(self) -> str:
        return (
            f"the training script did not send a result within {self.task_timeout:g} s; "
            "it was stopped"
        )

    def _check_running(self, trainer: TrainerProcess, when: str) -> None:
        """Raise `_Failed` (exit code, stderr tail) if the process has ended; or on `stop`."""
        code = trainer.handle.poll()
        if code is not None:
            tail = trainer.stderr_tail()
            last = tail.strip().splitlines()[-1:] if tail.strip() else []
            reason = f"the training script {describe_exit(code)} {when}"
            if last:
                reason += f": {last[0]}"
            raise _Failed(reason, tail)
        if self._stopping.is_set():
            raise _Failed(self._stopped or "the job ended")

    def _hand_over(self, trainer: TrainerProcess, message: PipeMessage, deadline: float) -> None:
        """Send the task; its model may be big, so a send may take long: one try per gap."""
        limit = min(deadline, time.monotonic() + self.send_timeout)
        while True:
            self._check_running(trainer, "before it took its task")
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise _Failed(
                    self._timed_out()
                    if limit == deadline
                    else f"the training script did not take its task within "
                    f"{self.send_timeout:g} s; it was stopped"
                )
            try:
                if trainer.pipe.send(message, remaining):
                    return
            except PeerGoneError as exc:
                self._wait_exit(trainer)
                self._check_running(trainer, "before it took its task")
                raise _Failed(
                    f"the training script left the pipe before it took its task: {exc}"
                ) from exc
            except PipeError as exc:
                raise _Failed(f"cannot hand the task to the training script: {exc}") from exc
            time.sleep(0.05)  # nobody took it yet (a cell pipe whose trainer is reconnecting)

    def _wait_result(
        self, site: str, trainer: TrainerProcess, task_id: str, deadline: float
    ) -> TaskOutcome:
        silent = drained = False
        while True:
            try:
                message = trainer.pipe.receive(_SLICE)
            except PeerGoneError as exc:
                # Closed, dead, or only busy: a call that holds the GIL for long starves
                # the script's heartbeat thread. While the process lives, its exit or the
                # task's timeout decides, not its heartbeat.
                if not silent:
                    log.warning("%s: training process %d: %s", site, trainer.number, exc)
                    silent = True
                trainer.handle.wait(_SLICE)
                message = None
            except PipeError as exc:
                raise _Failed(f"a bad message from the training script: {exc}") from exc
            if message is not None:
                outcome = outcome_of(message, site, task_id, self._logs, self._torch_sites)
                if outcome is not None:
                    return outcome
                continue
            if trainer.handle.poll() is not None and not drained:
                drained = True  # one more look: a result published just before the exit
                continue
            self._check_running(trainer, "without sending a result")
            if time.monotonic() >= deadline:
                raise _Failed(self._timed_out())

    def _wait_exit(self, trainer: TrainerProcess) -> None:
        """Give a script that closed its pipe a moment to exit, so its exit code is known."""
        trainer.handle.wait(min(self._grace, 5.0))

    def _end(
        self, site: str, *, report: bool = False, patient: bool | None = None
    ) -> ScriptError | None:
        """Tell the site's process `end`, let it exit within grace, then stop it; close the pipe.

        Returns how it ended if that was bad (non-zero, killed, or it had to be
        stopped); with `report`, also hands that to `on_script_error` unless
        the executor is stopping. `patient` (default: `report`): the script
        is expected to end by itself, so it gets the grace period even if it
        cannot be told `end` (it may be closing already); otherwise such a
        script (one that never opened its end, or failed) is stopped at once.
        """
        patient = report if patient is None else patient
        trainer = self._trainers.pop(site, None)
        if trainer is None:
            return None
        number = trainer.number
        # A `stop` that comes while this end is under way cuts its wait short; the
        # end that `stop` itself brings is told `end` and gets the grace period.
        cut = threading.Event() if self._stopping.is_set() else self._stopping
        stopped = trainer.end(site, self._grace, patient=patient, stopping=cut)
        code = trainer.handle.poll()
        ended = "exit code unknown" if code is None else describe_exit(code)
        if not stopped and code == 0:
            log.info("%s: training process %d ended (%s)", site, number, ended)
            return None
        what = ended
        if stopped:
            what = f"did not exit within {self._grace:g} s of end and was stopped ({ended})"
        error = ScriptError(site, trainer.last_round, code, last_line(trainer.stderr_tail()), what)
        if not report or self._stopping.is_set():
            log.info("%s: training process %d ended (%s)", site, number, what)
        elif self.on_script_error is None:
            log.warning("%s", error.describe())
        else:
            self.on_script_error(error)
        return error

"""The simulator: a whole federation in one process.

Every part is the real runtime: a cell tree (`server`, `server.<job>`,
`site-N`, `site-N.<job>`) over a transport plugin, the server job runner
driving the workflow plugin, and a client job runner per site whose
training script runs on a bounded pool of worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.timer import Timer
from fl_core.config import JobConfig, LaunchMode
from fl_core.errors import ConfigError, FlCoreError, JobFailedError
from fl_core.model import FLModel, load_params, save_params
from fl_core.roles.client_job.executors import TaskExecutor
from fl_core.roles.client_job.process import ExecutorFactory
from fl_core.roles.client_job.runner import ClientRunner
from fl_core.roles.protocol.parent import JobState
from fl_core.roles.protocol.script_errors import ScriptError
from fl_core.roles.server_job.results import SiteFailure
from fl_core.roles.server_job.runner import EventSink, ServerRunner
from fl_core.spec.events import Events
from fl_core.spec.transport import Transport
from fl_core.spec.workflow import Workflow

log = logging.getLogger(__name__)

MODE = "simulator"
ONCE_THREAD_WARNING = 256
FINAL_MODEL_FILE = "final_model.npz"
SUMMARY_FILE = "summary.json"
LOG_FILE = "log.txt"


@dataclass
class SimulationResult:
    """The outcome of a simulator run."""

    job_id: str
    workspace: Path
    status: str
    reason: str = ""
    final_model: FLModel | None = None
    metrics: list[dict[str, object]] = field(default_factory=list)
    failures: dict[str, SiteFailure] = field(default_factory=dict)
    script_errors: list[ScriptError] = field(default_factory=list)
    """Scripts that ended badly with no task to fail (after their result, or at the end)."""
    elapsed: float = 0.0


def site_names(count: int) -> list[str]:
    """The default names of `count` simulated sites: site-1 ... site-N."""
    return [f"site-{i}" for i in range(1, count + 1)]


class Simulator:
    """Runs one job with `clients` sites in this process.

    Every cell shares `transport`: the in-process one by default, or any
    other (tcp, grpc, a third party's) over loopback, listening on
    `{scheme}://127.0.0.1:0`. `executors` builds the job's task executor,
    `events` fires the notification hooks.
    """

    def __init__(
        self,
        job: JobConfig,
        *,
        transport: Transport,
        scheme: str,
        workflow: Workflow,
        executors: ExecutorFactory,
        events: Events,
        clients: int,
        threads: int,
        workspace: Path,
        on_event: EventSink | None = None,
        join_timeout: float = 60.0,
    ) -> None:
        if clients < job.min_clients:
            raise ConfigError(
                "--clients", "", f"{clients} sites is fewer than min_clients {job.min_clients}"
            )
        if threads < 1:
            raise ConfigError("--threads", "", f"must be at least 1, got {threads}")
        if job.executor.launch is LaunchMode.ONCE and clients > ONCE_THREAD_WARNING:
            log.warning(
                "launch: once keeps one thread per site: %d sites mean %d threads; "
                "consider launch: per_task",
                clients,
                clients,
            )
        self.job = job
        self.transport = transport
        self.scheme = scheme
        self.workflow = workflow
        self.executors = executors
        self.events = events
        self.clients = clients
        self.threads = threads
        self.workspace = workspace
        self.on_event = on_event
        self.join_timeout = join_timeout
        self.job_id = uuid.uuid4().hex[:8]
        self._server: ServerRunner | None = None
        self._abort_reason: str | None = None

    def initial_model(self) -> FLModel:
        """The job's initial model (empty params if the job names none)."""
        if self.job.initial_model is None:
            return FLModel()
        return FLModel(params=load_params(self.job.initial_model))

    def abort(self, reason: str) -> None:
        """Stop the run from another thread (Ctrl-C); safe at any moment."""
        self._abort_reason = reason
        if self._server is not None:
            self._server.abort(reason)

    def run(self) -> SimulationResult:
        """Run the job to its end; never raises for a failed job, returns its status."""
        start = time.monotonic()
        self.workspace.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.workspace / LOG_FILE)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
        )
        root = logging.getLogger()
        saved_level = root.level
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        result = SimulationResult(self.job_id, self.workspace, JobState.FAILED)
        try:
            self._run(result)
        finally:
            result.elapsed = time.monotonic() - start
            self._write_summary(result)
            root.removeHandler(handler)
            root.setLevel(saved_level)
            handler.close()
        return result

    def _run(self, result: SimulationResult) -> None:
        job = self.job
        resources = CellResources(
            dispatcher=ThreadPoolExecutor(
                max(4, min(self.threads, 16)), thread_name_prefix="fl-cell"
            ),
            timer=Timer(),
        )
        cells: list[Cell] = []
        runners: dict[str, ClientRunner] = {}
        server: ServerRunner | None = None
        executor: TaskExecutor | None = None
        saved_argv, saved_path = list(sys.argv), list(sys.path)
        known_modules = set(sys.modules)
        try:
            self.events.job_started(job_id=self.job_id, mode=MODE)
            # Job arguments are the same for every site, so the process-wide
            # argv can carry them for scripts that parse sys.argv.
            sys.argv = [str(job.executor.script), *job.executor.args]
            sys.path.insert(0, str(job.job_dir))
            root_cell = self._cell("server", None, resources, cells)
            server_url = root_cell.listen(self._any_address())
            server_job = self._cell(f"server.{self.job_id}", server_url, resources, cells)
            server = ServerRunner(
                server_job,
                self.job_id,
                self.workspace,
                self.workflow,
                site_names(self.clients),
                on_event=self.on_event,
                fail_on_script_error=job.executor.fail_on_script_error,
            )
            self._server = server
            if self._abort_reason is not None:
                server.abort(self._abort_reason)
            executor = self.executors(
                job_id=self.job_id,
                workspace=self.workspace,
                logs=lambda site, key, value, step: runners[site].send_log(key, value, step),
                timer=resources.timer,
                threads=self.threads,
                on_script_error=lambda error: runners[error.site].report_script_error(error),
            )
            for site in site_names(self.clients):
                parent = self._cell(site, server_url, resources, cells)
                site_url = parent.listen(self._any_address())
                cell = self._cell(f"{site}.{self.job_id}", site_url, resources, cells)
                runners[site] = ClientRunner(cell, site, server_job.fqcn, executor)
            for client in runners.values():
                client.start()
            server.wait_for_sites(self.clients, self.join_timeout)
            log.info("job %s: %d sites joined", self.job_id, self.clients)
            final = server.run(self.initial_model())
            result.status = JobState.FINISHED
            result.final_model = final
            save_params(self.workspace / FINAL_MODEL_FILE, final.params)
        except Exception as exc:
            if not isinstance(exc, FlCoreError):
                log.exception("job %s: unexpected error", self.job_id)
            result.status = JobState.FAILED
            result.reason = exc.reason if isinstance(exc, JobFailedError) else _describe(exc)
        finally:
            if self._abort_reason is not None and result.status != JobState.FINISHED:
                result.status = JobState.ABORTED
                result.reason = self._abort_reason
            if server is not None:
                result.metrics = server.record.metrics
                result.failures = server.record.failures
                result.script_errors = server.record.script_errors
            self._shut_down(server, executor, runners, result)
            sys.argv[:] = saved_argv
            sys.path[:] = saved_path
            _forget_job_modules(job.job_dir, known_modules)
            for cell in reversed(cells):
                cell.close()
            resources.close()
            self.transport.close()
            self.events.job_finished(
                job_id=self.job_id, mode=MODE, status=result.status, reason=result.reason
            )

    def _any_address(self) -> str:
        # Port 0: any free address of the transport on this machine.
        return f"{self.scheme}://127.0.0.1:0"

    def _shut_down(
        self,
        server: ServerRunner | None,
        executor: TaskExecutor | None,
        runners: dict[str, ClientRunner],
        result: SimulationResult,
        grace: float = 5.0,
    ) -> None:
        """End every site's work within one shared `grace` period."""
        deadline = time.monotonic() + grace
        if server is not None:
            server.end()
        for client in runners.values():
            client.stop()
        if executor is not None:
            busy = executor.stop(f"job {result.status}", grace)
            if busy:
                log.warning("training scripts still running after the job ended: %s", busy)
        for client in runners.values():
            if not client.done.wait(max(0.0, deadline - time.monotonic())):
                log.warning("%s did not finish", client.site)

    def _cell(
        self, name: str, parent_url: str | None, resources: CellResources, cells: list[Cell]
    ) -> Cell:
        cell = Cell(name, self.transport, resources)
        cells.append(cell)
        if parent_url is not None:
            cell.connect_parent(parent_url)
        return cell

    def _write_summary(self, result: SimulationResult) -> None:
        summary = {
            "job": self.job.name,
            "job_id": result.job_id,
            "mode": MODE,
            "status": result.status,
            "reason": result.reason,
            "clients": self.clients,
            "rounds": self.job.rounds,
            "elapsed_s": round(result.elapsed, 3),
            "final_model": FINAL_MODEL_FILE if result.final_model is not None else None,
            "failures": {
                site: {"round": f.round_number, "reason": f.reason, "traceback": f.detail}
                for site, f in result.failures.items()
            },
            "script_errors": [error.summary() for error in result.script_errors],
        }
        path = self.workspace / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2) + "\n")


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FlCoreError) else f"{type(exc).__name__}: {exc}"


def _forget_job_modules(job_dir: Path, known: set[str]) -> None:
    """Drop modules imported from the job folder, so the next job imports its own."""
    root = str(job_dir.resolve())
    for name in set(sys.modules) - known:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and os.path.abspath(path).startswith(root + os.sep):
            del sys.modules[name]


def run_with_interrupt(simulator: Simulator) -> SimulationResult:
    """Run in a worker thread so Ctrl-C in the main thread aborts cleanly.

    A first Ctrl-C aborts the job and waits for it to wind down; a second
    one gives up waiting.
    """
    box: dict[str, SimulationResult | BaseException] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            box["result"] = simulator.run()
        except BaseException as exc:
            box["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=target, name="fl-simulator", daemon=True).start()
    # An Event, not Thread.join: on Python 3.11 a KeyboardInterrupt inside
    # join() can leave the thread marked as finished while it still runs.
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        simulator.abort("interrupted (Ctrl-C)")
        while not finished.wait(0.2):
            pass
    error = box.get("error")
    if isinstance(error, BaseException):
        raise error
    outcome = box["result"]
    assert isinstance(outcome, SimulationResult)
    return outcome


__all__ = ["SimulationResult", "Simulator", "run_with_interrupt", "site_names"]

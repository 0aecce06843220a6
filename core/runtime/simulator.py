"""The simulator: a whole federation in one process.

Every part is the real runtime: a cell tree (`server`, `server.<job>`,
`site-N`, `site-N.<job>`) over a transport plugin, the server job runner
driving the workflow plugin, and a client job runner per site whose
training script runs on a bounded pool of worker threads.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.timer import Timer
from fl_core.config import JobConfig, LaunchMode
from fl_core.errors import ConfigError, FlCoreError, JobFailedError
from fl_core.model import FLModel, load_params, save_params
from fl_core.plugins import PluginManager
from fl_core.runtime.client_runner import ClientRunner
from fl_core.runtime.executor import InProcessExecutor
from fl_core.runtime.server_runner import EventSink, ServerRunner, SiteFailure
from fl_core.spec.security import SecurityProvider
from fl_core.spec.transport import Transport
from fl_core.spec.workflow import Workflow

log = logging.getLogger(__name__)

MODE = "simulator"
FINAL_MODEL_FILE = "final_model.npz"
SUMMARY_FILE = "summary.json"
LOG_FILE = "log.txt"


class JobStatus(enum.StrEnum):
    """How a run ended."""

    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"


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
    elapsed: float = 0.0


def site_names(count: int) -> list[str]:
    """The default names of `count` simulated sites: site-1 ... site-N."""
    return [f"site-{i}" for i in range(1, count + 1)]


class Simulator:
    """Runs one job with `clients` sites in this process."""

    def __init__(
        self,
        job: JobConfig,
        *,
        transport: Transport,
        security: SecurityProvider,
        workflow: Workflow,
        plugin_manager: PluginManager,
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
        if job.executor.launch is LaunchMode.ONCE and threads < clients:
            raise ConfigError(
                str(job.source),
                "executor.launch",
                f"`once` keeps one thread per site for the whole job, but --threads {threads} "
                f"< --clients {clients}; use `launch: per_task` or raise --threads",
            )
        self.job = job
        self.transport = transport
        self.security = security
        self.workflow = workflow
        self.pm = plugin_manager
        self.clients = clients
        self.threads = threads
        self.workspace = workspace
        self.on_event = on_event
        self.join_timeout = join_timeout
        self.job_id = uuid.uuid4().hex[:8]
        self._server: ServerRunner | None = None

    def initial_model(self) -> FLModel:
        """The job's initial model (empty params if the job names none)."""
        if self.job.initial_model is None:
            return FLModel()
        return FLModel(params=load_params(self.job.initial_model))

    def abort(self, reason: str) -> None:
        """Stop the run from another thread (Ctrl-C)."""
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
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        result = SimulationResult(self.job_id, self.workspace, JobStatus.FAILED)
        try:
            self._run(result)
        finally:
            result.elapsed = time.monotonic() - start
            self._write_summary(result)
            root.removeHandler(handler)
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
        workers = ThreadPoolExecutor(self.threads, thread_name_prefix="fl-site")
        cells: list[Cell] = []
        runners: dict[str, ClientRunner] = {}
        saved_argv, saved_path = list(sys.argv), list(sys.path)
        # Job arguments are the same for every site, so the process-wide argv
        # can carry them for scripts that parse sys.argv.
        sys.argv = [str(job.executor.script), *job.executor.args]
        sys.path.insert(0, str(job.job_dir))
        self.pm.hook.fl_core_job_started(job_id=self.job_id, mode=MODE)
        try:
            server = self._cell("server", None, resources, cells)
            server_url = server.listen(f"inprocess://{self.job_id}-server")
            server_job = self._cell(f"server.{self.job_id}", server_url, resources, cells)
            runner = ServerRunner(
                server_job,
                self.job_id,
                self.workspace,
                self.workflow,
                on_event=self.on_event,
            )
            self._server = runner
            executor = InProcessExecutor(
                job.executor.script,
                job.executor.launch,
                workers,
                self.job_id,
                lambda site, key, value, step: runners[site].send_log(key, value, step),
            )
            for site in site_names(self.clients):
                parent = self._cell(site, server_url, resources, cells)
                site_url = parent.listen(f"inprocess://{self.job_id}-{site}")
                cell = self._cell(f"{site}.{self.job_id}", site_url, resources, cells)
                runners[site] = ClientRunner(
                    cell,
                    site,
                    server_job.fqcn,
                    executor,
                    task_timeout=job.executor.task_timeout,
                )
            for client in runners.values():
                client.start()
            runner.wait_for_sites(self.clients, self.join_timeout)
            log.info("job %s: %d sites joined", self.job_id, self.clients)
            try:
                final = runner.run(self.initial_model())
            except JobFailedError as exc:
                result.status = JobStatus.ABORTED if runner.aborted() else JobStatus.FAILED
                result.reason = exc.reason
            else:
                result.status = JobStatus.FINISHED
                result.final_model = final
                save_params(self.workspace / FINAL_MODEL_FILE, final.params)
            finally:
                result.metrics = runner.record.metrics
                result.failures = runner.record.failures
            executor.stop()
            for client in runners.values():
                client.stop()
                if not client.done.wait(10):
                    log.warning("%s did not finish", client.site)
        except FlCoreError as exc:
            result.status = JobStatus.FAILED
            result.reason = result.reason or str(exc)
        finally:
            sys.argv[:] = saved_argv
            sys.path[:] = saved_path
            for cell in reversed(cells):
                cell.close()
            workers.shutdown(wait=False, cancel_futures=True)
            resources.close()
            self.transport.close()
            self.pm.hook.fl_core_job_finished(
                job_id=self.job_id, mode=MODE, status=result.status, reason=result.reason
            )

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
        }
        path = self.workspace / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2) + "\n")


def run_with_interrupt(
    simulator: Simulator, run: Callable[[], SimulationResult]
) -> SimulationResult:
    """Run in a worker thread so Ctrl-C in the main thread aborts cleanly."""
    box: dict[str, SimulationResult | BaseException] = {}

    def target() -> None:
        try:
            box["result"] = run()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="fl-simulator", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        simulator.abort("interrupted (Ctrl-C)")
        thread.join()
    error = box.get("error")
    if isinstance(error, BaseException):
        raise error
    outcome = box["result"]
    assert isinstance(outcome, SimulationResult)
    return outcome


__all__ = ["JobStatus", "SimulationResult", "Simulator", "run_with_interrupt", "site_names"]

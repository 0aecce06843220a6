"""The client parent (CP, cell `<site>`): keeps a site in the federation and runs its jobs.

It connects to the server parent (reconnecting if that restarts), beats
every `heartbeat_interval` (the beat also registers it, so a restarted
server learns the site again), listens for its own client jobs, and obeys
`deploy` / `start_job` / `abort_job` / `shutdown` from the server parent
and from no one else (see `fl_core.roles.protocol.parent`). It proves its site's
secret when it joins the server parent, which proves the same back, and
admits as children only the client jobs it started, each proving its job's
token. Each client job runs in a process of its own,
started through the launcher; when one exits, the server parent hears of
it at once with its exit code. It never holds a model: the client job links
directly to its server job (or, without that link, its traffic passes
through here as relayed frames).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fl_core.audit import AUDIT_FILE, AuditLog
from fl_core.cell.cell import DEFERRED, Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.cell.proof import AdmissionRefused
from fl_core.config.federation import FederationConfig
from fl_core.config.job import JobConfig, load_job
from fl_core.config.site import DEFAULT_LAUNCHER, SITE_FILE, SiteConfig
from fl_core.credentials import read_secret
from fl_core.errors import CellError, FlCoreError
from fl_core.pids import StatusFile, describe_exit, read_tail
from fl_core.roles.client_parent.admin_requests import SiteDecisions
from fl_core.roles.protocol.job_package import unpack_job
from fl_core.roles.protocol.parent import ABORT_GRACE, DIRECT_TOKEN_ENV, Field, ParentTopic
from fl_core.roles.protocol.signed_job import verify_job
from fl_core.roles.protocol.signed_request import SITE_LOGS
from fl_core.spec.launcher import JobHandle, Launcher, LaunchSpec, ProcessType
from fl_core.spec.security import Identity, SecurityProvider
from fl_core.spec.transport import Transport

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 10.0


@dataclass
class _Job:
    job_id: str
    handle: JobHandle
    log_file: Path
    token: str
    """What the client job proves when it joins this client parent (see `direct_token`)."""
    aborting: bool = False


ERROR_TAIL = 64 * 1024
"""Bytes at the end of a failed client job's log searched for its `error:` line."""


def _last_error(log_file: Path) -> str:
    """The last `error: ...` line a job process wrote to its log (what it failed on), or ""."""
    tail = read_tail(log_file, ERROR_TAIL)
    errors = [line[len("error: ") :] for line in tail.splitlines() if line.startswith("error: ")]
    return errors[-1][:1000] if errors else ""


def _job_id(value: object) -> str:
    text = str(value or "")
    if not text or not all(c.isalnum() or c in "-_" for c in text) or len(text) > 64:
        raise FlCoreError(f"not a job id: {text!r}")
    return text


def _from_server(handler: Callable[[Message], object]) -> Callable[[Message], object]:
    """`handler`, served to the server parent only: it alone commands a client parent."""

    def guarded(message: Message) -> object:
        if message.origin != "server":  # the cell logs the refusal as a warning
            raise FlCoreError(f"{message.origin} may not command a client parent")
        return handler(message)

    return guarded


class ClientEngine:
    """Runs the client parent of one site."""

    def __init__(
        self,
        config: FederationConfig,
        site: str,
        transport: Transport,
        launcher: Launcher,
        *,
        python: str = sys.executable,
        site_config: SiteConfig | None = None,
        security: SecurityProvider | None = None,
    ) -> None:
        proved = security is not None and security.proves_names
        # With certificates any site the CA certified may join: there is no fixed list.
        if site not in config.sites and not proved:
            raise FlCoreError(
                f"{site!r} is not a site of federation {config.name} "
                f"(sites: {', '.join(config.sites)})"
            )
        self.config = config
        self.site = site
        self.transport = transport
        self.launcher = launcher
        self.python = python
        self.workspace = config.site_dir(site)
        self.site_config = site_config or SiteConfig(self.workspace / SITE_FILE)
        """What this site allows, whatever the server asks (its own `site.yaml`)."""
        self.security = security
        self.audit = AuditLog(self.workspace / AUDIT_FILE)
        self._status = StatusFile(self.workspace)  # what `fl-core status KIT` shows
        self.decisions = SiteDecisions(site, security, self.audit)
        """What this site decides itself about an admin's signed abort or logs request."""
        # Read now: a site without its credential must not start at all.
        self._key = None if proved else read_secret(config.site_key_file(site))
        self.cell = Cell(site, transport)
        if security is not None:
            self.cell.links.check_peers(security.admit)
        self.cell.require_proof(self._key_of)
        self.url = ""
        self.server_url = ""
        self.interval = config.server.heartbeat_interval
        self.moved = threading.Event()
        """Set when the server parent answers no more and its URL file names another URL:
        it restarted on a new port, and this engine must be replaced by one that joins it
        there (the cell's own reconnect only retries the old URL)."""
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        for topic, handler in (
            (ParentTopic.DEPLOY, self._on_deploy),
            (ParentTopic.START_JOB, self._on_start_job),
            (ParentTopic.ABORT_JOB, self._on_abort_job),
            (ParentTopic.SHUTDOWN, self._on_shutdown),
            (SITE_LOGS, self._on_logs),
        ):
            self.cell.register_handler(Channel.CLIENT_MAIN, topic, _from_server(handler))

    def _key_of(self, name: str) -> bytes:
        """Only the client job of a job this site started joins, proving its token."""
        site, _, job_id = name.partition(".")
        with self._lock:
            job = self._jobs.get(job_id) if site == self.site else None
        if job is None or not job.token:
            raise AdmissionRefused(f"{name!r} is not a client job that {self.site} started")
        return job.token.encode()

    def job_dir(self, job_id: str) -> Path:
        """Where a job of this site lives: `job/` (the package), `workspace/`, `log.txt`."""
        return self.workspace / "jobs" / job_id

    # --- life ----------------------------------------------------------------------

    def start(self, server_url: str, timeout: float | None = None) -> None:
        """Listen for client jobs, connect to the server parent, register.

        `timeout` bounds each attempt to connect, now and when the cell reconnects
        later; by default `heartbeat_timeout`: a server that does not answer for that
        long is as gone as a silent site, and `stop` waits for a pending attempt.
        """
        if timeout is None:
            timeout = self.config.server.heartbeat_timeout
        scheme = server_url.split("://", 1)[0]
        self.url = self.cell.listen(f"{scheme}://127.0.0.1:0")
        self.server_url = server_url
        self.cell.connect_parent(server_url, timeout, key=self._key)
        self._beat()  # registered before start() returns, or it raises
        for name, target in (("fl-heartbeat", self._heartbeats), ("fl-jobs", self._watch_jobs)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("%s: client parent up, listening for its jobs on %s", self.site, self.url)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until `stop`, the server's shutdown or its move; True if stopped or moved."""
        return self._stopping.wait(timeout) or self.moved.is_set()

    def stop(self, reason: str = "the client parent stopped") -> None:
        """Stop every client job and close the cell."""
        first = not self._stopping.is_set()
        self._stopping.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self._stop_job(job, reason)
        if first:
            self.cell.close()

    # --- heartbeats ---------------------------------------------------------------------

    def _beat(self) -> None:
        with self._lock:
            jobs = sorted(self._jobs)
        reply = self.cell.request(
            "server",
            Channel.SERVER_MAIN,
            ParentTopic.HEARTBEAT,
            {Field.SITE: self.site, Field.URL: self.url, Field.PID: os.getpid(), Field.JOBS: jobs},
            max(2 * self.interval, 5.0),
        )
        if isinstance(reply.payload, dict):
            interval = reply.payload.get(Field.HEARTBEAT_INTERVAL)
            if isinstance(interval, int | float) and interval > 0:
                self.interval = float(interval)

    def _heartbeats(self) -> None:
        failing = False
        while not self._stopping.wait(self.interval):
            with self._lock:
                jobs = sorted(self._jobs)
            self._status.write({"server": self.server_url, "connected": not failing, "jobs": jobs})
            try:
                self._beat()
                if failing:
                    log.info("%s: the server parent answers again", self.site)
                failing = False
            except CellError as exc:
                if not failing:
                    log.warning("%s: heartbeat failed (will retry): %s", self.site, exc)
                failing = True
                if self._server_moved():
                    return

    def _server_moved(self) -> bool:
        """True (and `moved` set) if the URL file names a server other than ours."""
        try:
            url = self.config.url_file.read_text().strip()
        except OSError:
            return False  # no file (yet, or not on this machine): keep retrying ours
        if not url or url == self.server_url:
            return False
        log.warning("%s: the server parent moved to %s; joining it there", self.site, url)
        self.moved.set()
        return True

    # --- jobs ------------------------------------------------------------------------------

    def _on_deploy(self, message: Message) -> object:
        job_id = _job_id(message.get(Field.JOB_ID))
        if not isinstance(message.payload, bytes | bytearray | memoryview):
            raise FlCoreError(f"job {job_id}: the package must be bytes")
        with self._lock:
            if job_id in self._jobs:
                raise FlCoreError(f"job {job_id} is running on {self.site}")
        folder = self.job_dir(job_id)
        target = folder / "job"
        if target.exists():
            shutil.rmtree(target)
        folder.mkdir(parents=True, exist_ok=True)
        unpack_job(bytes(message.payload), target)
        job = load_job(target)
        try:
            refusal = self.site_config.refusal(job)
            signer = None
            if refusal is None and self.security is not None:
                # This site's own check of the admin's signature and its own policy:
                # what the server says is not trusted for either.
                signer, _ = verify_job(self.security, message.headers, target, job.name)
                refusal = self._policy_refusal(signer, job, target) or None
        except FlCoreError as exc:
            refusal = str(exc)
        if refusal is not None:
            shutil.rmtree(target, ignore_errors=True)
            log.warning("%s: refused job %s: %s", self.site, job_id, refusal)
            self.audit.record(message.origin, "deploy", f"job {job_id}", f"refused: {refusal}")
            raise FlCoreError(f"{self.site} refused job {job_id}: {refusal}")
        self.audit.record(signer or message.origin, "deploy", f"job {job_id}", "accepted")
        self.decisions.record_owner(folder, signer)  # whose job it is, for this site's policy
        log.info("%s: job %s deployed", self.site, job_id)
        return {}

    def _policy_refusal(self, signer: Identity | None, job: JobConfig, folder: Path) -> str:
        """Why this site's policy will not run `job` signed by `signer`, or ""."""
        if signer is None or self.security is None:
            return ""
        asks = ["run_job"]
        if any(folder.rglob("*.py")):
            asks.append("byoc")  # the job brings code of its own
        choice = job.components.get("launcher")
        asks.append(f"launcher:{choice.name if choice is not None else DEFAULT_LAUNCHER}")
        for action in asks:
            reason = self.security.authorize(signer, action)
            if reason:
                return reason
        return ""

    def _on_start_job(self, message: Message) -> object:
        data = message.payload if isinstance(message.payload, dict) else {}
        job_id = _job_id(data.get(Field.JOB_ID))
        folder = self.job_dir(job_id)
        if not (folder / "job").is_dir():
            raise FlCoreError(f"job {job_id} was not deployed to {self.site}")
        workspace = folder / "workspace"
        argv = [
            self.python,
            "-m",
            "fl_core.processes.main",
            "client-job",
            str(self.config.source),
            self.site,
            job_id,
            str(folder / "job"),
            str(workspace),
            "--parent-url",
            self.url,
        ]
        with self._lock:
            if job_id in self._jobs:
                raise FlCoreError(f"job {job_id} is already running on {self.site}")
            token = str(data.get(Field.TOKEN) or "")
            if not token:
                raise FlCoreError(f"job {job_id}: start_job carries no token for its client job")
            log_file = folder / "log.txt"
            handle = self.launcher.launch(
                LaunchSpec(
                    job_id,
                    ProcessType.CLIENT_JOB,
                    argv,
                    workspace,
                    log_file,
                    {DIRECT_TOKEN_ENV: token},
                )
            )
            self._jobs[job_id] = _Job(job_id, handle, log_file, token)
        log.info("%s: client job %s started", self.site, job_id)
        return {Field.PID: getattr(handle, "pid", 0)}

    def _on_abort_job(self, message: Message) -> object:
        data = message.payload if isinstance(message.payload, dict) else {}
        job_id = _job_id(data.get(Field.JOB_ID))
        reason = str(data.get(Field.REASON) or "aborted")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return {}
        refusal = self.decisions.abort_refusal(message, job_id, self.job_dir(job_id), reason)
        if refusal:
            log.warning("%s: refused to abort job %s: %s", self.site, job_id, refusal)
            raise FlCoreError(f"{self.site} refused to abort job {job_id}: {refusal}")

        def stop_and_reply() -> None:
            self._stop_job(job, reason)
            try:
                self.cell.reply(message, {})
            except CellError as exc:
                log.info("%s: abort of %s: the server is gone: %s", self.site, job_id, exc)

        threading.Thread(target=stop_and_reply, name="fl-abort", daemon=True).start()
        return DEFERRED

    def _stop_job(self, job: _Job, reason: str) -> None:
        job.aborting = True
        if job.handle.poll() is None:
            try:
                self.cell.fire(
                    f"{self.site}.{job.job_id}",
                    Channel.CLIENT_COMMAND,
                    ParentTopic.ABORT,
                    {Field.REASON: reason},
                )
            except CellError:
                pass  # not connected: terminate below stops it
            if job.handle.wait(1.0) is None:
                job.handle.terminate(ABORT_GRACE)

    def _watch_jobs(self) -> None:
        """Report every client job that exits, with its code."""
        while not self._stopping.wait(0.1):
            with self._lock:
                ended = [(j, j.handle.poll()) for j in self._jobs.values()]
                ended = [(j, code) for j, code in ended if code is not None]
                for job, _ in ended:
                    del self._jobs[job.job_id]
            for job, code in ended:
                assert code is not None
                reason = ""
                if code != 0 and not job.aborting:
                    reason = f"the client job of {self.site} {describe_exit(code)}"
                    if error := _last_error(job.log_file):
                        reason += f": {error}"
                log.info("%s: client job %s %s", self.site, job.job_id, describe_exit(code))
                self._report_exit(job.job_id, code, reason)

    def _report_exit(self, job_id: str, code: int, reason: str) -> None:
        payload = {
            Field.SITE: self.site,
            Field.JOB_ID: job_id,
            Field.EXIT_CODE: code,
            Field.REASON: reason,
        }
        deadline = time.monotonic() + REPORT_TIMEOUT
        while not self._stopping.is_set():
            try:
                self.cell.request(
                    "server",
                    Channel.SERVER_MAIN,
                    ParentTopic.CLIENT_JOB_EXITED,
                    payload,
                    REPORT_TIMEOUT,
                )
                return
            except CellError as exc:
                if time.monotonic() > deadline:
                    log.warning("%s: could not report the end of %s: %s", self.site, job_id, exc)
                    return
                time.sleep(0.2)

    def _on_logs(self, message: Message) -> object:
        data = message.payload if isinstance(message.payload, dict) else {}
        job_id = _job_id(data.get(Field.JOB_ID))
        return self.decisions.logs(message, job_id, self.job_dir(job_id))

    def _on_shutdown(self, message: Message) -> object:
        threading.Thread(
            target=self.stop, args=("the federation is shutting down",), daemon=True
        ).start()
        return {}

"""The server parent (SP, cell `server`): sites, the job store, and the job runner.

It never holds a model: job packages go to the sites as bytes, and models
travel between job processes over their direct links (or, without one,
through it as relayed frames).

- Sites register through their heartbeats (a heartbeat from an unknown
  site registers it, so a restarted server parent learns its sites again
  at their next beat). A site silent for `heartbeat_timeout` is dead: it
  leaves every running job, whose server job hears `site_lost` at once.
- Jobs are kept in the `JobStore` on disk. A submitted job waits until
  `min_clients` sites are alive and fewer than `max_jobs` jobs run; then it
  is deployed to every alive site, its server job is launched through the
  launcher, and every site is told to start its client job. A thread per
  running job watches its server job process and records how it ended.
- The protocol is in `fl_core.roles.protocol.parent`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from fl_core.audit import AUDIT_FILE, AuditLog
from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.config.federation import FederationConfig
from fl_core.credentials import read_secret
from fl_core.errors import FlCoreError
from fl_core.pids import StatusFile, describe_exit
from fl_core.roles.protocol.parent import (
    ABORT_GRACE,
    ADMIN_PREFIX,
    Field,
    JobState,
    ParentTopic,
    job_key,
    json_int,
    json_object,
)
from fl_core.roles.server_parent.job_run import JobDriver, JobRun
from fl_core.roles.server_parent.job_store import (
    KEPT_ROUND_TIMES,
    CorruptJob,
    JobCheck,
    JobRecord,
    JobStore,
    UnknownJobError,
)
from fl_core.spec.launcher import Launcher
from fl_core.spec.security import AdmissionRefused, Identity, SecurityProvider
from fl_core.spec.transport import Transport

log = logging.getLogger(__name__)

_Handler = Callable[[Message], object]
_ACTIVE = (JobState.DEPLOYING, JobState.RUNNING)


@dataclass
class SiteInfo:
    """A client parent the server knows."""

    site: str
    url: str
    pid: int
    last_seen: float
    jobs: list[str] = field(default_factory=list)


class ServerEngine:
    """Runs the server parent of one federation."""

    def __init__(
        self,
        config: FederationConfig,
        transport: Transport,
        launcher: Launcher,
        *,
        security: SecurityProvider,
        python: str = sys.executable,
        check_job: JobCheck | None = None,
    ) -> None:
        self.config = config
        self.security = security
        """Proves who joins (`admit`) and decides each admin action (`authorize`)."""
        self.audit_log = AuditLog(config.server_dir / AUDIT_FILE)
        self._status = StatusFile(config.server_dir)  # what `fl-core status KIT` shows
        self.check_job = check_job
        """What `fl-core job check` runs, against this server's plugins; run at submit."""
        self.transport = transport
        self.launcher = launcher
        self.python = python
        self.settings = config.server
        self.store = JobStore(config.server_dir / "jobs")
        # Read now: a POC without its credentials must not start at all. Where
        # certificates prove names (production), there are no shared secrets.
        self._admin_key = b""
        self._site_keys: dict[str, bytes] = {}
        if not security.proves_names:
            self._admin_key = read_secret(config.server_key_file("admin"))
            self._site_keys = {s: read_secret(config.server_key_file(s)) for s in config.sites}
        self.cell = Cell("server", transport)
        self.cell.links.check_peers(self._admit)
        self.cell.require_proof(self._key_of)
        self.url = ""
        self.driver = JobDriver(
            config, self.cell, self.store, launcher, lambda: on_this_host(self.url), python=python
        )
        self._lock = threading.Lock()
        self._sites: dict[str, SiteInfo] = {}
        self._running: dict[str, JobRun] = {}
        self._wake = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._waiting: dict[str, float] = {}  # job id -> since when it has lacked sites
        handlers = {
            (Channel.SERVER_MAIN, ParentTopic.HEARTBEAT): self._on_heartbeat,
            (Channel.SERVER_MAIN, ParentTopic.REGISTER): self._on_heartbeat,
            (Channel.SERVER_MAIN, ParentTopic.CLIENT_JOB_EXITED): self._on_client_job_exited,
            (Channel.SERVER_PARENT_LISTENER, ParentTopic.JOB_STATUS): self._on_job_status,
        }
        for (channel, topic), handler in handlers.items():
            self.cell.register_handler(channel, topic, handler)
        from fl_core.roles.server_parent.admin import AdminService

        self.admin = AdminService(self)

    # --- life ------------------------------------------------------------------------

    def start(self) -> str:
        """Listen, recover the job store, start the scheduler; returns the URL."""
        for record in self.store.recover():
            log.warning("job %s marked failed: %s", record.job_id, record.reason)
        self.store.entries()  # logs each corrupt record once, now rather than at a list
        self.url = self.cell.listen(self.settings.listen)
        self.config.server_dir.mkdir(parents=True, exist_ok=True)
        url_file = self.config.url_file
        tmp = url_file.with_name(url_file.name + ".tmp")
        tmp.write_text(self.url + "\n")
        tmp.replace(url_file)
        for name, target in (("fl-scheduler", self._schedule), ("fl-heartbeats", self._watch)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("server parent of %s listening on %s", self.config.name, self.url)
        return self.url

    def wait(self, timeout: float | None = None) -> bool:
        """Block until `stop` (or an admin's shutdown); True if it stopped."""
        return self._stopping.wait(timeout)

    def stop(self, reason: str = "the server parent stopped") -> None:
        """Abort every running job, wait for their processes, close the cell."""
        first = not self._stopping.is_set()
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
            running = list(self._running.values())
        for job in running:
            # Not an admin's abort: the job is cut short, so it failed, with the reason.
            self.driver.abort(job, reason, JobState.FAILED)
        for job in running:
            job.done.wait(ABORT_GRACE * 3)
        if first:
            try:
                self.config.url_file.unlink(missing_ok=True)
            except OSError:
                pass
            self.cell.close()

    def audit(self, who: object, action: str, target: str, result: str) -> None:
        """Append one line to the server's `audit.jsonl`."""
        self.audit_log.record(who, action, target, result)

    def _admit(self, certificate: bytes | None, name: str) -> Identity:
        try:
            return self.security.admit(certificate, name)
        except AdmissionRefused as exc:
            self.audit(name, "join", "server", f"refused: {exc}")
            raise

    def _key_of(self, name: str) -> bytes | None:
        """The secret a cell joining as `name` must prove (see `fl_core.roles.protocol.parent`)."""
        if self.security.proves_names and "." not in name:
            return None  # an admin or a site: its certificate proved the name
        if name.startswith(ADMIN_PREFIX) and "." not in name:
            return self._admin_key
        if name in self._site_keys:
            return self._site_keys[name]
        top, _, job_id = name.partition(".")
        if top == "server" and job_id:
            with self._lock:
                job = self._running.get(job_id)
            if job is None:
                raise AdmissionRefused(f"{name}: no job {job_id!r} is running here")
            return job_key(job.secret)
        raise AdmissionRefused(
            f"{name!r} is neither an admin, a site of federation {self.config.name}, "
            "nor a job of this server"
        )

    # --- what the admin service asks -----------------------------------------------------

    def wake(self) -> None:
        """Have the scheduler look at the job store now (a job was submitted)."""
        with self._wake:
            self._wake.notify_all()

    def sites(self) -> list[SiteInfo]:
        """The registered sites, sorted by name (copies: safe to read without the lock)."""
        with self._lock:
            return [replace(info, jobs=list(info.jobs)) for _, info in sorted(self._sites.items())]

    def abort_job(self, job_id: str, reason: str, waiting: str = "aborted") -> JobRun | None:
        """Abort job `job_id`: its run if it is running (wait on its `done`), else None.

        A job that waits for its turn is recorded aborted at once, with the
        reason `waiting`; the scheduler picks jobs under the same lock, so it
        cannot start it now.
        """
        with self._lock:
            job = self._running.get(job_id)
            if job is None:
                self.store.update(job_id, state=JobState.ABORTED, reason=waiting, ended=time.time())
                return None
        self.driver.abort(job, reason)
        return job

    def abort_all(self, reason: str) -> list[JobRun]:
        """Abort every running job; returns their runs, to wait on."""
        with self._lock:
            running = list(self._running.values())
        for job in running:
            self.driver.abort(job, reason)
        return running

    # --- sites -------------------------------------------------------------------------

    def alive_sites(self) -> list[str]:
        """Sites whose last heartbeat is recent enough, sorted."""
        with self._lock:
            return sorted(self._sites)

    def _on_heartbeat(self, message: Message) -> object:
        data = json_object(message.payload, "heartbeat")
        site = str(data.get(Field.SITE, ""))
        if site != message.origin:
            raise FlCoreError(f"{message.origin} sent a heartbeat for {site!r}")
        if site not in self.config.sites and not self.security.proves_names:
            raise FlCoreError(f"{site} is not a site of federation {self.config.name}")
        url, pid = str(data.get(Field.URL, "")), data.get(Field.PID, 0)
        jobs = [str(j) for j in _list(data.get(Field.JOBS, []), "heartbeat jobs")]
        with self._wake:
            known = site in self._sites
            self._sites[site] = SiteInfo(site, url, json_int(pid), time.monotonic(), jobs)
            if not known:
                self._wake.notify_all()
        if not known:
            log.info("%s registered (client parent pid %s, %s)", site, pid, url)
            self.audit(self.admin.actor(site), "join", "server", "registered")
        return {Field.HEARTBEAT_INTERVAL: self.settings.heartbeat_interval}

    def _watch(self) -> None:
        """Declare sites dead after `heartbeat_timeout` of silence."""
        while not self._stopping.wait(self.settings.heartbeat_interval / 2):
            for name in self.cell.links.close_peers(self.security.revoked):
                self.audit(name, "link", "server", "closed: its certificate was revoked")
            with self._lock:
                state = {"sites": sorted(self._sites), "jobs": sorted(self._running)}
            self._status.write({"url": self.url, **state})
            now = time.monotonic()
            with self._lock:
                dead = [
                    s
                    for s, info in self._sites.items()
                    if now - info.last_seen > self.settings.heartbeat_timeout
                ]
                for site in dead:
                    del self._sites[site]
                running = list(self._running.values())
            for site in dead:
                reason = f"{site} is dead: no heartbeat for {self.settings.heartbeat_timeout:g} s"
                log.warning(reason)
                self.audit(site, "leave", "server", reason)
                for job in running:
                    if site in job.sites:
                        self.driver.tell_site_lost(job, site, reason)

    def _on_client_job_exited(self, message: Message) -> object:
        data = json_object(message.payload, "client_job_exited")
        site, job_id = message.origin, str(data.get(Field.JOB_ID, ""))
        code = json_int(data.get(Field.EXIT_CODE, 0))
        with self._lock:
            job = self._running.get(job_id)
        if job is None or site not in job.sites:
            return {}
        reason = str(data.get(Field.REASON) or "") or (
            f"the client job of {site} {describe_exit(code)}"
        )
        log.info("job %s: %s", job_id, reason)
        if code != 0:
            self.driver.tell_site_lost(job, site, reason)
        return {}

    # --- jobs: scheduling ------------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._stopping.is_set():
            with self._wake:
                if self._stopping.is_set():
                    return  # stop() has taken its list of running jobs
                try:
                    job_id = self._next_job()
                except Exception:
                    log.exception("the scheduler could not read the job store")
                    job_id = None
                if job_id is None:
                    self._wake.wait(1.0)
                    continue
                sites = sorted(self._sites)
                running = JobRun(job_id, sites)
                self._running[job_id] = running
            try:
                self.store.update(
                    job_id, state=JobState.DEPLOYING, sites=sites, started=time.time(), reason=""
                )
            except Exception:
                log.exception("job %s: could not be started", job_id)
            thread = threading.Thread(
                target=self._run_job, args=(running,), name=f"fl-job-{job_id}", daemon=True
            )
            thread.start()

    def _next_job(self) -> str | None:
        """The oldest submitted job that can start now; under the lock.

        A job that lacks sites does not hold up younger jobs that have enough;
        jobs that can start go oldest first, so a younger job never takes a
        slot that an older one could use (a big job is not starved by a stream
        of small ones: once its sites are there it is first in line). A job
        lacking sites for its `schedule_timeout` fails. Each waiting job's
        reason says what it waits for, written only when that changes.
        """
        alive = sorted(self._sites)
        full = len(self._running) >= self.settings.max_jobs
        now = time.monotonic()
        chosen: str | None = None
        queued: set[str] = set()
        for record in self.store.list():
            if record.state is not JobState.SUBMITTED or record.job_id in self._running:
                continue
            queued.add(record.job_id)
            if len(alive) < record.min_clients:
                # Counted from when this server saw it lacking sites: after a restart
                # the sites need a heartbeat to be known again.
                since = self._waiting.setdefault(record.job_id, now)
                names = f": {', '.join(alive)}" if alive else ""
                reason = f"waiting for {record.min_clients} sites; {len(alive)} alive{names}"
                if now - since >= record.schedule_timeout:
                    self._set_reason(
                        record,
                        f"not started within its schedule_timeout of "
                        f"{record.schedule_timeout:g} s: {reason}",
                        state=JobState.FAILED,
                        ended=time.time(),
                    )
                    continue
            else:
                self._waiting.pop(record.job_id, None)
                if not full:
                    chosen = chosen or record.job_id
                    continue  # starts now, or at the next pass (one job per pass)
                reason = (
                    f"waiting for a free slot: {len(self._running)} of "
                    f"{self.settings.max_jobs} jobs running (max_jobs)"
                )
            if record.reason != reason:
                self._set_reason(record, reason)
        for job_id in set(self._waiting) - queued:
            del self._waiting[job_id]
        return chosen

    def _set_reason(self, record: JobRecord, reason: str, **changes: object) -> None:
        """Write why a queued job waits (or failed); a full disk leaves it for the next pass."""
        try:
            self.store.update_if(record.job_id, (JobState.SUBMITTED,), reason=reason, **changes)
        except OSError as exc:
            log.warning("job %s: could not record %r: %s", record.job_id, reason, exc)
            return
        if changes:
            log.warning("job %s failed: %s", record.job_id, reason)

    def shown(self, entries: Sequence[JobRecord | CorruptJob]) -> list[dict[str, object]]:
        """What admins see of `entries`: nothing shows as running whose processes are gone.

        A deploying or running record of a job this server does not run (its end
        was lost) becomes failed, on disk if the disk allows; a job whose end is
        still being written shows that end.
        """
        with self._lock:  # after the records were read: see `_settle`
            running = dict(self._running)
        shown: list[dict[str, object]] = []
        for entry in entries:
            if isinstance(entry, JobRecord) and entry.state in _ACTIVE:
                job = running.get(entry.job_id)
                if job is None:
                    why = f"its processes ended while it was {entry.state}, and its end was lost"
                    entry = self.store.settle(entry, why)
                elif job.ending is not None:
                    ending = {
                        k: str(v) if isinstance(v, JobState) else v for k, v in job.ending.items()
                    }
                    shown.append({**entry.to_json(), **ending})
                    continue
            shown.append(entry.to_json())
        return shown

    def _run_job(self, job: JobRun) -> None:
        state, reason = JobState.FAILED, ""
        try:
            state, reason = self.driver.deploy_and_watch(job)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, FlCoreError) else f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed to run", job.job_id)
        finally:
            try:
                if job.abort_reason is not None and state is not JobState.FINISHED:
                    state, reason = job.abort_state, job.abort_reason
                self.driver.end_sites(job)
                if job.handle is not None and job.handle.poll() is None:
                    job.handle.terminate(ABORT_GRACE)
                round_done = job.reported.get(Field.ROUND)
                changes: dict[str, object] = {
                    "state": state,
                    "reason": reason,
                    "ended": time.time(),
                }
                if isinstance(round_done, int):
                    changes["round"] = round_done
                job.ending = changes  # shown while a full disk refuses it
                self.store.write_end(job.job_id, changes, self._stopping)
                log.info("job %s %s%s", job.job_id, state, f": {reason}" if reason else "")
            except Exception:
                # The slot must come free whatever failed here, or no job runs again.
                log.exception("job %s: could not record its end", job.job_id)
            finally:
                with self._wake:
                    self._running.pop(job.job_id, None)
                    self._wake.notify_all()
                job.done.set()

    def _on_job_status(self, message: Message) -> object:
        data = json_object(message.payload, "job_status")
        job_id = str(data.get(Field.JOB_ID, ""))
        if message.origin != f"server.{job_id}":
            raise FlCoreError(f"{message.origin} reported the status of job {job_id!r}")
        with self._lock:
            job = self._running.get(job_id)
        if job is None:
            return None
        job.reported = dict(data)
        round_done = data.get(Field.ROUND)
        if isinstance(round_done, int) and data.get(Field.STATE) == JobState.RUNNING:
            seconds = data.get(Field.ROUND_SECONDS)
            # The job's own timings, so a follower can say how long each round took.
            times = seconds[-KEPT_ROUND_TIMES:] if isinstance(seconds, list) else []
            self.store.update(job_id, round=round_done, round_seconds=times)
        return None


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise FlCoreError(f"{what} must be a list, got {type(value).__name__}")
    return value


__all__ = ["ServerEngine", "SiteInfo", "UnknownJobError"]


def on_this_host(url: str) -> str:
    """`url` as this machine's own processes dial it: a wildcard host becomes loopback."""
    scheme, sep, rest = url.partition("://")
    host, colon, port = rest.rpartition(":")
    if sep and colon and host in ("0.0.0.0", "[::]", "::", ""):
        return f"{scheme}://127.0.0.1:{port}"
    return url

"""One job's run as the server parent drives it: deploy, launch, watch, end, abort.

`JobDriver` holds what driving a job takes (the cell, the job store, the
job-process launcher); the `ServerEngine` decides when a job runs and keeps
the running ones, the driver does the talking to sites and the server job.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.config.federation import FederationConfig
from fl_core.errors import CellError, RemoteError
from fl_core.pids import describe_exit
from fl_core.roles.protocol.parent import (
    ABORT_GRACE,
    JOB_SECRET_ENV,
    Field,
    JobState,
    ParentTopic,
    direct_token,
)
from fl_core.roles.server_parent.job_store import JobStore
from fl_core.spec.launcher import JobHandle, Launcher, LaunchSpec, ProcessType

log = logging.getLogger(__name__)

DEPLOY_TIMEOUT = 120.0
"""Seconds a site has to unpack a job package."""
COMMAND_TIMEOUT = 30.0
"""Seconds a site has to answer a start or an end of its client job."""


@dataclass
class JobRun:
    """A job between deploy and its end, as the server parent drives it."""

    job_id: str
    sites: list[str]
    handle: JobHandle | None = None
    abort_reason: str | None = None
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    """Proves a client job's direct link to the server job (see `direct_token`)."""
    abort_state: JobState = JobState.ABORTED
    """How the job is recorded once stopped: an admin's abort, or a failure (SP stopping)."""
    reported: dict[str, object] = field(default_factory=dict)  # the SJ's last job_status
    done: threading.Event = field(default_factory=threading.Event)
    ending: dict[str, object] | None = None
    """The end being written (retried while the disk refuses it); shown meanwhile."""
    refusals: list[str] = field(default_factory=list)
    """What each site that refused an admin's signed abort said (its own policy)."""


class JobDriver:
    """Deploys a job to its sites, launches its server job, watches it and ends it."""

    def __init__(
        self,
        config: FederationConfig,
        cell: Cell,
        store: JobStore,
        launcher: Launcher,
        url: Callable[[], str],
        *,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.cell = cell
        self.store = store
        self.launcher = launcher
        self.url = url
        """Where the server parent listens (known once it does)."""
        self.python = python
        self._signed_aborts: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def sign_abort(self, job_id: str, headers: dict[str, str]) -> None:
        """Carry the admin's signed abort request (headers) to the sites, or forget it ({})."""
        with self._lock:
            if headers:
                self._signed_aborts[job_id] = dict(headers)
            else:
                self._signed_aborts.pop(job_id, None)

    def deploy_and_watch(self, job: JobRun) -> tuple[JobState, str]:
        record = self.store.get(job.job_id)
        package = self.store.package(job.job_id)
        signed = self.store.signed(job.job_id)  # each site checks the admin's signature itself
        deployed: list[str] = []
        refused: list[str] = []
        for site in job.sites:
            if job.abort_reason is not None:
                return JobState.ABORTED, job.abort_reason
            try:
                self.cell.request(
                    site,
                    Channel.CLIENT_MAIN,
                    ParentTopic.DEPLOY,
                    package,
                    DEPLOY_TIMEOUT,
                    headers={Field.JOB_ID: job.job_id, **signed},
                )
                deployed.append(site)
            except CellError as exc:
                log.warning("job %s: deploy to %s failed: %s", job.job_id, site, exc)
                # A site's own refusal (its rules) says why; pass it on to the admin.
                refused.append(exc.detail if isinstance(exc, RemoteError) else f"{site}: {exc}")
        if len(deployed) < record.min_clients:
            return JobState.FAILED, "; ".join(
                [
                    f"deployed to {len(deployed)} of the {record.min_clients} sites it needs "
                    f"({', '.join(deployed) or 'none'})",
                    *refused,
                ]
            )
        job.sites = deployed
        self.store.update(job.job_id, sites=deployed)
        workspace = self.store.workspace(job.job_id)
        argv = [
            self.python,
            "-m",
            "fl_core.processes.main",
            "server-job",
            str(self.config.source),
            job.job_id,
            str(self.store.job_dir(job.job_id)),
            str(workspace),
            "--parent-url",
            self.url(),
            "--sites",
            ",".join(deployed),
        ]
        job.handle = self.launcher.launch(
            LaunchSpec(
                job.job_id,
                ProcessType.SERVER_JOB,
                argv,
                workspace,
                workspace / "log.txt",
                {JOB_SECRET_ENV: job.secret},
            )
        )
        if job.abort_reason is not None:
            job.handle.terminate(ABORT_GRACE)
        for site in deployed:
            try:
                self.cell.request(
                    site,
                    Channel.CLIENT_MAIN,
                    ParentTopic.START_JOB,
                    {
                        Field.JOB_ID: job.job_id,
                        Field.SERVER_JOB: f"server.{job.job_id}",
                        Field.TOKEN: direct_token(job.secret, site),
                    },
                    COMMAND_TIMEOUT,
                )
            except CellError as exc:
                log.warning("job %s: %s could not start its client job: %s", job.job_id, site, exc)
                self.tell_site_lost(job, site, f"{site} could not start its client job: {exc}")
        if job.abort_reason is None:
            self.store.update(job.job_id, state=JobState.RUNNING)
        code = job.handle.wait()
        while code is None:  # wait() without a timeout returns the code; be safe anyway
            code = job.handle.wait(1.0)
        reported = job.reported
        if job.abort_reason is not None:
            return JobState.ABORTED, job.abort_reason
        if code == 0 and JobState.FINISHED in (reported.get(Field.STATE), _summary(workspace)):
            return JobState.FINISHED, ""
        reason = str(reported.get(Field.REASON) or "")
        if not reason:
            reason = f"the server job {describe_exit(code)}"
        return JobState.FAILED, reason

    def end_sites(self, job: JobRun) -> None:
        """Make sure no client job of `job` is left on any site.

        An admin's abort carries the admin's signed request, and each site
        decides with its own policy: a refusal is kept in `job.refusals`. The
        server's own ends (the job finished or failed, a site lost, shutdown)
        are unsigned, and every site obeys them.
        """
        reason = job.abort_reason or "the job ended"
        with self._lock:
            signed = self._signed_aborts.pop(job.job_id, {})
        for site in job.sites:
            try:
                self.cell.request(
                    site,
                    Channel.CLIENT_MAIN,
                    ParentTopic.ABORT_JOB,
                    {Field.JOB_ID: job.job_id, Field.REASON: reason},
                    COMMAND_TIMEOUT,
                    headers=signed or None,
                )
            except CellError as exc:
                log.info("job %s: %s did not confirm its end: %s", job.job_id, site, exc)
                if signed and isinstance(exc, RemoteError):
                    # The site's own words, without the name of its exception's class.
                    job.refusals.append(re.sub(r"^\w*Error: ", "", exc.detail, count=1))

    def abort(self, job: JobRun, reason: str, state: JobState = JobState.ABORTED) -> None:
        if job.abort_reason is None:
            job.abort_reason = reason
            job.abort_state = state
        try:
            self.cell.fire(
                f"server.{job.job_id}",
                Channel.SERVER_COMMAND,
                ParentTopic.ABORT,
                {Field.REASON: reason},
            )
        except CellError:
            pass  # not connected (yet, or any more): the launcher stops it below
        handle = job.handle
        if handle is not None:
            # The server job ends its workflow on the message; a hung one is killed.
            threading.Thread(
                target=handle.terminate, args=(ABORT_GRACE,), name="fl-abort", daemon=True
            ).start()

    def tell_site_lost(self, job: JobRun, site: str, reason: str) -> None:
        try:
            self.cell.fire(
                f"server.{job.job_id}",
                Channel.SERVER_COMMAND,
                ParentTopic.SITE_LOST,
                {Field.SITE: site, Field.REASON: reason},
            )
        except CellError as exc:
            log.info("job %s: could not tell its server job about %s: %s", job.job_id, site, exc)


def _summary(workspace: Path) -> str:
    """The state the server job wrote into its summary.json, if it wrote one."""

    try:
        data = json.loads((workspace / "summary.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(data.get("status", "")) if isinstance(data, dict) else ""

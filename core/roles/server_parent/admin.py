"""The server parent's admin requests (`Channel.ADMIN`, see `fl_core.roles.protocol.parent`).

Served only to cells named `admin-<hex>` that are children of the server
parent: submit, list, status, abort, logs, download (as a file list and
8 MiB reads, so no result is ever held whole here), sites and shutdown.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fl_core.cell.cell import DEFERRED
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.errors import CellError, ConfigError, FlCoreError, RemoteError
from fl_core.roles.protocol.parent import (
    ABORT_GRACE,
    ADMIN_PREFIX,
    DOWNLOAD_CHUNK,
    AdminTopic,
    Field,
    ParentTopic,
    json_int,
    json_object,
)
from fl_core.roles.protocol.signed_job import verify_job
from fl_core.roles.protocol.signed_request import (
    REFUSED,
    SITE_LOGS,
    ReplayGuard,
    is_signed,
    signed_part,
    verify_request,
)
from fl_core.roles.server_parent.job_store import JobRecord
from fl_core.spec.security import Identity, SignatureError

if TYPE_CHECKING:
    from fl_core.config.job import JobConfig
    from fl_core.roles.server_parent.engine import ServerEngine
    from fl_core.roles.server_parent.job_run import JobRun

log = logging.getLogger("fl_core.roles.server_parent.engine")

RIGHTS: dict[AdminTopic, str] = {
    AdminTopic.SUBMIT: "submit_job",
    AdminTopic.LIST: "view_job",
    AdminTopic.STATUS: "view_job",
    AdminTopic.LOGS: "view_job",
    AdminTopic.ABORT: "abort_job",
    AdminTopic.DOWNLOAD: "download_job",
    AdminTopic.READ: "download_job",
    AdminTopic.SITES: "list_sites",
    AdminTopic.SHUTDOWN: "shutdown",
}
"""The right each admin request needs (what `authorization.yaml` grants to roles)."""

LOG_TAIL = 64 * 1024
"""Bytes of a log that `job logs` returns."""

_Handler = Callable[[Message], object]


class AdminService:
    """Answers admins on behalf of a `ServerEngine`."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self._replays = ReplayGuard()
        handlers = {
            AdminTopic.SUBMIT: self._on_submit,
            AdminTopic.LIST: self._on_list,
            AdminTopic.STATUS: self._on_status,
            AdminTopic.ABORT: self._on_abort,
            AdminTopic.LOGS: self._on_logs,
            AdminTopic.DOWNLOAD: self._on_download,
            AdminTopic.READ: self._on_read,
            AdminTopic.SITES: self._on_sites,
            AdminTopic.SHUTDOWN: self._on_shutdown,
        }
        for topic, handler in handlers.items():
            engine.cell.register_handler(Channel.ADMIN, topic, self._admin(topic, handler))

    def _admin(self, topic: AdminTopic, handler: _Handler) -> _Handler:
        def guarded(message: Message) -> object:
            if not message.origin.startswith(ADMIN_PREFIX) or "." in message.origin:
                raise FlCoreError(f"{message.origin} is not an admin")
            # Every admin action goes past the security provider (`none` allows all),
            # as the identity the admin's link proved (its certificate, in production).
            actor = self.actor(message.origin)
            record = self._record(message) if _about_a_job(topic) else None
            owner = Identity(record.submitter, record.submitter_org) if record else None
            right = RIGHTS[topic]
            reason = self.engine.security.authorize(actor, right, owner)
            if reason:
                what = f"job {record.job_id}" if record else "the federation"
                log.warning("refused %s: %s on %s: %s", actor, right, what, reason)
                self.engine.audit(actor, right, what, f"refused: {reason}")
                raise FlCoreError(f"{actor} may not {right} ({what}): {reason}")
            result = handler(message)
            if topic in (AdminTopic.ABORT, AdminTopic.DOWNLOAD, AdminTopic.SHUTDOWN):
                self.engine.audit(actor, str(topic), f"job {record.job_id}" if record else "", "ok")
            return result

        return guarded

    def actor(self, origin: str) -> Identity:
        """Who the admin cell `origin` proved to be (by name alone without certificates)."""
        return self.engine.cell.links.peer_identity(origin) or Identity(origin)

    def _on_submit(self, message: Message) -> object:
        if not isinstance(message.payload, bytes | bytearray | memoryview):
            raise FlCoreError("a job package must be sent as bytes (a zip of the job folder)")
        actor = self.actor(message.origin)

        def verify(folder: Path, job: JobConfig) -> dict[str, str]:
            signer, headers = verify_job(self.engine.security, message.headers, folder, job.name)
            if signer is not None and (signer.name, signer.org) != (actor.name, actor.org):
                raise SignatureError(f"the job was signed by {signer}, not by {actor}")
            return headers

        try:
            record = self.engine.store.submit(
                bytes(message.payload),
                self._check,
                submitter=actor.name,
                submitter_org=actor.org,
                verify=verify,
            )
        except FlCoreError as exc:
            self.engine.audit(actor, "submit_job", "the federation", f"refused: {exc}")
            raise
        self.engine.audit(actor, "submit_job", f"job {record.job_id}", "submitted")
        log.info("job %s (%s) submitted", record.job_id, record.name)
        self.engine.wake()
        return {Field.JOB_ID: record.job_id}

    def _check(self, job: JobConfig) -> None:
        """Refuse at submit what could never run here: too many sites, unknown plugins."""
        sites = self.engine.config.sites
        # Without a fixed list (production: any site the CA certified) sites come and go.
        if sites and job.min_clients > len(sites):
            raise ConfigError(
                str(job.source),
                "min_clients",
                f"the job needs {job.min_clients} sites, but federation "
                f"{self.engine.config.name} has only {len(sites)} ({', '.join(sites)})",
            )
        if self.engine.check_job is not None:
            self.engine.check_job(job)

    def _on_list(self, message: Message) -> object:
        # Corrupt records are listed too, so that no job silently vanishes; a job
        # the admin may not view (its right is "own" or "org") is left out.
        actor = self.actor(message.origin)
        entries = [
            e
            for e in self.engine.store.entries()
            if not isinstance(e, JobRecord)
            or not self.engine.security.authorize(
                actor, RIGHTS[AdminTopic.STATUS], Identity(e.submitter, e.submitter_org)
            )
        ]
        return {Field.JOBS: self.engine.shown(entries)}

    def _record(self, message: Message) -> JobRecord:
        data = json_object(message.payload, "admin request")
        return self.engine.store.get(str(data.get(Field.JOB_ID, "")))

    def _on_status(self, message: Message) -> object:
        return self.engine.shown([self._record(message)])[0]

    def _on_abort(self, message: Message) -> object:
        record = self._record(message)
        if record.state.final:
            why = f" ({record.reason})" if record.reason else ""
            raise FlCoreError(f"job {record.job_id} has already ended: {record.state}{why}")
        signed = self._signed(message, "abort_job", record)
        # Before the abort starts: each site gets the admin's request with its abort_job.
        self.engine.driver.sign_abort(record.job_id, signed)
        job = self.engine.abort_job(record.job_id, "aborted by the admin")
        if job is None:  # it had not started: recorded aborted at once
            self.engine.driver.sign_abort(record.job_id, {})
            return self.engine.store.get(record.job_id).to_json()
        # Answered from a thread: the handler must not hold a dispatcher thread.
        threading.Thread(
            target=self._reply_when_done, args=(message, job), name="fl-abort-reply", daemon=True
        ).start()
        return DEFERRED

    def _signed(self, message: Message, action: str, record: JobRecord) -> dict[str, str]:
        """The admin's signed request to `action` the job, checked here; {} without
        certificates (a POC).

        Each site checks it again and decides with its own policy; the server
        only makes sure it was signed by the admin who asks, for this job, now.
        """
        security = self.engine.security
        if not security.proves_names:
            return {}
        actor = self.actor(message.origin)
        try:
            if not is_signed(message.headers):
                raise SignatureError(
                    f"the request carries no signature of the admin (each site checks who asks "
                    f"to {action} there); use an fl-core client that signs it"
                )
            signer = verify_request(
                security, message.headers, action, record.job_id, replays=self._replays
            )
            if (signer.name, signer.org) != (actor.name, actor.org):
                raise SignatureError(f"the request was signed by {signer}, not by {actor}")
        except SignatureError as exc:
            self.engine.audit(actor, action, f"job {record.job_id}", f"refused: {exc}")
            raise FlCoreError(f"{actor} may not {action} (job {record.job_id}): {exc}") from exc
        return signed_part(message.headers)

    def _reply_when_done(self, message: Message, job: JobRun) -> None:
        job.done.wait(ABORT_GRACE * 4)
        self.engine.driver.sign_abort(job.job_id, {})
        reply: dict[str, object] = self.engine.store.get(job.job_id).to_json()
        if job.refusals:
            actor = self.actor(message.origin)
            for refusal in job.refusals:
                self.engine.audit(actor, "abort_job", f"job {job.job_id}", f"refused: {refusal}")
            reply[REFUSED] = list(job.refusals)
        try:
            self.engine.cell.reply(message, reply)
        except CellError as exc:
            log.info("abort of %s: the admin is gone: %s", job.job_id, exc)

    def _on_logs(self, message: Message) -> object:
        record = self._record(message)
        data = json_object(message.payload, "logs request")
        which = str(data.get(Field.WHICH) or "server")
        if which == "server":
            path = self.engine.store.workspace(record.job_id) / "log.txt"
        elif self.engine.security.proves_names:
            # Production: a site's disk is its own. The site shows its log if its own
            # policy lets the admin (whose signed request it checks itself) read_results.
            if which not in record.sites:
                sites = ", ".join(record.sites) or "none yet"
                raise FlCoreError(f"no log {which!r}: job {record.job_id} ran on {sites}")
            signed = self._signed(message, "read_results", record)
            threading.Thread(
                target=self._site_log,
                args=(message, which, record.job_id, signed),
                name="fl-site-log",
                daemon=True,
            ).start()
            return DEFERRED
        elif which in self.engine.config.sites:
            # Sites keep their own logs; on one machine (POC) the server can read them.
            path = self.engine.config.site_dir(which) / "jobs" / record.job_id / "log.txt"
        else:
            raise FlCoreError(f"no log {which!r}: say 'server' or a site of job {record.job_id}")
        if not path.is_file():
            raise FlCoreError(f"job {record.job_id} has no {which} log yet")
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL))
            return fh.read()

    def _site_log(self, message: Message, site: str, job_id: str, signed: dict[str, str]) -> None:
        """Ask `site` for its log of `job_id` and pass the answer (or its refusal) on."""
        reply: object
        try:
            answer = self.engine.cell.request(
                site, Channel.CLIENT_MAIN, SITE_LOGS, {Field.JOB_ID: job_id}, 30.0, signed
            )
            reply = answer.payload
        except CellError as exc:
            # The admin client raises this text (a deferred reply cannot be an error).
            text = exc.detail if isinstance(exc, RemoteError) else f"{site} did not answer: {exc}"
            reply = {REFUSED: re.sub(r"^\w*Error: ", "", text, count=1)}
            actor = self.actor(message.origin)
            self.engine.audit(actor, "read_results", f"job {job_id}", f"refused: {reply[REFUSED]}")
        try:
            self.engine.cell.reply(message, reply)
        except CellError as exc:
            log.info("logs of %s: the admin is gone: %s", job_id, exc)

    def _on_download(self, message: Message) -> object:
        record = self._record(message)
        top = self.engine.store.workspace(record.job_id).resolve()
        files = [
            {Field.PATH: path.relative_to(top).as_posix(), Field.SIZE: path.stat().st_size}
            for path in sorted(top.rglob("*"))
            if path.is_file() and not path.is_symlink()
        ]
        return {Field.FILES: files}

    def _on_read(self, message: Message) -> object:
        record = self._record(message)
        data = json_object(message.payload, "read request")
        top = self.engine.store.workspace(record.job_id).resolve()
        name, offset = str(data.get(Field.PATH, "")), json_int(data.get(Field.OFFSET))
        path = (top / name).resolve()
        if not path.is_relative_to(top) or path == top or not path.is_file() or offset < 0:
            raise FlCoreError(f"job {record.job_id} has no result file {name!r}")
        with open(path, "rb") as fh:
            # Checked again on the open file: a link swapped in after the check
            # above must not lead outside the workspace.
            opened = Path(os.readlink(f"/proc/self/fd/{fh.fileno()}"))
            if not opened.is_relative_to(top):
                raise FlCoreError(f"job {record.job_id} has no result file {name!r}")
            fh.seek(offset)
            return fh.read(DOWNLOAD_CHUNK)

    def _on_sites(self, message: Message) -> object:
        now = time.monotonic()
        sites = [
            {
                Field.SITE: s.site,
                Field.URL: s.url,
                Field.PID: s.pid,
                Field.LAST_SEEN: round(now - s.last_seen, 3),
                Field.JOBS: list(s.jobs),
            }
            for s in self.engine.sites()
        ]
        return {Field.SITES: sites}

    def _on_shutdown(self, message: Message) -> object:
        threading.Thread(target=self._shutdown, name="fl-shutdown", daemon=True).start()
        return {}

    def _shutdown(self) -> None:
        sites = [info.site for info in self.engine.sites()]
        running = self.engine.abort_all("the federation is shutting down")
        for job in running:
            job.done.wait(ABORT_GRACE * 3)
        for site in sites:
            try:
                self.engine.cell.request(site, Channel.CLIENT_MAIN, ParentTopic.SHUTDOWN, {}, 10.0)
            except CellError as exc:
                log.info("%s did not confirm its shutdown: %s", site, exc)
        self.engine.stop("the federation is shutting down")


def _about_a_job(topic: AdminTopic) -> bool:
    """Whether a request names one job (whose submitter the right may depend on)."""
    return topic not in (AdminTopic.SUBMIT, AdminTopic.LIST, AdminTopic.SITES, AdminTopic.SHUTDOWN)

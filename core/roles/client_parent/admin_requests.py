"""What a site decides itself about an admin's signed request: abort its part, show its logs.

The server passes an admin's signed request on with its command (see
`fl_core.roles.protocol.signed_request`); the site checks the signature
itself and asks its own policy (`site_policy.yaml`), with the job's signer
as the job's owner. That signer is recorded when the job is deployed
(`signer.json` in the job's folder), so it is known after the job ended too.
Every decision goes into the site's audit log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Final

from fl_core.audit import AuditLog
from fl_core.cell.message import Message
from fl_core.errors import FlCoreError
from fl_core.roles.protocol.signed_request import ReplayGuard, is_signed, verify_request
from fl_core.spec.security import Identity, SecurityProvider, SignatureError

__all__ = ["LOG_TAIL", "OWNER_FILE", "SiteDecisions"]

log = logging.getLogger(__name__)

OWNER_FILE: Final = "signer.json"
"""In a job's folder on a site: who signed the job (its owner, for the site's policy)."""
LOG_TAIL: Final = 64 * 1024


class SiteDecisions:
    """One site's checks of admins' signed requests (its security provider and policy)."""

    def __init__(self, site: str, security: SecurityProvider | None, audit: AuditLog) -> None:
        self.site = site
        self.security = security
        self.audit = audit
        self._replays = ReplayGuard()

    def record_owner(self, job_dir: Path, signer: Identity | None) -> None:
        """Remember who signed the job deployed into `job_dir` (nothing when unsigned)."""
        if signer is None:
            return
        data = {"name": signer.name, "org": signer.org, "role": signer.role}
        (job_dir / OWNER_FILE).write_text(json.dumps({**data, "serial": str(signer.serial)}))

    def owner(self, job_dir: Path) -> Identity | None:
        """Who signed the job in `job_dir`, as recorded at deploy; None if unknown."""
        try:
            data = json.loads((job_dir / OWNER_FILE).read_text())
            return Identity(
                str(data["name"]), str(data["org"]), str(data["role"]), int(data["serial"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _signed_refusal(self, message: Message, action: str, job_id: str, job_dir: Path) -> str:
        """Why the signed request in `message` may not `action` on `job_id` here, or ""."""
        assert self.security is not None
        signer: Identity | str = message.origin
        try:
            if not is_signed(message.headers):
                raise SignatureError(
                    f"the request carries no signature of an admin; {self.site} decides "
                    f"{action} itself, against the admin who asks"
                )
            signer = verify_request(
                self.security, message.headers, action, job_id, replays=self._replays
            )
            refusal = self.security.authorize(signer, action, self.owner(job_dir))
        except SignatureError as exc:
            refusal = str(exc)
        self.audit.record(
            signer, action, f"job {job_id}", f"refused: {refusal}" if refusal else "done"
        )
        return refusal

    def abort_refusal(self, message: Message, job_id: str, job_dir: Path, reason: str) -> str:
        """Why this site keeps its part of `job_id` running, or "" to stop it.

        An admin's abort carries the admin's signed request: checked here and
        decided by this site's policy. An unsigned abort is the server's own
        (the job ended or failed, a site was lost, shutdown): obeyed.
        """
        if self.security is None or not is_signed(message.headers):
            if self.security is not None and self.security.proves_names:
                self.audit.record(message.origin, "abort_job", f"job {job_id}", f"done: {reason}")
            return ""
        return self._signed_refusal(message, "abort_job", job_id, job_dir)

    def logs(self, message: Message, job_id: str, job_dir: Path) -> bytes:
        """The tail of this site's client job log of `job_id`, if the admin may read it here."""
        if self.security is None or not self.security.proves_names:
            raise FlCoreError(f"{self.site} shows its logs to signed requests only")
        refusal = self._signed_refusal(message, "read_results", job_id, job_dir)
        if refusal:
            log.warning("%s: refused to show its log of job %s: %s", self.site, job_id, refusal)
            raise FlCoreError(f"{self.site} refused to show its log of job {job_id}: {refusal}")
        path = job_dir / "log.txt"
        if not path.is_file():
            raise FlCoreError(f"job {job_id} has no log on {self.site}")
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL))
            return fh.read()

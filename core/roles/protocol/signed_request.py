"""Signed admin requests: an admin's action on a job, carried so that each site checks it itself.

Authorization is federated: aborting a site's part of a job is decided by
that site, against the admin who asked. The admin signs the request

    {"format": "fl-core admin request v1", "action": "abort_job",
     "job_id": "...", "time": 1764763200, "nonce": "<32 hex>"}

with its kit's key; it travels as headers (`REQUEST`, `SIGNER`, `SIGNATURE`,
each base64) from the admin to the server parent, which checks it and
passes it on unchanged with its own command to each site. Each site verifies
it with its own security provider: the signature, the signer's certificate
(the project's CA, not revoked), that it names this action and this job,
that it is at most `MAX_AGE` seconds old, and that its nonce was not seen
before. A server cannot forge it, nor reuse one for another job.

The same carries `read_results` when an admin asks for a site's log of a
job in production (`SITE_LOGS`): the server cannot read a site's disk, so
it asks the site, which shows it only if its own policy allows.

Without certificates (`none`, a POC) nothing is signed and nothing checked.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Final

from fl_core.roles.protocol.parent import ParentTopic
from fl_core.roles.protocol.signed_job import decode_signed, encode_signed
from fl_core.spec.security import Identity, SecurityProvider, SignatureError

__all__ = [
    "MAX_AGE",
    "REFUSED",
    "REQUEST",
    "SIGNATURE",
    "SIGNER",
    "SITE_LOGS",
    "ReplayGuard",
    "is_signed",
    "sign_request",
    "signed_part",
    "verify_request",
]

REQUEST: Final = "admin-request"
"""Header: the request (base64 of its JSON)."""
SIGNER: Final = "admin-signer"
"""Header: the signer's certificate (base64 of its PEM)."""
SIGNATURE: Final = "admin-signature"
"""Header: the signature over the request (base64)."""
SITE_LOGS: Final = ParentTopic.SITE_LOGS
"""`CLIENT_MAIN` topic: `{job_id}` from SP, with the admin's signed `read_results`
request as headers -> bytes, the tail of that site's client job log."""
REFUSED: Final = "refused"
"""Key of the abort's reply: what each site that refused said (`site-2 refused to abort ...`)."""
FORMAT: Final = "fl-core admin request v1"
MAX_AGE: Final = 300.0
"""Seconds a signed request stays valid, either way of the verifier's clock."""
_MAX_REQUEST: Final = 2048


def sign_request(security: SecurityProvider, action: str, job_id: str) -> dict[str, str]:
    """The headers carrying this participant's signed request ({} when it signs nothing)."""
    data = {
        "format": FORMAT,
        "action": action,
        "job_id": job_id,
        "time": int(time.time()),
        "nonce": secrets.token_hex(16),
    }
    request = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return encode_signed((REQUEST, SIGNER, SIGNATURE), request, security.sign(request))


def is_signed(headers: Mapping[str, str]) -> bool:
    """Whether `headers` carry (part of) a signed admin request."""
    return any(name in headers for name in (REQUEST, SIGNER, SIGNATURE))


def signed_part(headers: Mapping[str, str]) -> dict[str, str]:
    """The signed request's headers out of `headers`, to pass on unchanged."""
    return {name: headers[name] for name in (REQUEST, SIGNER, SIGNATURE) if name in headers}


class ReplayGuard:
    """Nonces of the signed requests accepted in the last `MAX_AGE` (x2) seconds."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, nonce: str, now: float) -> None:
        """Remember `nonce`; `SignatureError` if it was seen before."""
        with self._lock:
            for old, when in list(self._seen.items()):
                if now - when > 2 * MAX_AGE:
                    del self._seen[old]
            if nonce in self._seen:
                raise SignatureError("the signed request was used before (a replay)")
            self._seen[nonce] = now


def verify_request(
    security: SecurityProvider,
    headers: Mapping[str, str],
    action: str,
    job_id: str,
    *,
    replays: ReplayGuard | None = None,
    now: float | None = None,
) -> Identity:
    """Who signed the request in `headers` to do `action` on `job_id`.

    Raises `SignatureError` naming the check that failed: no or a malformed
    signature, a signer the provider does not trust, another action or job,
    a request older (or newer) than `MAX_AGE`, or a nonce `replays` saw.
    """
    request, signature = decode_signed(headers, (REQUEST, SIGNER, SIGNATURE), _MAX_REQUEST)
    signer = security.verify(request, signature)
    if signer is None:
        raise SignatureError("this participant cannot check who signed the request")
    try:
        data = json.loads(request)
        if data["format"] != FORMAT:
            raise ValueError(data["format"])
        signed_action, signed_job = str(data["action"]), str(data["job_id"])
        signed_at, nonce = float(data["time"]), str(data["nonce"])
    except (ValueError, KeyError, TypeError):
        raise SignatureError("the signed request is not an admin request") from None
    if (signed_action, signed_job) != (action, job_id):
        raise SignatureError(
            f"{signer.name} signed {signed_action} of job {signed_job}, "
            f"not {action} of job {job_id}"
        )
    now = time.time() if now is None else now
    if abs(now - signed_at) > MAX_AGE:
        raise SignatureError(
            f"the request {signer.name} signed is {abs(now - signed_at):.0f} s from this "
            f"participant's clock (at most {MAX_AGE:.0f} s are accepted); check both clocks"
        )
    if replays is not None:
        replays.check(nonce, now)
    return signer

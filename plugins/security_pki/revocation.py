"""The revocation list a kit holds (`crl.pem`), read again whenever it changes.

The provisioner rewrites `crl.pem` in every kit when it revokes someone;
a running participant must notice without a restart, and cheaply, since
every admission asks. So each question costs one `stat`: the list is parsed
again only when the file's mtime, size or inode changed. A list the kit's CA
did not sign is ignored (a WARNING) and the last good one kept: whoever can
write the file must not be able to un-revoke anyone by it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cryptography import x509

from fl_core.credentials import CredentialError

__all__ = ["RevocationList"]

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]


class RevocationList:
    """The serial numbers the CA revoked, from `path`, checked against `ca`."""

    def __init__(self, path: Path, ca: x509.Certificate) -> None:
        self.path = path
        self._ca = ca
        self._lock = threading.Lock()
        stamp = self._stamp()
        revoked = self._parse() if stamp is not None else None
        if isinstance(revoked, str) or revoked is None:
            problem = revoked or "not found"
            # At start there is no last good list to keep: refuse rather than trust everyone.
            raise CredentialError(
                path,
                f"{problem}; copy the project's current crl.pem (the provisioner's ca/crl.pem) "
                "into the kit",
            )
        self._seen: _Stamp | None = stamp
        self._revoked = revoked

    def serials(self) -> frozenset[int]:
        """The revoked serials, read again first if the file changed."""
        stamp = self._stamp()
        if stamp != self._seen:
            with self._lock:
                if stamp != self._seen:
                    self._reload(stamp)
        return self._revoked

    def _stamp(self) -> _Stamp | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _reload(self, stamp: _Stamp | None) -> None:
        revoked = self._parse() if stamp is not None else "not found"
        if isinstance(revoked, str):
            log.warning(
                "%s: %s; keeping the last good revocation list (%d revoked)",
                self.path,
                revoked,
                len(self._revoked),
            )
        else:
            if revoked != self._revoked:
                log.info("%s: %d certificate(s) revoked", self.path, len(revoked))
            self._revoked = revoked
        # Only now: a caller that sees the new stamp must see the list read from it.
        self._seen = stamp

    def _parse(self) -> frozenset[int] | str:
        """The revoked serials, or what is wrong with the file."""
        try:
            crl = x509.load_pem_x509_crl(self.path.read_bytes())
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        except ValueError:
            return "not a PEM revocation list"
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
            return "not signed by the kit's CA"
        return frozenset(entry.serial_number for entry in crl)

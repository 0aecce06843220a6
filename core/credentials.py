"""POC credentials: random secrets in files only their owner can read.

`fl-core poc prepare` writes one secret for the federation's admins and one
per site (`write_secret`); each process reads the ones it needs
(`read_secret`) and proves them by challenge/response when its cell joins
(`fl_core.cell.proof`), so a secret is never in argv, a log or a frame.
Where each file lives is the federation config's business
(`FederationConfig.admin_key_file` and friends).

A secret file holds 64 hex digits and a newline. Like ssh with its keys,
`read_secret` refuses a file that anyone but its owner could read or
change, in a folder anyone else could enter, or owned by another user:
whoever can read it could act under its name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from fl_core.errors import FlCoreError

__all__ = [
    "CredentialError",
    "check_private",
    "derive_key",
    "new_secret",
    "read_private_file",
    "read_secret",
    "write_secret",
]

SECRET_BYTES: Final = 32
_MAX_FILE: Final = 1024


class CredentialError(FlCoreError):
    """A credential file is missing, unreadable, malformed or not private."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"credential {path}: {problem}")


def new_secret() -> bytes:
    """A fresh random secret."""
    return secrets.token_bytes(SECRET_BYTES)


def write_secret(path: Path, secret: bytes) -> None:
    """Create `path` (and its folder, mode 0700) holding `secret`, mode 0600.

    Refuses to overwrite: a secret is made once per federation and party.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask; this one must not be
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(secret.hex() + "\n")


def read_secret(path: Path) -> bytes:
    """The secret in `path`; `CredentialError` saying what is wrong and how to fix it."""
    data = read_private_file(
        path,
        _MAX_FILE,
        missing="not found (a POC's credentials are written by `fl-core poc prepare`)",
    )
    text = data.decode("ascii", errors="replace").strip()
    if len(data) > _MAX_FILE or len(text) != 2 * SECRET_BYTES:
        raise CredentialError(path, f"expected {2 * SECRET_BYTES} hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CredentialError(path, f"expected {2 * SECRET_BYTES} hex digits") from None


def read_private_file(
    path: Path, limit: int, *, missing: str = "not found", redo: str = "prepare the POC again"
) -> bytes:
    """Up to `limit` + 1 bytes of `path`, a private file in a private folder.

    Refuses (`CredentialError`) a symlink, a file or folder that another user
    owns or that others may read or change. `missing` is the problem reported
    when the file does not exist; `redo` says how to make the file afresh, for
    when its privacy may already be lost. The caller checks the size and content.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise CredentialError(path, missing) from None
    except OSError as exc:
        raise CredentialError(path, f"cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        check_private(path, os.fstat(fh.fileno()), "file", redo=redo)
        check_private(path.parent, os.stat(path.parent), "folder", redo=redo)
        return fh.read(limit + 1)


def check_private(
    path: Path, info: os.stat_result, what: str, *, redo: str = "prepare the POC again"
) -> None:
    """Refuse `path` (`what` is "file" or "folder") unless only this user owns and opens it.

    `info` is its stat; the error gives the chmod that fixes it, or `redo`.
    """
    if what == "file" and not stat.S_ISREG(info.st_mode):
        raise CredentialError(path, "is not a regular file")
    if info.st_uid != os.geteuid():
        raise CredentialError(
            path, f"the {what} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        wanted = 0o600 if what == "file" else 0o700
        raise CredentialError(
            path,
            f"the {what} is open to others (mode {mode:04o}); "
            f"run `chmod {wanted:o} {path}` if nobody else has read it, "
            f"or {redo}",
        )


def derive_key(secret: bytes | str, purpose: str) -> bytes:
    """A key for one `purpose` derived from `secret`, so one secret never serves two."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, purpose.encode(), hashlib.sha256).digest()

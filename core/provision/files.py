"""Writing kit and CA files with exact modes, whatever the umask.

A key written 0644 under a lax umask is readable by every user of the
machine the kit is unpacked on, and `fl_core.credentials` would then refuse
it; so modes are set explicitly (fchmod), not left to `open()`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["make_folder", "write_file"]


def make_folder(path: Path, mode: int = 0o700) -> None:
    """Create `path` (and missing parents) and give it exactly `mode`."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def write_file(path: Path, data: bytes | str, mode: int) -> None:
    """Replace `path` with `data`, mode `mode`, atomically.

    A reader (a running server reloading `crl.pem`) sees the old file or the
    new one, never half of it.
    """
    raw = data.encode() if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

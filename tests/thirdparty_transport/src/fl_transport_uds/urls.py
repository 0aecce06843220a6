"""`uds` URLs: a socket file, or a request for a fresh one.

`uds:///abs/path/to.sock` names a socket file by its absolute path
(percent-encoded where a URL needs it). fl-core asks any transport for "a
free address" as `SCHEME://127.0.0.1:0`; for `uds`, any `uds://HOST:0` means
"a fresh socket file in a folder only this user can enter", and the listener
reports the file it made as `uds:///...`.
"""

from __future__ import annotations

import os
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from fl_core.errors import CellError

__all__ = ["MAX_PATH_BYTES", "SCHEME", "format_url", "parse_url", "socket_path"]

SCHEME: Final = "uds"
MAX_PATH_BYTES: Final = 107
"""Linux's `sun_path` holds 108 bytes, one of them the closing NUL."""

_FORMS: Final = "uds:///ABSOLUTE/PATH.sock, or uds://HOST:0 for a fresh socket file"


def _bad(url: str, why: str) -> CellError:
    return CellError(f"bad uds URL {url!r}: {why}; expected {_FORMS}")


def parse_url(url: str) -> str | None:
    """The socket path `url` names, or None when it asks for a fresh one (`uds://HOST:0`).

    Raises `CellError` for anything else, saying which forms are accepted.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(url, str(exc)) from exc
    if parts.scheme != SCHEME:
        raise _bad(url, f"the scheme is {parts.scheme!r}")
    if parts.query or parts.fragment:
        raise _bad(url, "it has a query or fragment")
    if parts.netloc:
        if port == 0 and not parts.path:
            return None
        raise _bad(url, "only port 0 (a fresh socket file) may follow a host")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise _bad(url, "the path is not absolute")
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise _bad(
            url, f"the path is longer than the {MAX_PATH_BYTES} bytes a socket address holds"
        )
    return path


def socket_path(url: str) -> str:
    """The socket file of a `uds:///...` URL; `CellError` for a fresh-address request."""
    path = parse_url(url)
    if path is None:
        raise _bad(url, "port 0 asks for a fresh socket file, which only `listen` can make")
    return path


def format_url(path: str) -> str:
    """The URL of the socket file at absolute `path`."""
    return f"{SCHEME}://{quote(path)}"

"""The `uds` transport: listeners and dialers over Unix domain sockets.

One `UdsTransport` runs one asyncio loop on one daemon thread
(`fl_core.loop_thread.LoopThread`), started by the first `listen` or
`connect` and stopped by `close`. Frame and close handlers run on that thread.

Socket files: a listener binds its file with mode 0600 (only this user may
connect) and removes it when it closes, if the file is still its own. A
`uds://HOST:0` request gets a fresh file in a folder made for this transport
with mode 0700, removed with the transport. Binding a path where a stale
socket file lies (its listener died without removing it) replaces the file;
a path where something still listens is refused.

Admission (see `fl_core.spec.transport`): an accepted link is unadmitted
until its owner calls `admit()`. `fl_core.admission.Admission` closes it if
that takes over `hello_timeout` seconds and keeps at most `max_unadmitted`
of them per listener; the reader refuses its frames over `HELLO_MAX_FRAME`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

from fl_core.admission import Admission, check_limits
from fl_core.errors import CellError, ConfigError, TargetUnreachableError
from fl_core.loop_thread import LoopThread
from fl_core.serialization.envelope import DEFAULT_MAX_BODY_SIZE
from fl_core.spec.transport import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_UNADMITTED,
    Connection,
    Listener,
    Transport,
)
from fl_transport_uds.link import FrameReader, UdsLink
from fl_transport_uds.urls import SCHEME, format_url, parse_url, socket_path

__all__ = ["UdsListener", "UdsTransport"]

log = logging.getLogger("fl_transport_uds")

BACKOFF_START: Final = 0.05
BACKOFF_MAX: Final = 1.0
CLOSE_GRACE: Final = 2.0
"""Seconds `close` lets links end in order before it aborts them."""
LIVENESS_PROBE: Final = 1.0
"""Seconds `listen` waits to learn whether an existing socket file still has a listener."""


def option_error(name: str, problem: str) -> ConfigError:
    """The error for a bad transport option, naming its key in job.yaml."""
    return ConfigError("job.yaml", f"components.transport.options.{name}", problem)


class UdsListener(Listener):
    """A listening socket file; closing it keeps the links it accepted."""

    def __init__(self, close: Callable[[], None], url: str) -> None:
        self._close = close
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        self._close()


class UdsTransport(Transport):
    """Frames over Unix domain sockets; see the module docstring."""

    schemes: ClassVar[tuple[str, ...]] = (SCHEME,)
    carries_objects: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        send_timeout: float = 60.0,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_unadmitted: int = DEFAULT_MAX_UNADMITTED,
    ) -> None:
        self._hello_timeout, self._max_unadmitted = check_limits(
            hello_timeout, max_unadmitted, option_error
        )
        self._max_body_size = max_body_size
        self._send_timeout = send_timeout
        self._loops = LoopThread("fl-uds-loop", "the uds transport")
        self._folder_lock = threading.Lock()
        self._folder: str | None = None
        self._closed = False
        self._names = itertools.count(1)
        # Touched only on the loop thread.
        self._servers: dict[asyncio.Server, tuple[str, os.stat_result]] = {}
        """Each serving listener's socket file and what it was when bound."""
        self._links: set[UdsLink] = set()

    # --- listening -----------------------------------------------------------------

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        """Bind the socket file `url` names (or a fresh one); `CellError` if it cannot."""
        path = parse_url(url)
        if path is None:
            path = os.path.join(self._private_folder(), f"listener-{next(self._names)}.sock")
        sock, identity = _bind(path, url)
        try:
            return self._loops.run(self._serve(sock, path, identity, on_connection), 30.0)
        except BaseException:
            sock.close()
            _remove_if_same(path, identity)
            raise

    def _private_folder(self) -> str:
        with self._folder_lock:
            if self._closed:
                raise CellError("the uds transport is closed")
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="fl-uds-")  # mode 0700
            return self._folder

    async def _serve(
        self,
        sock: socket.socket,
        path: str,
        identity: os.stat_result,
        on_connection: Callable[[Connection], None],
    ) -> UdsListener:
        loop = asyncio.get_running_loop()
        url = format_url(path)
        admission = Admission(SCHEME, log, url, self._hello_timeout, self._max_unadmitted)

        def accepted(raw: asyncio.Transport) -> UdsLink:
            link = self._new_link(_peer_of(raw, path), admitted=False)
            link.attach(raw)
            admission.add(link)
            try:
                on_connection(link)
            except Exception:
                log.exception("uds: on_connection for %s (listener %s) failed", link.peer, url)
                link.close()
            return link

        server = await loop.create_unix_server(lambda: FrameReader(accepted), sock=sock)
        self._servers[server] = (path, identity)
        # Said once per listener, so a run's log shows which transport carried it.
        log.info("uds: listening on %s", url)

        return UdsListener(lambda: self._close_listener(server), url)

    def _close_listener(self, server: asyncio.Server) -> None:
        # Synchronous, so that the path is free once `Listener.close` returns: a
        # new listener on the same URL (a restarted parent) must not find it taken.
        loop = self._loops.loop
        if loop is None:
            return  # the transport is closed, and its listeners with it
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._stop_serving(server)
            return
        with contextlib.suppress(CellError, TimeoutError):  # closed meanwhile
            self._loops.run(self._stop_serving_async(server), CLOSE_GRACE)

    async def _stop_serving_async(self, server: asyncio.Server) -> None:
        self._stop_serving(server)

    def _stop_serving(self, server: asyncio.Server) -> None:
        server.close()
        file = self._servers.pop(server, None)
        if file is not None:
            _remove_if_same(*file)

    def _new_link(self, peer: str, *, admitted: bool) -> UdsLink:
        link = UdsLink(
            asyncio.get_running_loop(),
            peer,
            max_body_size=self._max_body_size,
            send_timeout=self._send_timeout,
            admitted=admitted,
        )
        self._links.add(link)
        link.on_lost.append(self._links.discard)
        return link

    # --- connecting ----------------------------------------------------------------

    def connect(self, url: str, timeout: float) -> Connection:
        """Connect, retrying while nobody listens yet; `TargetUnreachableError` after `timeout`."""
        path = socket_path(url)
        try:
            return self._loops.run(self._dial(path, url, timeout), timeout + 5.0)
        except TimeoutError:
            raise TargetUnreachableError(url, f"no connection within {timeout:g} s") from None

    async def _dial(self, path: str, url: str, timeout: float) -> UdsLink:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = BACKOFF_START
        while True:
            link = self._new_link(url, admitted=True)

            def made(raw: asyncio.Transport, link: UdsLink = link) -> UdsLink:
                link.attach(raw)
                return link

            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                    await loop.create_unix_connection(lambda: FrameReader(made), path)
                return link
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                # Nobody listens there yet (or any more): a starting peer may still come.
                self._links.discard(link)
                why = f"{type(exc).__name__}: {exc.strerror}"
            except TimeoutError:
                self._links.discard(link)
                why = "the listener did not accept in time"
            except OSError as exc:  # a permission or a path problem: retrying cannot help
                self._links.discard(link)
                raise TargetUnreachableError(url, f"cannot connect to {path}: {exc}") from exc
            if loop.time() + delay >= deadline:
                raise TargetUnreachableError(url, f"no listener within {timeout:g} s ({why})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close listeners and links (each owner's `on_close` runs), stop the loop thread."""
        self._loops.stop(self._shutdown, CLOSE_GRACE + 5.0)
        with self._folder_lock:
            folder, self._folder, self._closed = self._folder, None, True
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    async def _shutdown(self) -> None:
        for server in list(self._servers):
            self._stop_serving(server)
        for link in list(self._links):
            link.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE
        while self._links and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for link in list(self._links):
            link.refuse(CellError("the uds transport closed"))
        await asyncio.sleep(0)  # let the aborted sockets report their loss
        for link in list(self._links):
            link.lost(CellError("the uds transport closed"))


def _bind(path: str, url: str) -> tuple[socket.socket, os.stat_result]:
    """A socket bound to `path` with mode 0600, not yet listening, and its file's identity.

    `CellError` if it cannot be bound.
    """
    _clear_stale(path, url)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Before listen(), nobody can connect: the mode is set before anyone could.
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        identity = os.stat(path)
    except OSError as exc:
        sock.close()
        raise CellError(f"cannot listen on {url}: {exc}") from exc
    return sock, identity


def _clear_stale(path: str, url: str) -> None:
    """Remove a socket file whose listener is gone; refuse one that still has a listener."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CellError(f"cannot listen on {url}: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise CellError(f"cannot listen on {url}: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(LIVENESS_PROBE)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: its listener died without removing it
        return
    except OSError as exc:
        raise CellError(f"cannot listen on {url}: {exc}") from exc
    finally:
        probe.close()
    raise CellError(f"cannot listen on {url}: another listener is using {path}")


def _remove_if_same(path: str, identity: os.stat_result) -> None:
    """Remove `path` if it is still the file described by `identity` (not a newer listener's)."""
    try:
        now = os.stat(path)
    except OSError:
        return
    if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_PEERCRED: Final = struct.Struct("3i")


def _peer_of(raw: asyncio.Transport, path: str) -> str:
    """The peer of an accepted link: its process id, which the kernel vouches for."""
    sock: Any = raw.get_extra_info("socket")
    try:
        pid, _, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (AttributeError, OSError):
        return f"a peer on {path}"
    return f"pid {pid} on {path}"

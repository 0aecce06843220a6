"""The `tcp` transport: frames over TCP, optionally TLS (mutual by default).

URLs are `tcp://HOST:PORT`; port 0 binds a free port and `Listener.url`
reports the real one. Each `TcpTransport` runs one asyncio loop on one daemon
thread, started by the first `listen` or `connect` and stopped by `close`.
Public methods are called from ordinary threads and hand their work to the
loop; frame and close handlers run on the loop thread.

Admission (see `fl_core.spec.transport`): an accepted link is unadmitted
until its owner calls `admit()`. Until then its frames are at most
`HELLO_MAX_FRAME` bytes, it is closed `hello_timeout` seconds after it was
accepted (TLS handshake included), and each listener holds at most
`max_unadmitted` of them, closing the oldest when one more arrives.

TLS: `tls: true` with `certfile`, `keyfile`, `cafile` (PEM files), or
`credentials` (PEM bytes from the security provider). Listeners require a
client certificate from the CA unless `require_client_cert` is false. A
dialing end checks the listener's chain against the CA and that its
certificate names the URL's host (an IP address against its IP addresses),
or `server_name` when that option is set; a listener that fails the name
check is refused at once, with the names its certificate does carry. Both
ends give the certificate the handshake verified as
`Connection.peer_certificate`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import urlparse

from fl_core.admission import Admission, check_limits
from fl_core.errors import CellError, ConfigError, TargetUnreachableError
from fl_core.loop_thread import LoopThread
from fl_core.serialization.envelope import DEFAULT_MAX_BODY_SIZE
from fl_core.spec.security import Credentials
from fl_core.spec.transport import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_UNADMITTED,
    Connection,
    Listener,
    Transport,
)
from fl_core.tls_names import describe_names, name_mismatch_message
from fl_plugins.transport_tcp import tls as tls_contexts
from fl_plugins.transport_tcp.connection import FrameProtocol, TcpConnection

log = logging.getLogger("fl_plugins.transport_tcp")

SCHEME: Final = "tcp"
OPTION_SOURCE: Final = "job.yaml"
BACKOFF_START: Final = 0.05
BACKOFF_MAX: Final = 1.0
CLOSE_GRACE: Final = 2.0
"""Seconds `TcpTransport.close` lets links close in order before aborting them."""

T = TypeVar("T")


def _option_error(name: str, problem: str) -> ConfigError:
    return ConfigError(OPTION_SOURCE, f"components.transport.options.{name}", problem)


def parse_url(url: str) -> tuple[str, int]:
    """`tcp://host:port` -> (host, port); `CellError` if it is not one."""
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        raise CellError(f"bad tcp URL {url!r}: {exc}") from exc
    if parsed.scheme != SCHEME or not parsed.hostname or port is None:
        raise CellError(f"bad tcp URL {url!r}: expected tcp://HOST:PORT")
    return parsed.hostname, port


def _format_url(host: str, port: int) -> str:
    return f"{SCHEME}://[{host}]:{port}" if ":" in host else f"{SCHEME}://{host}:{port}"


class TcpListener(Listener):
    """A bound TCP server; closing it keeps accepted links up."""

    def __init__(self, transport: TcpTransport, server: asyncio.Server, url: str) -> None:
        self._transport = transport
        self._server = server
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        self._transport._close_server(self._server)


class TcpTransport(Transport):
    """Frames over TCP (TLS when `tls=True`); see the module docstring."""

    schemes: ClassVar[tuple[str, ...]] = (SCHEME,)
    carries_objects: ClassVar[bool] = False

    def __init__(
        self,
        *,
        tls: bool = False,
        certfile: str | None = None,
        keyfile: str | None = None,
        cafile: str | None = None,
        credentials: Credentials | None = None,
        require_client_cert: bool = True,
        server_name: str | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        send_timeout: float = 60.0,
        handshake_timeout: float = 10.0,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_unadmitted: int = DEFAULT_MAX_UNADMITTED,
    ) -> None:
        self._hello_timeout, self._max_unadmitted = check_limits(
            hello_timeout, max_unadmitted, _option_error
        )
        self._server_ssl: ssl.SSLContext | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._tls = tls or credentials is not None
        if credentials is not None:
            if certfile or keyfile or cafile:
                raise _option_error(
                    "certfile", "give either credentials or certfile/keyfile/cafile, not both"
                )
            self._server_ssl, self._client_ssl = tls_contexts.contexts_from_credentials(
                credentials, require_client_cert
            )
        elif tls:
            self._server_ssl, self._client_ssl = tls_contexts.contexts_from_files(
                certfile, keyfile, cafile, require_client_cert
            )
        self._server_name = server_name
        self._max_body_size = max_body_size
        self._send_timeout = send_timeout
        self._handshake_timeout = handshake_timeout
        self._loops = LoopThread("fl-tcp-loop", "the tcp transport")
        # Touched only on the loop thread.
        self._servers: set[asyncio.Server] = set()
        self._connections: set[TcpConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the loop thread -----------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self._loops.run(coro, timeout)

    def _new_connection(self, peer: str, admission: Admission | None = None) -> TcpConnection:
        """A link; an accepted one (`admission` given) starts unadmitted and is tracked there."""
        conn = TcpConnection(
            asyncio.get_running_loop(),
            peer,
            max_body_size=self._max_body_size,
            send_timeout=self._send_timeout,
            admitted=admission is None,
        )
        if admission is not None:
            admission.add(conn)
        self._connections.add(conn)
        conn.on_lost.append(self._connections.discard)
        return conn

    # --- listening ---------------------------------------------------------------

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        """Bind `tcp://host:port`; `CellError` if it cannot be bound."""
        host, port = parse_url(url)
        if self._tls and self._server_ssl is None:
            raise CellError(f"cannot listen on {url} with TLS: the credentials hold no certificate")
        return self._run(self._listen(host, port, url, on_connection), 30.0)

    async def _listen(
        self, host: str, port: int, url: str, on_connection: Callable[[Connection], None]
    ) -> TcpListener:
        loop = asyncio.get_running_loop()

        def accepted(conn: TcpConnection) -> None:
            try:
                on_connection(conn)
            except Exception:
                log.exception("tcp: on_connection for %s (listener %s) failed", conn.peer, url)
                conn.close()

        admission = Admission("tcp", log, url, self._hello_timeout, self._max_unadmitted)

        def factory() -> asyncio.BaseProtocol:
            if not self._tls:
                return _PlainAcceptor(self, accepted, admission)
            return _TlsAcceptor(self, accepted, admission)

        try:
            server = await loop.create_server(factory, host, port, reuse_address=True)
        except OSError as exc:
            raise CellError(f"cannot listen on {url}: {exc}") from exc
        self._servers.add(server)
        bound = server.sockets[0].getsockname()[1]
        return TcpListener(self, server, _format_url(host, bound))

    def _close_server(self, server: asyncio.Server) -> None:
        def close() -> None:
            self._servers.discard(server)
            server.close()

        self._loops.call_soon(close)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tls_accept(
        self,
        raw: asyncio.Transport,
        peer: str,
        accepted: Callable[[TcpConnection], None],
        admission: Admission,
    ) -> None:
        assert self._server_ssl is not None
        loop = asyncio.get_running_loop()
        conn = self._new_connection(peer, admission)
        conn.raw = raw
        protocol = _TlsFrameProtocol(conn, accepted)
        try:
            tls = await loop.start_tls(
                raw,
                protocol,
                self._server_ssl,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except Exception as exc:  # whatever the peer did, only this link ends
            reason = str(exc) or type(exc).__name__
            log.warning(
                "tcp: closed the connection from %s: TLS handshake failed: %s", peer, reason
            )
            raw.abort()
            conn.lost(exc)
            return
        except asyncio.CancelledError:
            raw.abort()
            conn.lost(None)
            raise
        assert tls is not None
        protocol.connection_made(tls)

    # --- connecting ----------------------------------------------------------------

    def connect(self, url: str, timeout: float) -> Connection:
        """Connect, retrying with backoff until `timeout`; `TargetUnreachableError` then."""
        host, port = parse_url(url)
        try:
            return self._run(self._connect(host, port, url, timeout), timeout + 5.0)
        except TimeoutError:
            raise TargetUnreachableError(url, f"no connection within {timeout:g} s") from None

    async def _connect(self, host: str, port: int, url: str, timeout: float) -> TcpConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = BACKOFF_START
        last: BaseException | None = None
        peer = f"{host}:{port}"
        expected = self._server_name or host  # the name the listener's certificate must carry
        while True:
            conn = self._new_connection(url)
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(max(left, 0.001)):
                    await loop.create_connection(
                        lambda conn=conn: FrameProtocol(conn),
                        host,
                        port,
                        ssl=self._client_ssl,
                        server_hostname=expected if self._client_ssl else None,
                        ssl_handshake_timeout=(
                            self._handshake_timeout if self._client_ssl else None
                        ),
                    )
                return conn
            except ssl.SSLCertVerificationError as exc:
                # Retrying cannot help: the server is not one our CA vouches for,
                # or its certificate is another participant's.
                self._connections.discard(conn)
                if not tls_contexts.is_name_mismatch(exc):
                    raise TargetUnreachableError(url, f"TLS: {exc}") from exc
                assert self._client_ssl is not None
                names = await describe_names(
                    host, port, minimum_version=self._client_ssl.minimum_version
                )
                why = name_mismatch_message(expected, names)
                raise TargetUnreachableError(url, why) from exc
            except (OSError, TimeoutError) as exc:
                self._connections.discard(conn)
                last = exc
            if loop.time() + delay >= deadline:
                detail = f"{type(last).__name__}: {last}" if str(last) else type(last).__name__
                raise TargetUnreachableError(
                    url, f"could not connect to {peer} within {timeout:g} s ({detail})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close listeners and links (on_close fires for each), stop the loop thread."""
        self._loops.stop(self._shutdown, CLOSE_GRACE + 5.0)

    async def _shutdown(self) -> None:
        for server in list(self._servers):
            server.close()
        self._servers.clear()
        for task in list(self._tasks):
            task.cancel()
        conns = list(self._connections)
        for conn in conns:
            conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        for conn in list(self._connections):
            conn.lost(CellError("the tcp transport closed"))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _PlainAcceptor(FrameProtocol):
    """The protocol of an accepted plaintext connection."""

    def __init__(
        self,
        transport: TcpTransport,
        accepted: Callable[[TcpConnection], None],
        admission: Admission,
    ) -> None:
        # The peer is known only in connection_made; the name is fixed there.
        super().__init__(transport._new_connection("?", admission), accepted)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn._peer = _peername(transport)
        super().connection_made(transport)


class _TlsFrameProtocol(FrameProtocol):
    """A `FrameProtocol` for `start_tls`, which may deliver data before `connection_made`.

    With TLS 1.3 a client's first frames often arrive with its last handshake
    message, and asyncio hands them to the protocol as soon as the handshake
    is done, before `start_tls` returns and `connection_made` attaches the
    connection. Those bytes are held and fed to the parser once the owner
    has started the connection, so no frame is lost.
    """

    EARLY_CHUNK: Final = 64 * 1024

    def __init__(self, conn: TcpConnection, on_made: Callable[[TcpConnection], None]) -> None:
        super().__init__(conn, on_made)
        self._made = False
        self._early = bytearray()
        self._scratch = bytearray(self.EARLY_CHUNK)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._made:
            return super().get_buffer(sizehint)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._made:
            super().buffer_updated(nbytes)
        else:
            self._early += self._scratch[:nbytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made = True
        super().connection_made(transport)
        if self._early:
            self._replay(transport)

    def _replay(self, transport: asyncio.BaseTransport) -> None:
        if transport.is_closing():
            return
        if not self.conn._started:
            # Frames must wait for their owner, as on a plaintext link.
            asyncio.get_running_loop().call_later(0.01, self._replay, transport)
            return
        early, self._early = memoryview(self._early), bytearray()
        while early and not transport.is_closing():
            target = super().get_buffer(len(early))
            count = min(len(target), len(early))
            target[:count] = early[:count]
            early = early[count:]
            super().buffer_updated(count)


class _TlsAcceptor(asyncio.Protocol):
    """Holds an accepted socket until its TLS handshake is done."""

    def __init__(
        self,
        transport: TcpTransport,
        accepted: Callable[[TcpConnection], None],
        admission: Admission,
    ) -> None:
        self._owner = transport
        self._accepted = accepted
        self._admission = admission

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # start_tls takes over the socket
        self._owner._spawn(
            self._owner._tls_accept(
                transport, _peername(transport), self._accepted, self._admission
            )
        )

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # before start_tls took over: the handshake task reports it


def _peername(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(name)

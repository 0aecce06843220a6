"""The `grpc` transport: frames over gRPC, one bidirectional stream per link.

URLs are `grpc://HOST:PORT`; port 0 binds a free port and `Listener.url`
reports the real one. Each listener is one gRPC server serving one method,
`/fl_core.Link/Frames`, a stream-stream RPC whose messages are raw bytes
(identity serializers: each message is one envelope frame, no protobuf
message wraps the body). Each `connect` opens its own channel (its own
HTTP/2 connection, never shared with another link) and one call on it.

Threads: each `GrpcTransport` runs one asyncio loop on one daemon thread,
started by the first `listen` or `connect` and stopped by `close` (once gRPC's
own tasks on it have ended), and uses gRPC's asyncio API on it. The blocking
API would cost a thread per stream on each end (a server worker per RPC plus a
thread feeding or draining each stream), and a server's worker pool silently
queues streams beyond its size; a server with hundreds of sites must not need
hundreds of threads, and a transport must be able to join every thread it
started when it closes. So links cost tasks, not threads, like the tcp
transport; frame and close handlers run on the loop thread, and must not
block.

Dead peers: a peer whose process dies has its sockets closed by its kernel,
which ends the stream at once. A peer that stops answering (frozen, host
gone, network cut) is found by HTTP/2 keepalive pings, which both ends send:
a ping every `keepalive_time` seconds (default 30), and no answer within
`keepalive_timeout` seconds (default 10) ends the link, so `on_close` comes
at most about 40 s after a peer went silent. Pings go out even on an idle
stream, and servers accept them as often as a client sends them.

Admission (see `fl_core.spec.transport`): a stream a listener accepts is an
unadmitted link until its owner calls `admit()`. Its first frame may not
announce more than `HELLO_MAX_FRAME` bytes, and gRPC itself never takes a
message over `FRAGMENT` from a peer that dialed it (such peers cut their
frames into messages that size; see the connection module). gRPC would
otherwise take, and buffer, a whole message as large as the first frame
announced (16 MiB per stream, measured). The listener's receive window per
stream is fixed at `receive_window` bytes (default `RECEIVE_WINDOW`; gRPC's
bandwidth-delay probing, which grows it, is off on listeners): with it on, a
stream that is refused still had about 1-3 MiB pushed into it first, with it
off about 0.2 MiB. So an unadmitted stream costs about one fragment. The stream is
cancelled `hello_timeout` seconds after it arrived if not admitted by then,
and each listener holds at most `max_unadmitted` unadmitted streams, closing
the oldest. Below the streams, gRPC's own limits are set from the same
options: a socket must finish its HTTP/2 handshake (the client's preface and
settings; TLS) within `hello_timeout` (`grpc.server_handshake_timeout_ms`),
a connection with no stream is closed after `hello_timeout`
(`grpc.max_connection_idle_ms`), and one connection may open at most
`MAX_STREAMS_PER_CONNECTION` streams at once.

TLS: `tls: true` with `certfile`, `keyfile`, `cafile` (PEM files), or
`credentials` (PEM bytes from the security provider). Servers require a
client certificate from the CA unless `require_client_cert` is false. The
connecting end always checks the server's chain against the CA, and that the
server's certificate names the URL's host (an IP address against its IP
addresses): every participant's certificate chains to the same CA, so the
chain alone would let any of them pose as the server. Give server
certificates the host names (or IP addresses) clients use, or set
`server_name` to the name the server's certificate carries (gRPC's
`ssl_target_name_override`). A listener that fails the name check is refused
at once, with the names its certificate does carry. A listener gives the
client certificate its handshake verified as `Connection.peer_certificate`
(from the call's auth context); dialed links give None.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import urlparse

import grpc
from grpc import aio

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
from fl_plugins.transport_grpc import tls as tls_material
from fl_plugins.transport_grpc.connection import (
    CLOSE_GRACE,
    ClientConnection,
    GrpcConnection,
    ServerConnection,
)
from fl_plugins.transport_grpc.dial import (
    ACCEPTED,
    BACKOFF_MAX,
    BACKOFF_START,
    METHOD,
    SERVICE,
    address,
    dial,
    identity,
)
from fl_plugins.transport_grpc.fragments import FRAGMENT

log = logging.getLogger("fl_plugins.transport_grpc")

SCHEME: Final = "grpc"
KEEPALIVE_TIME: Final = 30.0
KEEPALIVE_TIMEOUT: Final = 10.0
RECEIVE_WINDOW: Final = 1024 * 1024
"""A listener's HTTP/2 receive window per stream: what a peer may send ahead of our reading.
It bounds a link's upload rate to about this much per round trip."""
MAX_STREAMS_PER_CONNECTION: Final = 4
"""A link is one stream on its own connection (a retried connect may briefly hold two)."""

T = TypeVar("T")


def parse_url(url: str) -> tuple[str, int]:
    """`grpc://host:port` -> (host, port); `CellError` if it is not one."""
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        raise CellError(f"bad grpc URL {url!r}: {exc}") from exc
    if parsed.scheme != SCHEME or not parsed.hostname or port is None:
        raise CellError(f"bad grpc URL {url!r}: expected grpc://HOST:PORT")
    return parsed.hostname, port


def _peer_address(peer: str) -> str:
    """gRPC's `ipv4:127.0.0.1:5000` / `ipv6:%5B::1%5D:5000` -> `127.0.0.1:5000` / `[::1]:5000`."""
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return urllib.parse.unquote(peer[len(prefix) :])
    return peer


def _option_error(name: str, problem: str) -> ConfigError:
    return ConfigError("job.yaml", f"components.transport.options.{name}", problem)


class GrpcListener(Listener):
    """One gRPC server; closing it refuses new links and keeps accepted ones."""

    def __init__(self, transport: GrpcTransport, server: aio.Server, url: str) -> None:
        self._transport = transport
        self.server: aio.Server | None = server
        """Dropped when the transport closes: a live gRPC object keeps gRPC's poller thread."""
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        self._transport._close_listener(self)


class GrpcTransport(Transport):
    """Frames over gRPC streams (TLS when `tls=True` or `credentials`); see the module docstring."""

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
        keepalive_time: float = KEEPALIVE_TIME,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_unadmitted: int = DEFAULT_MAX_UNADMITTED,
        receive_window: int = RECEIVE_WINDOW,
    ) -> None:
        self._hello_timeout, self._max_unadmitted = check_limits(
            hello_timeout, max_unadmitted, _option_error
        )
        if credentials is not None:
            if certfile or keyfile or cafile:
                raise ConfigError(
                    "job.yaml",
                    "components.transport.options.certfile",
                    "give either credentials or certfile/keyfile/cafile, not both",
                )
            tls_material.check(credentials)
        elif tls:
            credentials = tls_material.credentials_from_files(certfile, keyfile, cafile)
        self._credentials = credentials
        self._require_client_cert = require_client_cert
        self._max_body_size = max_body_size
        self._send_timeout = send_timeout
        if isinstance(receive_window, bool) or not (
            isinstance(receive_window, int) and receive_window >= FRAGMENT
        ):
            raise _option_error(
                "receive_window",
                f"must be an integer of at least {FRAGMENT}, not {receive_window!r}",
            )
        # A listener takes messages of at most FRAGMENT bytes (see the connection
        # module): gRPC never buffers more than that for a message nobody has
        # judged. It sends whole frames to the peers that dialed it.
        whole_frame = max_body_size + FRAGMENT
        common: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Without this, pings stop after two on a stream that carries no data.
            ("grpc.http2.max_pings_without_data", 0),
            # What really bounds the wait for a ping's answer in this gRPC
            # (its default is a minute, whatever keepalive_timeout_ms says).
            ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
        ]
        self._server_options: list[tuple[str, int | str]] = [
            *common,
            ("grpc.max_receive_message_length", FRAGMENT),
            ("grpc.max_send_message_length", whole_frame),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", receive_window),
            # Accept the peer's pings however often it is configured to send them.
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
            # A port in use is an error, as with tcp, not a second server on it.
            ("grpc.so_reuseport", 0),
            # Sockets that never get as far as a stream are not held either.
            ("grpc.server_handshake_timeout_ms", int(self._hello_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(self._hello_timeout * 1000)),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ]
        self._channel_options: list[tuple[str, int | str]] = [
            *common,
            ("grpc.max_receive_message_length", whole_frame),
            ("grpc.max_send_message_length", FRAGMENT),
            # One HTTP/2 connection per link: closing a link closes its socket.
            ("grpc.use_local_subchannel_pool", 1),
            # Retries would keep a copy of every message sent on the stream.
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_START * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX * 1000)),
        ]
        self._server_name = server_name
        if server_name:
            self._channel_options.append(("grpc.ssl_target_name_override", server_name))
        self._loops = LoopThread("fl-grpc-loop", "the grpc transport")
        # Touched only on the loop thread.
        self._listeners: set[GrpcListener] = set()
        self._closing: set[aio.Server] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._connections: set[GrpcConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting: set[asyncio.Task[Any]] = set()

    # --- the loop thread -----------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self._loops.run(coro, timeout)

    def _track(self, conn: GrpcConnection) -> None:
        self._connections.add(conn)
        conn.on_lost.append(self._connections.discard)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- listening ---------------------------------------------------------------

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        """Bind `grpc://host:port`; `CellError` if it cannot be bound."""
        host, port = parse_url(url)
        if self._credentials is not None and not tls_material.has_certificate(self._credentials):
            raise CellError(f"cannot listen on {url} with TLS: the credentials hold no certificate")
        return self._run(self._listen(host, port, url, on_connection), 30.0)

    async def _listen(
        self, host: str, port: int, url: str, on_connection: Callable[[Connection], None]
    ) -> GrpcListener:
        loop = asyncio.get_running_loop()
        admission = Admission("grpc", log, url, self._hello_timeout, self._max_unadmitted)

        async def frames(_requests: object, context: aio.ServicerContext[bytes, bytes]) -> None:
            conn = ServerConnection(
                loop,
                context,
                _peer_address(context.peer()),
                max_body_size=self._max_body_size,
                send_timeout=self._send_timeout,
                admitted=False,
            )
            self._track(conn)
            admission.add(conn)
            await context.send_initial_metadata((ACCEPTED,))
            try:
                on_connection(conn)
            except Exception:
                log.exception("grpc: on_connection for %s (listener %s) failed", conn.peer, url)
                conn.close()
            await conn.serve()

        handler = grpc.stream_stream_rpc_method_handler(
            frames, request_deserializer=identity, response_serializer=identity
        )
        server = aio.server(options=self._server_options)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
        )
        target = address(host, port)
        problem = ""
        try:
            if self._credentials is None:
                bound = server.add_insecure_port(target)
            else:
                creds = tls_material.server_credentials(
                    self._credentials, self._require_client_cert
                )
                bound = server.add_secure_port(target, creds)
        except RuntimeError as exc:  # gRPC's way of saying the address is taken or bad
            problem = str(exc)
        else:
            problem = "" if bound else f"gRPC could not bind {target}"
        if problem:
            await server.stop(None)
            # No gRPC object may stay reachable from the error's traceback:
            # while one lives, so does gRPC's poller thread.
            del server
            raise CellError(f"cannot listen on {url}: {problem}")
        await server.start()
        listener = GrpcListener(self, server, f"{SCHEME}://{address(host, bound)}")
        self._listeners.add(listener)
        return listener

    def _close_listener(self, listener: GrpcListener) -> None:
        def close() -> None:
            server = listener.server
            if listener not in self._listeners or server is None:
                return
            self._listeners.discard(listener)
            listener.server = None
            self._closing.add(server)
            # A shutdown stops listening at once and lets running streams go
            # on; the task ends when they have (or the transport stops it).
            task = asyncio.get_running_loop().create_task(server.stop(grace=_FOREVER))
            task.add_done_callback(lambda _: self._closing.discard(server))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

        self._loops.call_soon(close)

    # --- connecting ----------------------------------------------------------------

    def connect(self, url: str, timeout: float) -> Connection:
        """Connect, retrying until `timeout`; `TargetUnreachableError` then, or on `close`."""
        host, port = parse_url(url)
        try:
            return self._run(self._connect(host, port, url, timeout), timeout + 5.0)
        except TimeoutError:
            raise TargetUnreachableError(url, f"no connection within {timeout:g} s") from None
        except concurrent.futures.CancelledError:
            raise TargetUnreachableError(url, "the grpc transport closed") from None

    async def _connect(self, host: str, port: int, url: str, timeout: float) -> ClientConnection:
        task = asyncio.current_task()
        assert task is not None
        # Tracked so that closing the transport cancels it (see `_shutdown`).
        self._connecting.add(task)
        try:
            return await self._connect_once(host, port, url, timeout)
        finally:
            self._connecting.discard(task)

    async def _connect_once(
        self, host: str, port: int, url: str, timeout: float
    ) -> ClientConnection:
        channel, call = await dial(
            host,
            port,
            url,
            timeout,
            credentials=self._credentials,
            options=self._channel_options,
            server_name=self._server_name,
        )
        conn = ClientConnection(
            asyncio.get_running_loop(),
            channel,
            call,
            url,
            max_body_size=self._max_body_size,
            send_timeout=self._send_timeout,
        )
        self._track(conn)
        self._spawn(conn.run())
        return conn

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close listeners and links (on_close fires for each), stop the loop thread."""
        self._loops.stop(self._shutdown, CLOSE_GRACE * 2 + 10.0)

    async def _shutdown(self) -> None:
        # A connect still under way closes its channel as it is cancelled.
        for connecting in list(self._connecting):
            connecting.cancel()
        listeners = list(self._listeners)
        self._listeners.clear()
        servers = [*(x.server for x in listeners if x.server is not None), *self._closing]
        for conn in list(self._connections):
            conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.abort()
        # Stopping a server with no grace cancels whatever streams it still runs.
        await asyncio.gather(*(s.stop(None) for s in servers), return_exceptions=True)
        await asyncio.gather(*self._stopping, *self._tasks, return_exceptions=True)
        for conn in list(self._connections):
            conn.lost(CellError("the grpc transport closed"))
        for listener in listeners:
            listener.server = None
        self._closing.clear()
        await _drain_loop(CLOSE_GRACE)


async def _drain_loop(grace: float) -> None:
    """Let every other task on this loop end before it stops; cancel those left after `grace`.

    Cancelling a call or closing a channel does not end it at once: gRPC's own
    tasks for that call (the one that waits for its status, the one that
    starts it) end only once gRPC's core has reported the cancellation on the
    loop, a moment later. A task the stopped loop never runs again stays
    pending forever, and so do the call and the channel it holds: gRPC's core
    holds a reference to the future such a task waits on, so neither reference
    counting nor the garbage collector can free them. gRPC's poller thread
    runs as long as any gRPC asyncio object lives in the process, so one such
    task keeps that thread alive after the transport has closed.
    """
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    deadline = loop.time() + grace
    while pending := asyncio.all_tasks() - {current}:
        left = deadline - loop.time()
        if left <= 0:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=grace)
            return
        await asyncio.wait(pending, timeout=left)


_FOREVER: Final = 365 * 24 * 3600.0
"""The grace a closed listener gives its accepted streams: they end when their owners close them."""

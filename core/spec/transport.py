"""Transports: move frames between two cells.

A transport knows nothing of FQCNs, channels or routing: the cell layer above
it does all that. A transport listens on a URL, connects to a URL, and moves
`Frame`s over the resulting `Connection`s, in order, per connection.

Wire transports (tcp, grpc) carry `bytes`-like frame bodies and never look
inside them. Large payloads are split by the cell layer into a stream of
frames that share a `stream` header; a transport only needs to keep frames in
order and apply back-pressure in `send` (block, bounded, until the peer has
room). The in-process transport of the simulator sets `carries_objects`: its
frame bodies are Python objects handed over by reference, never encoded.

Admission (an obligation of every transport that accepts links from other
processes). Anyone who can reach a listener's port can open a link, so until
the link's owner has heard a valid hello a transport spends almost nothing on
it. A connection accepted by a listener starts *unadmitted*; its owner calls
`Connection.admit()` once the peer has introduced itself. Until then the
transport:

- refuses, by closing the link, any frame whose prefix + header + body is
  over `HELLO_MAX_FRAME` bytes, judging by what the frame announces, before
  it allocates the body or asks a `BodyBufferProvider` for it; it never
  allocates, nor asks the provider for, more than `HELLO_MAX_FRAME` bytes
  for one frame of an unadmitted link. Its own protocol's buffers count
  too: a gRPC message a listener takes is no larger; what flow control lets
  a peer push ahead of the transport's reading (an HTTP/2 window) stays at a
  fixed, documented size instead of growing with the link's bandwidth;
- closes the link if it is not admitted within `hello_timeout` seconds of
  being accepted (default `DEFAULT_HELLO_TIMEOUT`; a TLS handshake counts
  towards it), whether the peer is silent or trickles bytes;
- holds at most `max_unadmitted` unadmitted links per listener (default
  `DEFAULT_MAX_UNADMITTED`): when one more arrives at the cap, the OLDEST
  unadmitted link is closed. A flood of idle sockets then costs each of them
  its place within milliseconds, while a real peer, which says hello at once,
  is admitted long before the flood reaches it.

`hello_timeout` and `max_unadmitted` are factory options
(`factory(hello_timeout=0.5, max_unadmitted=8)`) that every listening
transport accepts. Connections made by `connect()` are admitted from the
start: the dialing side chose its peer. `admit()` on an admitted link is a
no-op. The in-process transport, which no other process can reach, has no
unadmitted links. `fl_core.testing.transport_contract_security.HostileInputContract`
checks all of this against a real listener.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from fl_core.spec import Register, hookspec

HELLO_MAX_FRAME: Final = 64 * 1024
"""The largest frame (prefix + header + body, in bytes) an unadmitted link may send."""
DEFAULT_HELLO_TIMEOUT: Final = 10.0
"""Seconds an accepted link has to be admitted before its transport closes it."""
DEFAULT_MAX_UNADMITTED: Final = 256
"""Unadmitted links a listener holds at once; one more closes the oldest."""


@dataclass(slots=True)
class Frame:
    """One unit a transport moves: string headers and an opaque body."""

    headers: dict[str, str] = field(default_factory=dict)
    body: object = b""


FrameHandler = Callable[[Frame], None]
CloseHandler = Callable[[BaseException | None], None]
BodyBufferProvider = Callable[[dict[str, str], int], memoryview | None]
"""`provider(headers, body_size)`: where to receive the body of the frame whose
header just arrived; a writable memoryview of exactly `body_size` bytes, or
None to let the transport allocate one."""


class Connection(ABC):
    """One bidirectional link to a peer.

    The owner calls `start(on_frame, on_close)` once, before frames flow. The
    transport then calls `on_frame` for each frame, and `on_close` exactly
    once when the link ends (`None` for an orderly close, else the cause).
    Frames sent by one thread arrive in the order sent; `on_frame` may be
    called from several threads at once (the in-process transport delivers
    on the sender's thread), so the owner must be thread-safe. Handlers must
    not block for long: they run on a transport or sender thread.
    """

    @property
    @abstractmethod
    def peer(self) -> str:
        """A printable address of the other end (for logs and errors)."""

    @abstractmethod
    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        """Begin delivering frames to `on_frame`."""

    @abstractmethod
    def send(self, frame: Frame) -> None:
        """Queue `frame` for the peer; thread-safe.

        Raises `fl_core.errors.CellError` if the connection is closed.
        """

    @abstractmethod
    def close(self) -> None:
        """Close the link; idempotent. `on_close(None)` follows."""

    def admit(self) -> None:  # noqa: B027 - a no-op for transports without remote peers
        """Lift the limits on a link accepted by a listener: its peer said hello.

        Called by the owner, from any thread, once the first frame proved
        acceptable; later frames may then be as large as the transport's
        normal limits allow, and the hello timeout and the listener's cap no
        longer apply. Idempotent; a no-op on a link made by `connect()`.
        Every transport that accepts links from other processes must
        override it (see "Admission" in the module docstring); the default
        suits only transports whose peers are all in this process.
        """

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER) as the TLS handshake verified it, or None.

        None when the link has no TLS, or its peer presented no certificate.
        A transport that speaks mutual TLS must give it on links its
        listeners accepted (the security provider binds it to the cell name
        the peer claims, see `SecurityProvider.admit`); on links made by
        `connect()` it may give it too. The default suits transports
        without TLS.
        """
        return None

    def receive_into(self, provider: BodyBufferProvider) -> None:  # noqa: B027 - optional
        """Offer buffers to receive frame bodies in place (optional).

        A transport that reads a stream of bytes may call `provider` on its
        receiving thread, in frame order, once a frame's header is known; if
        it returns a buffer, the body is received straight into it and
        `on_frame` gets that buffer (a memoryview) as the body. This is how
        a large model lands in its final arrays without a copy. Transports
        that receive whole messages ignore it (the default).
        """


class Listener(ABC):
    """A bound listening endpoint."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The real URL (port 0 in the request replaced by the bound port)."""

    @abstractmethod
    def close(self) -> None:
        """Stop accepting; connections already accepted stay up. Idempotent."""


class Transport(ABC):
    """A way to link cells: `listen` on one side, `connect` on the other."""

    schemes: ClassVar[tuple[str, ...]] = ()
    """URL schemes this transport serves, e.g. `("tcp",)`."""

    carries_objects: ClassVar[bool] = False
    """True only for transports that hand frame bodies over by reference."""

    @abstractmethod
    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        """Bind `url` and call `on_connection` for every accepted connection.

        Accepted connections start unadmitted (see "Admission" in the module
        docstring): the limits apply until their owner calls `admit()`.
        Raises `fl_core.errors.CellError` if the URL cannot be bound.
        """

    @abstractmethod
    def connect(self, url: str, timeout: float) -> Connection:
        """Connect to a listener at `url` within `timeout` seconds.

        Raises `fl_core.errors.TargetUnreachableError` if nobody listens there.
        """

    def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release resources shared by this transport's listeners and connections."""


class TransportHookSpecs:
    """Hooks for transport plugins."""

    @hookspec
    def fl_core_register_transports(self, register: Register) -> None:
        """Register transport factories.

        Called each time a registry is built (see `fl_core.spec`). Call
        `register(name, factory)`; `factory(**options)` must return a
        `Transport`. Do not open sockets or start threads here: do that in
        `Transport.listen` / `connect`. A transport that listens for other
        processes accepts the options `hello_timeout` (seconds) and
        `max_unadmitted` (links per listener); see "Admission" above.
        """

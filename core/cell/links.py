"""A cell's links and its route table: who is connected, and which link leads where.

`Links` owns every connection of one cell: the link to its parent, the links
of the children that joined at its listeners, and direct links to cells
elsewhere in the tree. It admits a joining link at its hello (see `door`),
checks link by link that each frame's origin may have come that way (a child
speaks for its own subtree, a direct link for its far end only, a parent
never for this cell's subtree), and answers the one routing question: which
link leads toward a given FQCN.

It knows headers, not messages: what an admitted frame means is the owning
cell's business, handed over through the `LinkEvents` it was built with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fl_core.cell.door import Door
from fl_core.cell.fqcn import SEPARATOR, is_under, validate
from fl_core.cell.message import Header
from fl_core.cell.parent import CONTROL, HELLO_OK, HELLO_REJECTED, ParentLink, connect_direct
from fl_core.cell.proof import KeyLookup
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.spec.security import AdmissionRefused, Identity
from fl_core.spec.transport import (
    BodyBufferProvider,
    Connection,
    Frame,
    FrameHandler,
    Listener,
    Transport,
)

__all__ = ["LinkEvents", "Links", "PeerCheck"]

log = logging.getLogger("fl_core.cell")


PeerCheck = Callable[["bytes | None", str], Identity]
"""`admit(certificate, name) -> Identity`: who the peer of an accepted link claiming
`name` is, given the certificate its transport verified; raises `AdmissionRefused`
(see `fl_core.spec.security.SecurityProvider.admit`)."""


@dataclass(frozen=True, slots=True)
class LinkEvents:
    """What the owning cell does with what its links bring."""

    frame: Callable[[Connection, Frame, bool], None]
    """`frame(conn, frame, from_parent)`: a frame of an admitted link whose
    origin may have sent it that way. Runs on the transport's thread."""
    refused: Callable[[Frame], None]
    """A frame dropped because its origin cannot have sent it over its link
    (already logged): a request of the cell's own coming back means a cycle."""
    closed: Callable[[Connection, str], None]
    """`closed(conn, detail)`: a link closed; the route table has forgotten it."""
    body_buffer: Callable[[Connection], BodyBufferProvider]
    """Where the transport may receive a frame's body of this link in place."""


class Links:
    """The links of the cell `fqcn` over `transport`, and the routes they make."""

    def __init__(self, fqcn: str, transport: Transport, events: LinkEvents) -> None:
        self.fqcn = fqcn
        self.transport = transport
        self._events = events
        self._lock = threading.Lock()
        self._children: dict[str, Connection] = {}
        self._direct: dict[str, Connection] = {}  # direct links, either way, by far end
        self._direct_keys: KeyLookup | None = None
        self._child_keys: KeyLookup | None = None
        self._peer_check: PeerCheck | None = None
        self._peers: dict[str, Identity] = {}  # who each accepted link proved to be
        self._parent: Connection | None = None
        self._parent_link: ParentLink | None = None
        self._listeners: list[Listener] = []
        self._closed = False

    # --- making links ------------------------------------------------------------

    def listen(self, url: str) -> str:
        """Accept joining cells at `url`; returns the real bound URL."""
        listener = self.transport.listen(url, self._accept)
        self._listeners.append(listener)
        return listener.url

    def connect_parent(self, url: str, timeout: float, reconnect: bool, key: bytes | None) -> None:
        """Join the parent listening at `url`; see `Cell.connect_parent`."""
        with self._lock:
            self._check_open()
            if self._parent is not None or self._parent_link is not None:
                where = self._parent_link.url if self._parent_link else "?"
                raise CellError(f"cell {self.fqcn!r} is already connected to a parent ({where})")
            link = ParentLink(self, url, timeout, reconnect, key)
            self._parent_link = link
        try:
            link.connect()
        except BaseException:
            link.close()  # a failed call leaves no reconnect thread behind
            with self._lock:
                self._parent_link = None
            raise

    def connect_direct(self, url: str, timeout: float, key: bytes) -> str:
        """Open a direct link to the cell at `url`; see `Cell.connect_direct`."""
        with self._lock:
            self._check_open()
        return connect_direct(self, url, timeout, key)

    def accept_direct(self, keys: KeyLookup) -> None:
        """Admit direct links from cells that prove the key `keys(name)` gives."""
        self._direct_keys = keys

    def require_proof(self, keys: KeyLookup) -> None:
        """Admit children only once they prove the key `keys(name)` gives."""
        self._child_keys = keys

    def check_peers(self, admit: PeerCheck) -> None:
        """Admit a link at any listener only if `admit(certificate, name)` accepts it.

        Asked before any secret is checked, for children and direct links
        alike: this is where a certificate's name is bound to the cells it
        may be. Every frame an admitted child later sends or relays must
        come from its own subtree, so the binding holds for what it forwards.
        """
        self._peer_check = admit

    def peer_identity(self, name: str) -> Identity | None:
        """Who the accepted link of the cell `name` proved to be (None if not known)."""
        with self._lock:
            return self._peers.get(name)

    def close_peers(self, untrusted: Callable[[Identity], bool]) -> list[str]:
        """Close every accepted link whose peer is `untrusted` now; their names."""
        with self._lock:
            names = [name for name, who in self._peers.items() if untrusted(who)]
            conns = [self._children.get(n) or self._direct.get(n) for n in names]
        for name, conn in zip(names, conns, strict=True):
            log.warning(
                "%s: closing the link of %s: its peer is no longer trusted", self.fqcn, name
            )
            if conn is not None:
                conn.close()
        return names

    def close_direct(self, name: str) -> None:
        """Close the direct link to `name`, if there is one."""
        with self._lock:
            conn = self._direct.pop(name, None)
        if conn is not None:
            conn.close()

    # --- what the handshakes of `parent` call ---------------------------------------

    def start(self, conn: Connection, on_frame: FrameHandler, *, parent: bool) -> None:
        """Start receiving on a link this cell opened; its close reaches the route table."""
        conn.receive_into(self._events.body_buffer(conn))
        conn.start(on_frame, lambda exc: self._link_closed(conn, exc, parent=parent))

    def set_parent(self, conn: Connection) -> None:
        """Route upward over `conn`, the link whose hello the parent just accepted."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._parent = conn
        if closed:
            conn.close()  # a reconnect that raced with close()

    def add_direct(self, name: str, conn: Connection) -> bool:
        """Route to `name` over `conn`, a direct link it accepted; False if it may not."""
        try:
            validate(name)
        except CellError:
            return False
        with self._lock:
            if self._closed or self._related(name):
                return False
            old = self._direct.get(name)
            self._direct[name] = conn
        if old is not None:
            old.close()
        return True

    def from_parent(self, conn: Connection, frame: Frame) -> None:
        """A frame that came down from the parent."""
        if is_under(frame.headers.get(Header.ORIGIN, ""), self.fqcn):
            # Nothing from this cell's own subtree comes down from its parent.
            self._refuse(frame, "its parent")
        else:
            self._events.frame(conn, frame, True)

    def from_direct(self, conn: Connection, name: str, frame: Frame) -> None:
        """A frame that came over the direct link to `name`."""
        headers = frame.headers
        if headers.get(Header.ORIGIN) != name:
            self._refuse(frame, f"direct link {name}")  # it speaks for itself only
        elif headers.get(Header.DESTINATION) != self.fqcn:
            # Nobody may use a direct link to reach anyone but its other end.
            self._refuse(frame, f"direct link {name} (not addressed here)")
        else:
            self._events.frame(conn, frame, False)

    # --- routes ----------------------------------------------------------------------

    def route(self, target: str, *, from_parent: bool = False) -> Connection | None:
        """The link toward `target`, or None when it is this cell.

        Raises `TargetUnreachableError` when no link leads there (a frame
        `from_parent` never goes back up), and `CellError` once closed.
        """
        with self._lock:
            if self._closed:  # inline: this runs for every frame sent or forwarded
                raise CellError(f"cell {self.fqcn!r} is closed")
            if target == self.fqcn:
                return None
            link = self._direct.get(target)  # never a name of this cell's subtree
            if link is not None:
                return link
            # The nearest ancestor of `target` (or itself) that is a child: a dict
            # lookup per level of the name, not a scan of every child (a server
            # has thousands).
            name = target
            while True:
                link = self._children.get(name)
                if link is not None:
                    return link
                if SEPARATOR not in name:
                    break
                name = name.rsplit(SEPARATOR, 1)[0]
            # A name under this cell that no child holds is nowhere: sending it
            # up would only bring it back down.
            if self._parent is not None and not from_parent and not is_under(target, self.fqcn):
                return self._parent
        raise TargetUnreachableError(target, f"no route from {self.fqcn}")

    def send_toward(self, target: str, frame: Frame) -> None:
        """Send `frame` on the link toward `target` (nothing, if it is this cell).

        Raises `CellError` (`TargetUnreachableError` when there is no route).
        """
        link = self.route(target)
        if link is not None:
            link.send(frame)

    @property
    def parent_url(self) -> str | None:
        """The URL of the parent this cell connects to, if it has one."""
        with self._lock:
            return self._parent_link.url if self._parent_link is not None else None

    def link_to(self, name: str) -> Connection | None:
        """The link of the child or direct peer named exactly `name`, if connected."""
        with self._lock:
            return self._direct.get(name) or self._children.get(name)

    def children(self) -> list[str]:
        """Names of the directly connected child cells."""
        with self._lock:
            return sorted(self._children)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> bool:
        """Admit and route nothing more, and stop reconnecting; False if already closed.

        The links stay up until `disconnect`, so that whoever waits on them
        can first be told why, in the cell's own words.
        """
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            parent_link = self._parent_link
        if parent_link is not None:
            parent_link.close()
        return True

    def disconnect(self) -> None:
        """Close the listeners and every link (after `close`)."""
        with self._lock:
            links = list(self._children.values()) + list(self._direct.values())
            links += [self._parent] if self._parent else []
        for listener in self._listeners:
            listener.close()
        for link in links:
            link.close()

    # --- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        """Raise if closed; the caller holds the lock."""
        if self._closed:
            raise CellError(f"cell {self.fqcn!r} is closed")

    def _related(self, name: str) -> bool:
        """Whether `name` is in this cell's subtree or one of its ancestors."""
        return is_under(name, self.fqcn) or is_under(self.fqcn, name)

    def _refuse(self, frame: Frame, source: str) -> None:
        origin = frame.headers.get(Header.ORIGIN, "")
        log.warning("%s: dropped a frame from %s: origin %r", self.fqcn, source, origin)
        self._events.refused(frame)

    def _accept(self, conn: Connection) -> None:
        """A link that arrived at a listener: admit it at its hello, then check each frame."""
        proved: list[Identity] = []  # who the peer check says this link is

        def key_for(name: str, direct: bool) -> bytes | None:
            if self._peer_check is not None:
                try:
                    proved.append(self._peer_check(conn.peer_certificate, name))
                except AdmissionRefused:
                    raise
                except Exception as exc:
                    log.exception("%s: checking the certificate of %s failed", self.fqcn, name)
                    raise AdmissionRefused(
                        f"the certificate check failed: {type(exc).__name__}"
                    ) from exc
            return self._key_for(name, direct)

        door = Door(self.fqcn, key_for)
        admitted: dict[str, str] = {}  # "name", and "direct" for a direct link

        def on_frame(frame: Frame) -> None:
            name = admitted.get("name")
            if name is None:
                self._on_hello(conn, frame, door, admitted, proved)
            elif admitted.get("direct"):
                self.from_direct(conn, name, frame)
            elif is_under(frame.headers.get(Header.ORIGIN, ""), name):
                self._events.frame(conn, frame, False)
            else:
                # A child speaks for its own subtree only.
                self._refuse(frame, f"child {name}")

        def on_close(exc: BaseException | None) -> None:
            if "name" not in admitted and door.challenged:
                log.warning(
                    "%s: refused a connection from %r at %s: it left without answering "
                    "the challenge (it does not hold the credential of that name)",
                    self.fqcn,
                    door.claimed,
                    conn.peer,
                )
            self._link_closed(conn, exc, parent=False)

        conn.receive_into(self._events.body_buffer(conn))
        conn.start(on_frame, on_close)

    def _key_for(self, name: str, direct: bool) -> bytes | None:
        """The secret `name` must prove to join this way; None if it need prove nothing.

        Raises `AdmissionRefused` with the reason when it may not join at all.
        """
        if direct and self._related(name):
            raise AdmissionRefused(
                f"{name!r} is this cell's own subtree or an ancestor: the tree reaches it"
            )
        keys = self._direct_keys if direct else self._child_keys
        if keys is None:
            if direct:
                raise AdmissionRefused(f"{self.fqcn} accepts no direct links")
            return None
        try:
            key = keys(name)
        except AdmissionRefused:
            raise
        except Exception as exc:
            log.exception("%s: looking up the credential of %s failed", self.fqcn, name)
            raise AdmissionRefused(f"the credential check failed: {type(exc).__name__}") from exc
        if key is None:
            return None  # proved otherwise (its certificate): no secret to prove
        if not key:
            raise AdmissionRefused(f"{self.fqcn} has no credential for {name!r}")
        return key

    def _on_hello(
        self,
        conn: Connection,
        frame: Frame,
        door: Door,
        admitted: dict[str, str],
        proved: list[Identity],
    ) -> None:
        """A frame of a link not yet admitted: its hello, or its answer to a challenge."""
        step = door.step(frame.headers)
        problem = step.refuse
        if step.challenge is not None:
            with self._lock:
                problem = self._name_taken(door.claimed)  # before the work of a proof
            if not problem:
                conn.send(Frame(step.challenge))
                return
        if not problem:
            with self._lock:
                # Checked under the lock: close() would miss a link added after it.
                problem = self._name_taken(step.admit)
                if not problem:
                    (self._direct if step.direct else self._children)[step.admit] = conn
                    admitted.update(name=step.admit, direct="1" if step.direct else "")
                    if proved:
                        self._peers[step.admit] = proved[-1]
        if problem:
            self._refuse_hello(conn, door.claimed, problem)
            return
        conn.admit()  # the transport's pre-hello limits end here
        # Named, so a cell that opened a direct link learns whom it reached.
        conn.send(Frame({CONTROL: HELLO_OK, Header.ORIGIN: self.fqcn, **step.extra}))

    def _name_taken(self, name: str) -> str:
        """Why `name` cannot join now, or ""; the caller holds the lock."""
        if self._closed:
            return f"cell {self.fqcn!r} is closed"
        if name in self._children or name in self._direct or name == self.fqcn:
            return f"a cell named {name!r} is already connected"
        return ""

    def _refuse_hello(self, conn: Connection, name: str, problem: str) -> None:
        who = f"{name!r} at {conn.peer}" if name else conn.peer
        log.warning("%s: refused a connection from %s: %s", self.fqcn, who, problem)
        try:
            conn.send(Frame({CONTROL: HELLO_REJECTED, Header.ERROR: problem}))
        except CellError:
            pass  # it is gone already
        conn.close()

    def _link_closed(self, conn: Connection, exc: BaseException | None, parent: bool) -> None:
        with self._lock:
            lost_parent = parent and self._parent is conn
            if lost_parent:
                self._parent = None
            parent_link = self._parent_link if lost_parent and not self._closed else None
            for table in (self._children, self._direct):
                for name in [n for n, c in table.items() if c is conn]:
                    del table[name]
                    self._peers.pop(name, None)
        self._events.closed(conn, "the link to it closed" + (f" ({exc})" if exc else ""))
        if parent_link is not None:
            parent_link.lost()

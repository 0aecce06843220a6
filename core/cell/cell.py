"""A cell: one addressable endpoint of the cell network.

Cells form a tree by connection: a cell may listen for children and may
connect to one parent. A message to any FQCN is routed along the tree: to
this cell, to the child whose subtree holds the target, or up to the parent.
Handlers are registered per (channel, topic) and run on a shared dispatcher
pool, never on a transport's receiving thread.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, wait

from fl_core.cell.channels import Channel
from fl_core.cell.door import Door
from fl_core.cell.fqcn import SEPARATOR, validate
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.parent import (
    CONTROL,
    HELLO,
    HELLO_OK,
    HELLO_REJECTED,
    ParentLink,
    connect_direct,
)
from fl_core.cell.payload import PayloadRefusedError
from fl_core.cell.pending import PendingRequest, PendingRequests
from fl_core.cell.proof import AdmissionRefused, KeyLookup
from fl_core.cell.relay import RelayedRequests
from fl_core.cell.resources import CellResources
from fl_core.cell.streams import StreamEngine, StreamSettings
from fl_core.errors import (
    CellError,
    FlCoreError,
    TargetUnreachableError,
)
from fl_core.spec.transport import Connection, Frame, Listener, Transport

__all__ = [
    "DEFERRED",
    "MAX_HOPS",
    "AdmissionRefused",
    "Cell",
    "CellResources",
    "Handler",
    "KeyLookup",
]

log = logging.getLogger(__name__)

_HELLO = HELLO
_HELLO_OK = HELLO_OK
_HELLO_REJECTED = HELLO_REJECTED
_CONTROL = CONTROL

DEFERRED = object()
"""Returned by a handler that will answer later with `Cell.reply`."""

MAX_HOPS = 32
"""Relays a message may pass before it is refused: a cycle of misconnected
cells (each the other's parent) must not bounce a message forever."""

Handler = Callable[[Message], object]


class Cell:
    """An endpoint of the cell network named by an FQCN."""

    def __init__(
        self,
        fqcn: str,
        transport: Transport,
        resources: CellResources | None = None,
        streams: StreamSettings | None = None,
    ) -> None:
        self.fqcn = validate(fqcn)
        self.transport = transport
        self._owns_resources = resources is None
        self.resources = resources or CellResources()
        self._lock = threading.Lock()
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._streaming: set[tuple[str, str]] = set()
        self._streams = StreamEngine(self, streams or StreamSettings())
        self._children: dict[str, Connection] = {}
        self._direct: dict[str, Connection] = {}  # direct links, either way, by far end
        self._direct_keys: KeyLookup | None = None
        self._child_keys: KeyLookup | None = None
        self._parent: Connection | None = None
        self._parent_link: ParentLink | None = None
        self._listeners: list[Listener] = []
        self._pending = PendingRequests(self.resources.timer)
        self._relayed = RelayedRequests(self.resources.timer)
        self._ids = itertools.count(1)
        # Unguessable, so a cell cannot even aim a reply at another cell's request.
        self._id_prefix = secrets.token_hex(8) + "-"
        self._closed = False

    # --- wiring ----------------------------------------------------------------

    def listen(self, url: str) -> str:
        """Accept child cells at `url`; returns the real bound URL."""
        listener = self.transport.listen(url, self._on_connection)
        self._listeners.append(listener)
        return listener.url

    def connect_parent(
        self,
        url: str,
        timeout: float = 10.0,
        *,
        reconnect: bool = True,
        key: bytes | None = None,
    ) -> None:
        """Connect to the parent cell listening at `url` and introduce this cell.

        Returns once the parent has accepted the name; raises
        `TargetUnreachableError` if it cannot connect and `CellError` if the
        parent refuses (for example, the name is taken, or this cell could
        not prove the credential it asked for). With `key`, this cell proves
        it when asked, and accepts only a parent that asks and then proves
        the same key (see `fl_core.cell.proof`). With `reconnect`, a link
        that later drops is re-established in the background with backoff,
        and routing through the parent resumes once it is back.
        """
        with self._lock:
            if self._closed:
                raise CellError(f"cell {self.fqcn!r} is closed")
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

    def connect_direct(self, url: str, timeout: float = 10.0, *, key: bytes) -> str:
        """Open a direct link to the cell at `url` (not a parent); returns its name.

        Messages to that cell then take the link instead of the tree; if it
        closes they take the tree again. The far end admits the link only if
        it `accept_direct`s and this cell proves the `key` it expects for this
        cell's name; the far end proves the same key in turn. See
        `fl_core.cell.parent.connect_direct`.
        """
        with self._lock:
            if self._closed:
                raise CellError(f"cell {self.fqcn!r} is closed")
        return connect_direct(self, url, timeout, key)

    def accept_direct(self, keys: KeyLookup) -> None:
        """Accept direct links at this cell's listeners, from cells that prove their key.

        `keys(name)` gets the name the caller claims and returns the secret
        it must prove it holds, or raises `AdmissionRefused` with the reason.
        Without it every direct link is refused: a name alone proves nothing.
        A cell never admits a name in its own subtree or one of its
        ancestors, whatever `keys` says.
        """
        self._direct_keys = keys

    def require_proof(self, keys: KeyLookup) -> None:
        """Admit a child at this cell's listeners only once it proves its key.

        `keys(name)` gets the name a joining child claims and returns the
        secret it must prove it holds (by challenge/response: the secret
        never travels), or raises `AdmissionRefused` with the reason, which
        the child is told and this cell logs as a warning. Without it, any
        cell may join as a child under any free name: right for cells of
        one process, never for a listener other processes can reach.
        """
        self._child_keys = keys

    def close_direct(self, name: str) -> None:
        """Close the direct link to `name`, if there is one; the tree carries on."""
        with self._lock:
            conn = self._direct.pop(name, None)
        if conn is not None:
            conn.close()

    def _key_for(self, name: str, direct: bool) -> bytes | None:
        """The secret `name` must prove to join this way; None if it need prove nothing.

        Raises `AdmissionRefused` with the reason when it may not join at all.
        """
        if direct and (_within(name, self.fqcn) or _within(self.fqcn, name)):
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
        if not key:
            raise AdmissionRefused(f"{self.fqcn} has no credential for {name!r}")
        return key

    def _add_direct(self, name: str, conn: Connection) -> bool:
        try:
            validate(name)
        except CellError:
            return False
        with self._lock:
            if self._closed or _within(name, self.fqcn) or _within(self.fqcn, name):
                return False
            old = self._direct.get(name)
            self._direct[name] = conn
        if old is not None:
            old.close()
        return True

    def _on_direct_frame(self, conn: Connection, name: str, frame: Frame) -> None:
        headers = frame.headers
        if headers.get(Header.ORIGIN) != name:
            self._refuse_origin(frame, f"direct link {name}")  # it speaks for itself only
        elif headers.get(Header.DESTINATION) != self.fqcn:
            # Nobody may use a direct link to reach anyone but its other end.
            self._refuse_origin(frame, f"direct link {name} (not addressed here)")
        else:
            self._on_frame(conn, frame, from_parent=False)

    def _set_parent(self, conn: Connection) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._parent = conn
        if closed:
            conn.close()  # a reconnect that raced with close()

    def _on_connection(self, conn: Connection) -> None:
        door = Door(self.fqcn, self._key_for)
        admitted: dict[str, str] = {}  # "name", and "direct" for a direct link

        def on_frame(frame: Frame) -> None:
            name = admitted.get("name")
            if name is None:
                self._on_hello(conn, frame, door, admitted)
            elif admitted.get("direct"):
                self._on_direct_frame(conn, name, frame)
            elif _within(frame.headers.get(Header.ORIGIN, ""), name):
                self._on_frame(conn, frame, from_parent=False)
            else:
                # A child speaks for its own subtree only.
                self._refuse_origin(frame, f"child {name}")

        def on_close(exc: BaseException | None) -> None:
            if "name" not in admitted and door.challenged:
                log.warning(
                    "%s: refused a connection from %r at %s: it left without answering "
                    "the challenge (it does not hold the credential of that name)",
                    self.fqcn,
                    door.claimed,
                    conn.peer,
                )
            self._on_link_closed(conn, exc, parent=False)

        conn.receive_into(self._streams.body_buffer_for(conn))
        conn.start(on_frame, on_close)

    def _on_hello(
        self, conn: Connection, frame: Frame, door: Door, admitted: dict[str, str]
    ) -> None:
        """A frame of a link not yet admitted: its hello, or its answer to a challenge."""
        step = door.step(frame.headers)
        problem = step.refuse
        if step.challenge is not None:
            problem = self._name_taken(door.claimed)  # before the work of a proof
            if not problem:
                conn.send(Frame(step.challenge))
                return
        if not problem:
            with self._lock:
                # Checked under the lock: close() would miss a link added after it.
                problem = self._name_taken_locked(step.admit)
                if not problem:
                    (self._direct if step.direct else self._children)[step.admit] = conn
                    admitted.update(name=step.admit, direct="1" if step.direct else "")
        if problem:
            self._refuse_hello(conn, door.claimed, problem)
            return
        conn.admit()  # the transport's pre-hello limits end here
        # Named, so a cell that opened a direct link learns whom it reached.
        conn.send(Frame({_CONTROL: _HELLO_OK, Header.ORIGIN: self.fqcn, **step.extra}))

    def _name_taken(self, name: str) -> str:
        with self._lock:
            return self._name_taken_locked(name)

    def _name_taken_locked(self, name: str) -> str:
        if self._closed:
            return f"cell {self.fqcn!r} is closed"
        if name in self._children or name in self._direct or name == self.fqcn:
            return f"a cell named {name!r} is already connected"
        return ""

    def _refuse_hello(self, conn: Connection, name: str, problem: str) -> None:
        who = f"{name!r} at {conn.peer}" if name else conn.peer
        log.warning("%s: refused a connection from %s: %s", self.fqcn, who, problem)
        try:
            conn.send(Frame({_CONTROL: _HELLO_REJECTED, Header.ERROR: problem}))
        except CellError:
            pass  # it is gone already
        conn.close()

    def _on_link_closed(self, conn: Connection, exc: BaseException | None, parent: bool) -> None:
        with self._lock:
            lost_parent = parent and self._parent is conn
            if lost_parent:
                self._parent = None
            gone = [n for n, c in self._children.items() if c is conn]
            parent_link = self._parent_link if lost_parent and not self._closed else None
            for name in gone:
                del self._children[name]
            for name in [n for n, c in self._direct.items() if c is conn]:
                del self._direct[name]
        detail = "the link to it closed" + (f" ({exc})" if exc else "")
        self._pending.fail_link(conn, detail)
        self._streams.link_closed(conn, detail)
        if parent_link is not None:
            parent_link.lost()
        for request in self._relayed.lost(conn):
            detail = f"the link from {self.fqcn} toward it closed"
            self._send_reply(request, Status.UNREACHABLE, None, {Header.ERROR: detail})

    def streams_in_flight(self) -> dict[str, int]:
        """Streams this cell is sending, receiving and relaying right now."""
        return self._streams.counts()

    def children(self) -> list[str]:
        """Names of the directly connected child cells."""
        with self._lock:
            return sorted(self._children)

    # --- handlers ----------------------------------------------------------------

    def register_handler(
        self, channel: Channel | str, topic: str, handler: Handler, *, streaming: bool = False
    ) -> None:
        """Call `handler(message)` for requests and fire-and-forget messages.

        The handler's return value is the reply payload (ignored for
        fire-and-forget). Return `DEFERRED` to answer later with `reply`. An
        exception becomes a `RemoteError` at the requester. Handlers run on
        the shared dispatcher pool: they must not block waiting for another
        request's reply.

        With `streaming=True` the handler is called as soon as a large
        payload starts to arrive, and `message.payload` is an
        `IncomingPayload` to consume while the rest travels (a model array
        by array); whatever it leaves unconsumed is dropped when it returns,
        unless it returns `DEFERRED`: then whoever replies later must
        consume the payload or `discard()` it.
        """
        key = (str(channel), topic)
        self._handlers[key] = handler
        if streaming:
            self._streaming.add(key)
        else:
            self._streaming.discard(key)

    # --- sending ---------------------------------------------------------------

    def request_async(
        self,
        target: str,
        channel: Channel | str,
        topic: str,
        payload: object = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> Future[Message]:
        """Send a request; the future gets the reply or a `CellError`.

        Cancelling the future forgets the request; a late reply is dropped.
        """
        msg_id = f"{self.fqcn}#{self._id_prefix}{next(self._ids)}"
        future: Future[Message] = Future()
        try:
            validate(target)
            message = self._message(target, channel, topic, payload, MessageType.REQUEST, headers)
            message.headers[Header.MSG_ID] = msg_id
            message.headers[Header.TIMEOUT] = f"{timeout:g}"
            link = self._route(target, from_parent=False)
        except CellError as exc:
            future.set_exception(exc)
            return future
        self._pending.add(
            msg_id, PendingRequest(future, target, str(channel), topic, timeout, link)
        )
        if future.done():
            return future
        # A streamed payload must not outlive its request (timed out, answered early).
        future.add_done_callback(lambda _: self._streams.request_finished(msg_id))
        try:
            self._deliver(link, message)
        except CellError as exc:
            self._pending.fail(msg_id, exc)
        return future

    def request(
        self,
        target: str,
        channel: Channel | str,
        topic: str,
        payload: object = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Send a request and wait for the reply message.

        Raises `TargetUnreachableError`, `RequestTimeoutError`, `NoHandlerError`
        or `RemoteError`.
        """
        return self.request_async(target, channel, topic, payload, timeout, headers).result()

    def fire(
        self,
        target: str,
        channel: Channel | str,
        topic: str,
        payload: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a message that gets no reply. Raises if there is no route."""
        validate(target)
        message = self._message(target, channel, topic, payload, MessageType.FIRE, headers)
        self._deliver(self._route(target, from_parent=False), message)

    def broadcast(
        self,
        targets: Iterable[str],
        channel: Channel | str,
        topic: str,
        payload: object = None,
        timeout: float = 30.0,
    ) -> dict[str, Message | CellError]:
        """Send one request to each target; each gets its reply or its error."""
        futures = {t: self.request_async(t, channel, topic, payload, timeout) for t in targets}
        wait(futures.values())
        results: dict[str, Message | CellError] = {}
        for target, future in futures.items():
            exc = future.exception()
            if exc is None:
                results[target] = future.result()
            elif isinstance(exc, CellError):
                results[target] = exc
            else:
                raise exc
        return results

    def reply(self, request: Message, payload: object = None, **headers: str) -> None:
        """Answer `request` (from a handler that returned `DEFERRED`).

        A reply to a requester that is gone (or gave up) is dropped. Raises
        `CellError` if the transport cannot carry `payload`; the requester
        then gets a `RemoteError` saying so instead of waiting for its timeout.
        """
        refused = self._send_reply(request, Status.OK, payload, headers)
        if refused is not None:
            raise refused

    # --- internals ---------------------------------------------------------------

    def _message(
        self,
        target: str,
        channel: Channel | str,
        topic: str,
        payload: object,
        kind: MessageType,
        extra: Mapping[str, str] | None,
    ) -> Message:
        headers = dict(extra or {})
        headers.update(
            {
                Header.CHANNEL: str(channel),
                Header.TOPIC: topic,
                Header.ORIGIN: self.fqcn,
                Header.DESTINATION: target,
                Header.MSG_TYPE: kind,
            }
        )
        return Message(headers, payload)

    def _route(self, target: str, from_parent: bool) -> Connection | None:
        """The link toward `target`, or None when it is this cell."""
        with self._lock:
            if self._closed:
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
            if self._parent is not None and not from_parent and not _within(target, self.fqcn):
                return self._parent
        raise TargetUnreachableError(target, f"no route from {self.fqcn}")

    def _deliver(self, link: Connection | None, message: Message) -> None:
        if link is None:
            self._on_message(message)
            return
        try:
            if self.transport.carries_objects:
                link.send(Frame(message.headers, message.payload))
            else:
                self._streams.send(link, message)
        except (TargetUnreachableError, PayloadRefusedError):
            raise
        except CellError as exc:
            raise TargetUnreachableError(message.destination, str(exc)) from exc

    def _on_frame(self, conn: Connection, frame: Frame, from_parent: bool) -> None:
        message = Message(frame.headers, None)
        if from_parent and _within(message.origin, self.fqcn):
            # Nothing from this cell's own subtree comes down from its parent.
            self._refuse_origin(frame, "its parent")
            return
        target = message.destination
        try:
            link = self._route(target, from_parent)
        except CellError as exc:
            log.info("%s: cannot forward to %s: %s", self.fqcn, target, exc)
            if message.get(Header.MSG_TYPE) == MessageType.REQUEST:
                detail = exc.detail if isinstance(exc, TargetUnreachableError) else str(exc)
                self._send_reply(message, Status.UNREACHABLE, None, {Header.ERROR: detail})
            return
        if link is None:
            local = self._streams.on_frame(conn, frame)
            if local is not None:
                self._on_message(local)
            return
        hops = _hops(frame) + 1
        if hops > MAX_HOPS:
            log.warning("%s: dropped a message to %s: relayed %d times", self.fqcn, target, hops)
            if message.get(Header.MSG_TYPE) == MessageType.REQUEST:
                detail = f"relayed more than {MAX_HOPS} times (are cells connected in a cycle?)"
                self._send_reply(message, Status.UNREACHABLE, None, {Header.ERROR: detail})
            return
        if not self._streams.on_relay(conn, link, frame):
            return  # refused or stale stream frame; whoever waits was told
        # A copy: over the in-process transport the headers dict is shared
        # with the sender.
        kind = message.get(Header.MSG_TYPE)
        if kind == MessageType.REQUEST:
            self._relayed.forwarded(message, link)
        elif kind == MessageType.REPLY:
            self._relayed.answered(message.get(Header.IN_REPLY_TO))
        try:
            link.send(Frame({**frame.headers, Header.HOPS: str(hops)}, frame.body))
        except CellError as exc:
            self._streams.relay_failed(frame, f"{self.fqcn} could not forward it: {exc}")
            if kind == MessageType.REQUEST:
                self._relayed.answered(message.get(Header.MSG_ID))
                self._send_reply(message, Status.UNREACHABLE, None, {Header.ERROR: str(exc)})

    def _refuse_origin(self, frame: Frame, source: str) -> None:
        """Drop a frame whose origin cannot have sent it over the link it came on.

        A request of this cell's own that comes back is a cycle of
        misconnected cells: it fails here, saying so. Nothing else is
        answered, since an answer would go to whoever the forger named.
        """
        message = Message(frame.headers, None)
        log.warning("%s: dropped a frame from %s: origin %r", self.fqcn, source, message.origin)
        if message.origin == self.fqcn and message.get(Header.MSG_TYPE) == MessageType.REQUEST:
            detail = f"the request came back to {self.fqcn} (are cells connected in a cycle?)"
            self._pending.fail(
                message.get(Header.MSG_ID), TargetUnreachableError(message.destination, detail)
            )

    def _wants_stream(self, message: Message) -> bool:
        """Whether a stream carrying `message` goes to a streaming handler as it arrives."""
        return (
            message.get(Header.MSG_TYPE) in (MessageType.REQUEST, MessageType.FIRE)
            and (message.channel, message.topic) in self._streaming
        )

    def _refuse_request(self, request: Message, reason: str) -> None:
        """Answer a request whose payload this cell refused."""
        self._send_reply(request, Status.HANDLER_ERROR, None, {Header.ERROR: reason})

    def _on_message(self, message: Message) -> None:
        kind = message.get(Header.MSG_TYPE)
        if kind == MessageType.REPLY:
            self._pending.on_reply(message)
            return
        if kind not in (MessageType.REQUEST, MessageType.FIRE):
            log.warning("%s: dropped a %r message from %s", self.fqcn, kind, message.origin)
            return
        if self._wants_stream(message):
            self._streams.wrap_for_streaming(message)
        handler = self._handlers.get((message.channel, message.topic))
        if handler is None:
            if kind == MessageType.REQUEST:
                problem = f"no handler for {message.channel}/{message.topic} at {self.fqcn}"
                self._send_reply(message, Status.NO_HANDLER, None, {Header.ERROR: problem})
            else:
                log.warning(
                    "%s: dropped %s/%s: no handler", self.fqcn, message.channel, message.topic
                )
            return
        try:
            self.resources.dispatcher.submit(self._run_handler, handler, message)
        except RuntimeError:
            log.info("%s: dropped %s/%s: shutting down", self.fqcn, message.channel, message.topic)
            if kind == MessageType.REQUEST:
                # Answer now: the requester would otherwise wait for its timeout.
                problem = f"cell {self.fqcn} is shutting down"
                self._send_reply(message, Status.UNREACHABLE, None, {Header.ERROR: problem})

    def _run_handler(self, handler: Handler, message: Message) -> None:
        try:
            result = handler(message)
        except Exception as exc:
            if isinstance(message.payload, IncomingPayload):
                message.payload.discard()
            if isinstance(exc, FlCoreError):
                # A refusal with its reason (a bad job package, an unknown job):
                # the requester gets the reason; a traceback here says nothing more.
                log.warning(
                    "%s: %s/%s from %s refused: %s",
                    self.fqcn,
                    message.channel,
                    message.topic,
                    message.origin,
                    exc,
                )
            else:
                log.error(
                    "%s: handler for %s/%s failed:\n%s",
                    self.fqcn,
                    message.channel,
                    message.topic,
                    traceback.format_exc(),
                )
            if message.get(Header.MSG_TYPE) == MessageType.REQUEST:
                detail = f"{type(exc).__name__}: {exc}"
                self._send_reply(message, Status.HANDLER_ERROR, None, {Header.ERROR: detail})
            return
        if isinstance(message.payload, IncomingPayload) and result is not DEFERRED:
            message.payload.discard()  # a deferring handler keeps it, to consume or discard
        if message.get(Header.MSG_TYPE) == MessageType.REQUEST and result is not DEFERRED:
            refused = self._send_reply(message, Status.OK, result, {})
            if refused is not None:
                log.error(
                    "%s: handler for %s/%s returned an unsendable reply: %s",
                    self.fqcn,
                    message.channel,
                    message.topic,
                    refused,
                )

    def _send_reply(
        self, request: Message, status: Status, payload: object, extra: Mapping[str, str]
    ) -> CellError | None:
        """Send a reply; returns the refusal if the transport cannot carry `payload`."""
        reply = self._message(
            request.origin,
            request.channel,
            request.topic,
            payload,
            MessageType.REPLY,
            extra,
        )
        reply.headers[Header.IN_REPLY_TO] = request.get(Header.MSG_ID)
        reply.headers[Header.STATUS] = status
        try:
            self._deliver(self._route(request.origin, from_parent=False), reply)
        except PayloadRefusedError as exc:
            # The requester would wait for its timeout; tell it what happened.
            self._send_reply(request, Status.HANDLER_ERROR, None, {Header.ERROR: str(exc)})
            return exc
        except CellError as exc:
            # The requester is gone (closed, or its link dropped): nobody waits.
            log.info("%s: reply to %s lost: %s", self.fqcn, request.origin, exc)
        return None

    def close(self) -> None:
        """Close links and listeners; pending requests fail with `CellError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links = list(self._children.values()) + list(self._direct.values())
            links += [self._parent] if self._parent else []
            parent_link = self._parent_link
        if parent_link is not None:
            parent_link.close()
        self._pending.close(f"cell {self.fqcn!r} closed")
        self._streams.close(f"cell {self.fqcn!r} closed")
        for listener in self._listeners:
            listener.close()
        for link in links:
            link.close()
        if self._owns_resources:
            self.resources.close()


def _hops(frame: Frame) -> int:
    try:
        return int(frame.headers.get(Header.HOPS, "0"))
    except ValueError:
        return MAX_HOPS  # a garbled count: allow no further relaying


def _within(fqcn: str, root: str) -> bool:
    """Whether `fqcn` is `root` or a cell below it."""
    return fqcn == root or fqcn.startswith(root + SEPARATOR)

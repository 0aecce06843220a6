"""A cell: one addressable endpoint of the cell network.

Cells form a tree by connection: a cell may listen for children and may
connect to one parent. A message to any FQCN is routed along the tree: to
this cell, to the child whose subtree holds the target, or up to the parent.
Handlers are registered per (channel, topic) and run on a shared dispatcher
pool, never on a transport's receiving thread.

A cell is its messaging (requests and their replies, forwarding, handlers)
over three parts that each own their state: `Links` (the route table and
every link), `Handlers`, and a `StreamEngine` for payloads larger than a
frame, which sees the cell only as a `StreamHost`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, wait

from fl_core.cell.channels import Channel
from fl_core.cell.fqcn import validate
from fl_core.cell.handlers import DEFERRED, Handler, Handlers
from fl_core.cell.links import LinkEvents, Links
from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.payload import PayloadRefusedError
from fl_core.cell.pending import PendingRequest, PendingRequests
from fl_core.cell.proof import AdmissionRefused, KeyLookup
from fl_core.cell.relay import RelayedRequests
from fl_core.cell.resources import CellResources
from fl_core.cell.stream_host import StreamHost
from fl_core.cell.streams import StreamEngine, StreamSettings
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.spec.transport import Connection, Frame, Transport

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

MAX_HOPS = 32
"""Relays a message may pass before it is refused: a cycle of misconnected
cells (each the other's parent) must not bounce a message forever."""


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
        self._links = Links(
            self.fqcn,
            transport,
            LinkEvents(
                frame=self._on_frame,
                refused=self._came_back,
                closed=self._link_closed,
                body_buffer=lambda conn: self._streams.body_buffer_for(conn),
            ),
        )
        self._handlers = Handlers(self.fqcn, self.resources.dispatcher, self._send_reply)
        self._pending = PendingRequests(self.resources.timer)
        self._relayed = RelayedRequests(self.resources.timer)
        self._streams = StreamEngine(
            StreamHost(
                self.fqcn,
                self.resources,
                self._links,
                self._pending,
                deliver=self._on_message,
                wants_stream=self._handlers.wants_stream,
                answer=self._answer_error,
            ),
            streams or StreamSettings(),
        )
        self._ids = itertools.count(1)
        # Unguessable, so a cell cannot even aim a reply at another cell's request.
        self._id_prefix = secrets.token_hex(8) + "-"

    # --- wiring ----------------------------------------------------------------

    @property
    def links(self) -> Links:
        """This cell's links and route table (which link leads toward a name)."""
        return self._links

    def listen(self, url: str) -> str:
        """Accept child cells at `url`; returns the real bound URL."""
        return self._links.listen(url)

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
        self._links.connect_parent(url, timeout, reconnect, key)

    def connect_direct(self, url: str, timeout: float = 10.0, *, key: bytes) -> str:
        """Open a direct link to the cell at `url` (not a parent); returns its name.

        Messages to that cell then take the link instead of the tree; if it
        closes they take the tree again. The far end admits the link only if
        it `accept_direct`s and this cell proves the `key` it expects for this
        cell's name; the far end proves the same key in turn. See
        `fl_core.cell.parent.connect_direct`.
        """
        return self._links.connect_direct(url, timeout, key)

    def accept_direct(self, keys: KeyLookup) -> None:
        """Accept direct links at this cell's listeners, from cells that prove their key.

        `keys(name)` gets the name the caller claims and returns the secret
        it must prove it holds, or raises `AdmissionRefused` with the reason.
        Without it every direct link is refused: a name alone proves nothing.
        A cell never admits a name in its own subtree or one of its
        ancestors, whatever `keys` says.
        """
        self._links.accept_direct(keys)

    def require_proof(self, keys: KeyLookup) -> None:
        """Admit a child at this cell's listeners only once it proves its key.

        `keys(name)` gets the name a joining child claims and returns the
        secret it must prove it holds (by challenge/response: the secret
        never travels), or raises `AdmissionRefused` with the reason, which
        the child is told and this cell logs as a warning. Without it, any
        cell may join as a child under any free name: right for cells of
        one process, never for a listener other processes can reach.
        """
        self._links.require_proof(keys)

    def close_direct(self, name: str) -> None:
        """Close the direct link to `name`, if there is one; the tree carries on."""
        self._links.close_direct(name)

    def children(self) -> list[str]:
        """Names of the directly connected child cells."""
        return self._links.children()

    def streams_in_flight(self) -> dict[str, int]:
        """Streams this cell is sending, receiving and relaying right now."""
        return self._streams.counts()

    def relayed_requests(self) -> int:
        """Requests this cell forwarded whose replies have not passed back yet."""
        return len(self._relayed)

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
        self._handlers.register(channel, topic, handler, streaming=streaming)

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
            link = self._links.route(target)
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
        self._deliver(self._links.route(target), message)

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
        """A frame whose link vouched for its origin: this cell's, or one to forward."""
        message = Message(frame.headers, None)
        target = message.destination
        try:
            link = self._links.route(target, from_parent=from_parent)
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

    def _came_back(self, frame: Frame) -> None:
        """A frame its link refused for its origin (see `Links`).

        A request of this cell's own that comes back is a cycle of
        misconnected cells: it fails here, saying so. Nothing else is
        answered, since an answer would go to whoever the forger named.
        """
        message = Message(frame.headers, None)
        if message.origin == self.fqcn and message.get(Header.MSG_TYPE) == MessageType.REQUEST:
            detail = f"the request came back to {self.fqcn} (are cells connected in a cycle?)"
            self._pending.fail(
                message.get(Header.MSG_ID), TargetUnreachableError(message.destination, detail)
            )

    def _link_closed(self, conn: Connection, detail: str) -> None:
        """Fail what waited on `conn`: requests, streams, and requests relayed over it."""
        self._pending.fail_link(conn, detail)
        self._streams.link_closed(conn, detail)
        for request in self._relayed.lost(conn):
            lost = f"the link from {self.fqcn} toward it closed"
            self._send_reply(request, Status.UNREACHABLE, None, {Header.ERROR: lost})

    def _on_message(self, message: Message) -> None:
        kind = message.get(Header.MSG_TYPE)
        if kind == MessageType.REPLY:
            self._pending.on_reply(message)
        elif kind in (MessageType.REQUEST, MessageType.FIRE):
            self._handlers.dispatch(message)
        else:
            log.warning("%s: dropped a %r message from %s", self.fqcn, kind, message.origin)

    def _answer_error(self, request: Message, status: Status, reason: str) -> None:
        """Answer `request` with an error reply (a refused payload, a lost stream)."""
        self._send_reply(request, status, None, {Header.ERROR: reason})

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
            self._deliver(self._links.route(request.origin), reply)
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
        if not self._links.close():
            return
        self._pending.close(f"cell {self.fqcn!r} closed")
        self._streams.close(f"cell {self.fqcn!r} closed")
        self._links.disconnect()
        if self._owns_resources:
            self.resources.close()


def _hops(frame: Frame) -> int:
    try:
        return int(frame.headers.get(Header.HOPS, "0"))
    except ValueError:
        return MAX_HOPS  # a garbled count: allow no further relaying

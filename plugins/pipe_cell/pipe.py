"""`CellPipe`: a pipe whose two ends are cells of the cell network.

The ACTIVE end (the client job) owns a cell named `fqcn` that listens on
`url`; its real URL is `address` once open, to hand to the trainer. The
PASSIVE end (the trainer) owns a cell named `<fqcn>.trainer`, joins the
ACTIVE cell as its child by proving the pipe's `token` (the cell's
challenge/response: the token never travels), and introduces itself with a
`pipe_hello` request carrying the pipe's name. The ACTIVE end admits one
trainer: a cell that cannot prove the token, a hello with a wrong name, or one
while a trainer is already admitted, is refused (the PASSIVE `open` raises
`PipeError` saying why), and any other message from a cell that was not
admitted is refused too.

Each end's cell runs over the transport named by the `transport` option, made
by the maker the runtime hands over in `use_transports` (any installed
transport that reaches across processes); the PASSIVE end's `url` is the
ACTIVE end's `address`.

Every message is a cell request on `Channel.AUX_COMMUNICATION`, topic
`pipe_msg`: the body is the cell payload (None, bytes, JSON, an FLModel,
streamed when big, never pickled) and the pipe's topic and headers travel
as request headers prefixed `pipe.` and `pipe.h.`, so they cannot clash
with the cell's own. The receiving handler queues the request without
consuming its payload and answers later: `receive` takes the payload (a big
model arrives then, under the cell's flow-control window, straight into the
arrays it becomes) and only then replies. So `send` returns True once the
peer's `receive` has taken the message and False if nobody took it within
`timeout` (`send_waits_for_receiver`); a message whose sender gave up is
skipped by `receive`.

Each end fires `pipe_heartbeat` every `heartbeat_interval`; a closing end
sends `pipe_close`. `receive` raises `PeerGoneError` once nothing is queued
and the peer closed, was silent for `heartbeat_timeout` (counted from
`open`), or the cell link to it closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from fl_core.cell.cell import DEFERRED, Cell
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message
from fl_core.cell.payload import PayloadKind, PayloadLimits, encode_payload, kind_of
from fl_core.cell.streams import StreamSettings
from fl_core.errors import CellError, RemoteError, RequestTimeoutError
from fl_core.spec.pipe import (
    DEFAULT_MAX_PAYLOAD,
    MAX_JSON_PAYLOAD,
    PeerGoneError,
    Pipe,
    PipeContext,
    PipeError,
    PipeMessage,
    PipeSide,
    TransportMaker,
    check_heartbeats,
)
from fl_core.spec.transport import Transport
from fl_plugins.pipe_cell.wire import (
    BEAT,
    CHANNEL,
    CLOSE,
    HELLO,
    MSG,
    TRAINER,
    from_request,
    join,
    make_transport,
    refusal,
    to_headers,
    topic_of,
    trainer_keys,
)

__all__ = ["CellPipe"]

log = logging.getLogger(__name__)

MAX_QUEUED = 64
"""Messages an end holds for `receive`; a sender waits for each, so more means trouble."""


@dataclass(slots=True)
class _Queued:
    """A message waiting for `receive`, or a refusal to report there."""

    request: Message | None
    deadline: float
    refusal: str = ""


class CellPipe(Pipe):
    """A pipe between two cells; see the module docstring.

    `send` waits for the receiver: it returns True once the peer's `receive`
    took the message.
    """

    send_waits_for_receiver = True

    def __init__(
        self,
        fqcn: str = "",
        token: str = "",
        url: str | None = None,
        transport: str = "tcp",
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        check_heartbeats("cell", heartbeat_interval, heartbeat_timeout)
        if not transport:
            raise PipeError("cell pipe: transport must name an installed transport")
        self.fqcn = fqcn
        self.url = url
        self.transport_name = transport
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.max_payload = int(max_payload)
        self.max_json = min(self.max_payload, MAX_JSON_PAYLOAD)
        self._token = token.encode()
        self._name = ""
        self._side = PipeSide.ACTIVE
        self._peer = ""
        self._admitted = False
        self._cell: Cell | None = None
        self._transport: Transport | None = None
        self._make_transport: TransportMaker | None = None
        self._address = ""
        self._cond = threading.Condition()
        self._queue: deque[_Queued] = deque()
        self._opened_at = 0.0
        self._heard = 0.0
        self._gone = ""  # why the peer is gone for good ("" while it may be alive)
        self._open = False
        self._closed = False
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The ACTIVE cell's real listen URL (after `open`): the PASSIVE end's `url`."""
        return self._address

    def use_transports(self, make: TransportMaker) -> None:
        """Keep the maker that builds this end's transport, by the `transport` option, at `open`."""
        self._make_transport = make

    def prepare(self, context: PipeContext) -> None:
        """Take the client job's cell name where the options gave none, and always its token.

        A token from the job config would be the same for every process and
        travel inside the job package; the option is for an end built by hand.
        """
        self.fqcn = self.fqcn or context.fqcn
        self._token = context.token.encode()

    def peer_options(self) -> dict[str, Any]:
        """The trainer's options: this end's name, token and real URL, and the same limits."""
        if not self._open or self._side is not PipeSide.ACTIVE:
            raise PipeError(f"pipe {self._name!r}: peer_options needs an open active end")
        return {
            "fqcn": self.fqcn,
            "token": self._token.decode(),
            "url": self._address,
            "transport": self.transport_name,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "max_payload": self.max_payload,
        }

    # --- opening and closing -----------------------------------------------------

    def open(self, name: str, side: PipeSide) -> None:
        """Start this end's cell and, for PASSIVE, connect and say hello; see the class."""
        if self._open or self._closed:
            raise PipeError(f"pipe {name!r}: this end was opened before")
        if side is PipeSide.PASSIVE and not self.url:
            raise PipeError(f"pipe {name!r}: the passive side needs the active side's url")
        if not self.fqcn or not self._token:
            raise PipeError(
                f"pipe {name!r}: the cell pipe needs a fqcn and a token "
                "(options, or `prepare` by the client job)"
            )
        self._name, self._side = name, side
        own = self.fqcn if side is PipeSide.ACTIVE else f"{self.fqcn}.{TRAINER}"
        self._peer = f"{self.fqcn}.{TRAINER}" if side is PipeSide.ACTIVE else self.fqcn
        limits = PayloadLimits(
            max_size=max(self.max_payload, DEFAULT_MAX_PAYLOAD), max_json_size=MAX_JSON_PAYLOAD
        )
        transport = make_transport(self._make_transport, self.transport_name, pipe=name)
        try:
            cell = Cell(own, transport, streams=StreamSettings(limits=limits))
        except CellError as exc:
            transport.close()
            raise PipeError(f"pipe {name!r}: bad fqcn {self.fqcn!r}: {exc}") from exc
        self._transport, self._cell = transport, cell
        cell.register_handler(CHANNEL, MSG, self._on_message, streaming=True)
        cell.register_handler(CHANNEL, BEAT, self._on_beat)
        cell.register_handler(CHANNEL, CLOSE, self._on_close)
        now = time.monotonic()
        with self._cond:
            self._opened_at = self._heard = now
            self._admitted = side is PipeSide.PASSIVE  # its peer is its parent cell
        try:
            if side is PipeSide.ACTIVE:
                cell.require_proof(trainer_keys(self._peer, self._token))
                cell.register_handler(CHANNEL, HELLO, self._on_hello)
                self._address = cell.listen(self.url or f"{self.transport_name}://127.0.0.1:0")
            else:
                assert self.url
                join(
                    cell,
                    self.url,
                    active=self._peer,
                    pipe=name,
                    token=self._token,
                    timeout=self.heartbeat_timeout,
                )
        except BaseException:
            with self._cond:
                self._closed = True  # a failed open leaves nothing running and no way back
            self._shutdown()
            raise
        with self._cond:
            self._heard = max(self._heard, time.monotonic() if side is PipeSide.PASSIVE else 0)
            self._open = True
        self._beater = threading.Thread(
            target=self._beat, name=f"fl-pipe-cell-{name}-{side}", daemon=True
        )
        self._beater.start()

    def close(self) -> None:
        """Tell the peer, stop heartbeats, close the cell and its transport; idempotent."""
        with self._cond:
            if self._closed:
                return
            was_open, self._closed, self._open = self._open, True, False
            admitted = self._admitted
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        for item in queued:
            if item.request is not None and isinstance(item.request.payload, IncomingPayload):
                item.request.payload.discard()
        if was_open and admitted and self._cell is not None and not self._gone:
            try:  # a request, so the close is delivered before the link goes
                self._cell.request(
                    self._peer, CHANNEL, CLOSE, None, min(2.0, self.heartbeat_timeout)
                )
            except CellError:
                pass  # the peer is gone already: nobody to tell
        self._shutdown()

    def _shutdown(self) -> None:
        cell, transport, self._cell, self._transport = self._cell, self._transport, None, None
        if cell is not None:
            cell.close()
        if transport is not None:
            transport.close()

    # --- sending -----------------------------------------------------------------

    def send(self, message: PipeMessage, timeout: float) -> bool:
        """Deliver `message`; True once the peer's `receive` took it, False after `timeout`."""
        cell = self._working_cell("send")
        where = f"pipe {self._name!r} message {message.topic!r}"
        try:
            size = encode_payload(message.body, where=where).size
        except CellError as exc:
            raise PipeError(str(exc)) from exc
        bound = self.max_json if kind_of(message.body) is PayloadKind.JSON else self.max_payload
        if size > bound:
            raise PipeError(f"{where}: a body of {size} bytes is over max_payload ({bound} bytes)")
        try:
            cell.request(self._peer, CHANNEL, MSG, message.body, timeout, to_headers(message))
        except RequestTimeoutError:
            return False
        except RemoteError as exc:
            raise PipeError(f"{where} was refused by the {self._side.peer} side: {exc}") from exc
        except CellError as exc:
            with self._cond:
                gone = self._gone_reason()
            if gone:
                raise PeerGoneError(self._name, self._side, gone) from exc
            return False
        return True

    def _working_cell(self, what: str) -> Cell:
        with self._cond:
            if not self._open or self._cell is None:
                raise PipeError(f"pipe {self._name!r}: cannot {what}: this end is not open")
            return self._cell

    # --- receiving ---------------------------------------------------------------

    def receive(self, timeout: float) -> PipeMessage | None:
        """The next message (taking its body and answering its sender), or None; see the class."""
        deadline = time.monotonic() + timeout
        while True:
            item = self._next(deadline)
            if item is None:
                return None
            if item.refusal:
                raise PipeError(item.refusal)
            got = self._take(item)
            if got is not None:
                return got

    def _next(self, deadline: float) -> _Queued | None:
        with self._cond:
            while True:
                if not self._open:
                    raise PipeError(f"pipe {self._name!r}: cannot receive: this end is not open")
                if self._queue:
                    return self._queue.popleft()
                gone = self._gone_reason()
                if gone:
                    raise PeerGoneError(self._name, self._side, gone)
                now = time.monotonic()
                if now >= deadline:
                    return None
                self._cond.wait(min(deadline - now, self.heartbeat_interval))

    def _take(self, item: _Queued) -> PipeMessage | None:
        """The message of a queued request, answered; None if its sender gave up."""
        request = item.request
        cell = self._cell
        assert request is not None
        if cell is None:
            raise PipeError(f"pipe {self._name!r}: cannot receive: this end closed")
        payload = request.payload
        assert isinstance(payload, IncomingPayload)
        if time.monotonic() >= item.deadline:
            payload.discard()
            return None
        try:
            body = payload.result(max(0.0, item.deadline - time.monotonic()))
        except CellError as exc:
            if time.monotonic() >= item.deadline:
                return None  # its sender gave up while it travelled
            raise PipeError(
                f"pipe {self._name!r}: message {topic_of(request)!r} broke in transit: {exc}"
            ) from exc
        message = from_request(request, body)
        try:
            cell.reply(request)
        except CellError:
            pass  # the sender is gone; it has its error, the message is still ours
        return message

    # --- liveness ----------------------------------------------------------------

    def peer_alive(self) -> bool:
        """Whether the peer is admitted, open and heard from within `heartbeat_timeout`."""
        with self._cond:
            return self._open and self._admitted and not self._gone_reason()

    def _gone_reason(self) -> str:
        """Why the peer is gone, or ""; call holding `_cond`."""
        if self._gone:
            return self._gone
        silent = time.monotonic() - self._heard
        if silent > self.heartbeat_timeout:
            who = "heard from" if self._heard > self._opened_at else "seen since this end opened"
            return f"not {who} for {silent:.1f} s (heartbeat_timeout {self.heartbeat_timeout:g} s)"
        return ""

    def _set_gone(self, reason: str) -> None:
        with self._cond:
            if not self._gone:
                self._gone = reason
            self._cond.notify_all()

    def _beat(self) -> None:
        cell = self._cell
        assert cell is not None
        while not self._stop.wait(self.heartbeat_interval):
            with self._cond:
                admitted, gone = self._admitted, self._gone
            if not admitted or gone:
                continue
            if self._side is PipeSide.ACTIVE and self._peer not in cell.children():
                self._set_gone("the cell link to it closed")
                continue
            try:
                cell.fire(self._peer, CHANNEL, BEAT)
            except CellError as exc:
                self._set_gone(f"the cell link to it closed ({exc})")

    # --- handlers (on the cell's dispatcher pool; none of them blocks) ------------

    def _check_origin(self, message: Message) -> None:
        with self._cond:
            admitted = self._admitted
        if message.origin != self._peer or not admitted:
            raise PipeError(
                f"pipe {self._name!r}: {message.origin} is not the admitted {self._side.peer} side"
            )

    def _heard_now(self) -> None:
        with self._cond:
            self._heard = time.monotonic()
            self._cond.notify_all()

    def _on_hello(self, message: Message) -> object:
        # Only a cell that proved the token is a child here (`trainer_keys`).
        problem = refusal(message, pipe=self._name, trainer=self._peer)
        with self._cond:
            if not problem and (self._admitted or self._gone or self._closed):
                problem = "a trainer was admitted already"
            if not problem:
                self._admitted = True
                self._heard = time.monotonic()
                self._cond.notify_all()
        if problem:
            raise PipeError(
                f"pipe {self._name!r} (active side) refused {message.origin}: {problem}"
            )
        return None

    def _on_beat(self, message: Message) -> object:
        try:
            self._check_origin(message)
        except PipeError:
            return None  # a heartbeat from a stranger is no news
        self._heard_now()
        return None

    def _on_close(self, message: Message) -> object:
        self._check_origin(message)
        self._heard_now()
        self._set_gone("it closed its end")
        return None

    def _on_message(self, message: Message) -> object:
        payload = message.payload
        assert isinstance(payload, IncomingPayload)
        self._check_origin(message)
        self._heard_now()
        try:
            wait = float(message.get(Header.TIMEOUT, "0"))
        except ValueError:
            wait = 0.0
        deadline = time.monotonic() + wait
        size = payload.size
        if not size and payload.kind is not PayloadKind.NONE:
            # It came whole (one frame): measure it, and queue it whole again.
            value = payload.result()
            size = encode_payload(value, where="a queued message").size
            payload = IncomingPayload.of(value, payload.kind, source=message.origin)
            message.payload = payload
        bound = self.max_json if payload.kind is PayloadKind.JSON else self.max_payload
        refusal = ""
        if size > bound:
            refusal = (
                f"pipe {self._name!r} ({self._side} side): message {topic_of(message)!r} "
                f"has a body of {size} bytes, over max_payload ({bound} bytes)"
            )
        with self._cond:
            if not refusal and len(self._queue) >= MAX_QUEUED:
                raise PipeError(f"pipe {self._name!r}: {MAX_QUEUED} messages wait already")
            if refusal:
                self._queue.append(_Queued(None, deadline, refusal))
            else:
                self._queue.append(_Queued(message, deadline))
            self._cond.notify_all()
        if refusal:
            payload.discard()
            raise PipeError(refusal)
        return DEFERRED

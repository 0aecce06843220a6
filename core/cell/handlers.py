"""A cell's handlers: which function answers a (channel, topic), and running it.

Handlers run on the shared dispatcher pool, never on a transport's receiving
thread. What a handler returns is the reply; what it raises is an error
reply; `DEFERRED` means it answers later with `Cell.reply`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Executor

from fl_core.cell.channels import Channel
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.payload import kind_of
from fl_core.errors import CellError, FlCoreError

__all__ = ["DEFERRED", "Answer", "Handler", "Handlers"]

log = logging.getLogger("fl_core.cell")

DEFERRED = object()
"""Returned by a handler that will answer later with `Cell.reply`."""

Handler = Callable[[Message], object]

Answer = Callable[[Message, Status, object, Mapping[str, str]], "CellError | None"]
"""`answer(request, status, payload, headers)` sends the reply to `request`;
returns the refusal if the transport cannot carry `payload`."""


class Handlers:
    """The handler table of the cell `fqcn`; replies go out through `answer`."""

    def __init__(self, fqcn: str, dispatcher: Executor, answer: Answer) -> None:
        self._fqcn = fqcn
        self._dispatcher = dispatcher
        self._answer = answer
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._streaming: set[tuple[str, str]] = set()

    def register(
        self, channel: Channel | str, topic: str, handler: Handler, *, streaming: bool
    ) -> None:
        """Call `handler` for (channel, topic); see `Cell.register_handler`."""
        key = (str(channel), topic)
        self._handlers[key] = handler
        if streaming:
            self._streaming.add(key)
        else:
            self._streaming.discard(key)

    def wants_stream(self, message: Message) -> bool:
        """Whether a stream carrying `message` goes to a streaming handler as it arrives."""
        return (
            message.get(Header.MSG_TYPE) in (MessageType.REQUEST, MessageType.FIRE)
            and (message.channel, message.topic) in self._streaming
        )

    def dispatch(self, message: Message) -> None:
        """Hand a request or fire-and-forget message to its handler on the pool."""
        kind = message.get(Header.MSG_TYPE)
        fqcn = self._fqcn
        if self.wants_stream(message) and not isinstance(message.payload, IncomingPayload):
            # A payload that came whole: the handler still reads it as a stream.
            value = message.payload
            message.payload = IncomingPayload.of(value, kind_of(value), source=message.origin)
        handler = self._handlers.get((message.channel, message.topic))
        if handler is None:
            if kind == MessageType.REQUEST:
                problem = f"no handler for {message.channel}/{message.topic} at {fqcn}"
                self._answer(message, Status.NO_HANDLER, None, {Header.ERROR: problem})
            else:
                log.warning("%s: dropped %s/%s: no handler", fqcn, message.channel, message.topic)
            return
        try:
            self._dispatcher.submit(self._run, handler, message)
        except RuntimeError:
            log.info("%s: dropped %s/%s: shutting down", fqcn, message.channel, message.topic)
            if kind == MessageType.REQUEST:
                # Answer now: the requester would otherwise wait for its timeout.
                problem = f"cell {fqcn} is shutting down"
                self._answer(message, Status.UNREACHABLE, None, {Header.ERROR: problem})

    def _run(self, handler: Handler, message: Message) -> None:
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
                    self._fqcn,
                    message.channel,
                    message.topic,
                    message.origin,
                    exc,
                )
            else:
                log.error(
                    "%s: handler for %s/%s failed:\n%s",
                    self._fqcn,
                    message.channel,
                    message.topic,
                    traceback.format_exc(),
                )
            if message.get(Header.MSG_TYPE) == MessageType.REQUEST:
                detail = f"{type(exc).__name__}: {exc}"
                self._answer(message, Status.HANDLER_ERROR, None, {Header.ERROR: detail})
            return
        if isinstance(message.payload, IncomingPayload) and result is not DEFERRED:
            message.payload.discard()  # a deferring handler keeps it, to consume or discard
        if message.get(Header.MSG_TYPE) == MessageType.REQUEST and result is not DEFERRED:
            refused = self._answer(message, Status.OK, result, {})
            if refused is not None:
                log.error(
                    "%s: handler for %s/%s returned an unsendable reply: %s",
                    self._fqcn,
                    message.channel,
                    message.topic,
                    refused,
                )

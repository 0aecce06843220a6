"""What travels between the two ends of a cell pipe, and how their cells link up.

Both ends speak cell requests on `CHANNEL`; a pipe message's topic and
headers ride as request headers under their own prefixes (`to_headers`,
`from_request`), so they cannot clash with the cell's. The PASSIVE cell
joins the ACTIVE one as its child by proving the pipe's token with the
cell's challenge/response (`trainer_keys` on the ACTIVE side, `join` on the
PASSIVE side): the token itself never travels. Each end's transport comes
from the maker the runtime handed the pipe (`make_transport`), by name.
"""

from __future__ import annotations

import time

from fl_core.cell.cell import AdmissionRefused, Cell, KeyLookup
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.errors import CellError, FlCoreError, TargetUnreachableError
from fl_core.spec.pipe import PipeError, PipeMessage, TransportMaker
from fl_core.spec.transport import Transport

__all__ = [
    "BEAT",
    "CHANNEL",
    "CLOSE",
    "HELLO",
    "MSG",
    "NAME_GRACE",
    "TRAINER",
    "from_request",
    "join",
    "make_transport",
    "refusal",
    "to_headers",
    "topic_of",
    "trainer_keys",
]

CHANNEL = Channel.AUX_COMMUNICATION
HELLO, MSG, BEAT, CLOSE = "pipe_hello", "pipe_msg", "pipe_heartbeat", "pipe_close"
TRAINER = "trainer"
"""The last part of the PASSIVE cell's FQCN."""
NAME_GRACE = 2.0
"""Seconds a PASSIVE end retries when its cell is refused: a trainer that just
failed or closed may still hold the name until the ACTIVE cell sees its link close."""

_NAME = "pipe.name"
_TOPIC = "pipe.topic"
_HEADER = "pipe.h."


def to_headers(message: PipeMessage) -> dict[str, str]:
    """The request headers that carry `message`'s topic and headers."""
    headers = {_TOPIC: message.topic}
    headers.update({_HEADER + key: value for key, value in message.headers.items()})
    return headers


def topic_of(request: Message) -> str:
    """The pipe topic a request carries."""
    return request.get(_TOPIC)


def from_request(request: Message, body: object) -> PipeMessage:
    """The pipe message a request carried, with its (already taken) `body`."""
    headers = {
        key[len(_HEADER) :]: value
        for key, value in request.headers.items()
        if key.startswith(_HEADER)
    }
    return PipeMessage(topic_of(request), headers, body)


def make_transport(make: TransportMaker | None, name: str, *, pipe: str) -> Transport:
    """A fresh transport `name` from `make` (the pipe's `use_transports`); `PipeError` if none."""
    if make is None:
        raise PipeError(
            f"pipe {pipe!r}: the cell pipe was given no way to make its {name!r} transport "
            "(the runtime calls use_transports right after building a pipe)"
        )
    try:
        transport = make(name, {})
    except FlCoreError as exc:
        raise PipeError(f"pipe {pipe!r}: cannot make transport {name!r}: {exc}") from exc
    if not isinstance(transport, Transport):
        raise PipeError(
            f"pipe {pipe!r}: transport {name!r} is a {type(transport).__name__}, not a Transport"
        )
    return transport


def trainer_keys(trainer: str, token: bytes) -> KeyLookup:
    """The ACTIVE cell's key lookup: only the cell `trainer` may join, proving `token`."""

    def keys(name: str) -> bytes:
        if name != trainer:
            raise AdmissionRefused(f"only {trainer} may join this pipe, not {name}")
        return token

    return keys


def join(cell: Cell, url: str, *, active: str, pipe: str, token: bytes, timeout: float) -> None:
    """Connect `cell` (PASSIVE) to the ACTIVE cell `active` at `url`, prove `token`, say hello.

    Retries an unreachable `url` until `timeout` (the ACTIVE end may not be
    up yet) and a refused cell for `NAME_GRACE`. Raises `PipeError` saying
    which step failed.
    """
    deadline = time.monotonic() + timeout
    refused_until = time.monotonic() + NAME_GRACE
    where = f"pipe {pipe!r} (passive side)"
    while True:
        try:
            cell.connect_parent(url, timeout=timeout, reconnect=False, key=token)
            break
        except TargetUnreachableError as exc:  # not up yet, maybe: try again
            if time.monotonic() >= deadline:
                raise PipeError(f"{where}: cannot reach the active side at {url}: {exc}") from exc
            time.sleep(0.1)
        except CellError as exc:  # refused: a name still held by a link closing, or the token
            if time.monotonic() < min(deadline, refused_until):
                time.sleep(0.1)
                continue
            raise PipeError(
                f"{where}: the active side at {url} refused this end's cell "
                f"(a wrong token, or a trainer holds the name): {exc}"
            ) from exc
    try:
        cell.request(active, CHANNEL, HELLO, None, timeout, {_NAME: pipe})
    except CellError as exc:
        raise PipeError(f"{where}: the active side {active} refused this end: {exc}") from exc


def refusal(hello: Message, *, pipe: str, trainer: str) -> str:
    """Why the ACTIVE end refuses a hello from a cell the cell network admitted; "" if none.

    The cell proved the token already; the hello must ask for this pipe and
    come from the trainer cell itself.
    """
    if hello.get(_NAME) != pipe:
        return f"it asked for pipe {hello.get(_NAME)!r}"
    if hello.origin != trainer:
        return f"it is {hello.origin}, not {trainer}"
    return ""

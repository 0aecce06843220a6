"""Pipes: carry Client API messages between a client job and its training process.

A pipe has two ends, opened by two processes under one `name`: the client
job opens the ACTIVE side, the training process the PASSIVE side. Each end
sends `PipeMessage`s to the other, in order.

A message's body travels without pickle, as `fl_core.cell.payload` encodes
it: `None`; bytes (received as a bytes-like buffer, `bytearray` or
`memoryview`); an `FLModel` (its arrays as raw buffers, rebuilt exactly,
dtype and shape included); or plain JSON data (dict, list, str, number,
bool). Anything else is refused at the sender.

Every pipe accepts these options (its factory may accept more):

- `heartbeat_interval` (seconds): while open, each end tells the other it
  is alive this often.
- `heartbeat_timeout` (seconds): an end whose peer has not been heard from
  for this long (counting from its own `open`) considers the peer gone.
- `max_payload` (bytes, default 64 GiB): the largest body either end sends
  or accepts; JSON bodies are also bounded by 64 MiB, since they are parsed
  whole. Sizes are checked before any memory is reserved.

Messages already delivered to an end are still handed out after its peer is
gone; only then does `receive` raise `PeerGoneError`.

How a client job uses a pipe: it builds the ACTIVE end from the job config's
options, calls `prepare(PipeContext(...))` so the pipe can fill in what the
config left out (a folder, a cell name, a secret), opens it, and then asks
`peer_options()` for the options that build the PASSIVE end. Those reach
the training process as JSON in its environment, so they must be plain JSON
values.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_core.errors import FlCoreError
from fl_core.spec import Register, hookspec

if TYPE_CHECKING:
    from fl_core.spec.transport import Transport

TransportMaker = Callable[[str, Mapping[str, Any]], "Transport"]
"""`make(name, options)`: a fresh transport of the installed plugin component `name`.

Raises `UnknownComponentError` (listing what is installed) for a name no
plugin registered. A pipe that carries its messages over cells gets its
transports this way, never by importing a transport plugin.
"""

GiB = 1024**3
MiB = 1024**2
DEFAULT_MAX_PAYLOAD = 64 * GiB
"""The default `max_payload`: bytes and model bodies."""
MAX_JSON_PAYLOAD = 64 * MiB
"""JSON bodies are parsed whole, so they are bounded by this as well."""


class PipeSide(enum.StrEnum):
    """Which end of a pipe: the client job is ACTIVE, the trainer PASSIVE."""

    ACTIVE = "active"
    PASSIVE = "passive"

    @property
    def peer(self) -> PipeSide:
        """The other end."""
        return PipeSide.PASSIVE if self is PipeSide.ACTIVE else PipeSide.ACTIVE


@dataclass(slots=True)
class PipeMessage:
    """One message through a pipe: a topic, string headers and a body.

    `body` is None, bytes, an `FLModel` or JSON-able data (see the module
    docstring for how each arrives).
    """

    topic: str
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None


@dataclass(frozen=True, slots=True)
class PipeContext:
    """What a client job offers the ACTIVE end of a pipe before opening it (`Pipe.prepare`)."""

    folder: Path
    """A folder of the client job's workspace for this pipe; it exists and is private to it."""
    fqcn: str
    """The client job's cell name (`<site>.<job_id>`)."""
    token: str
    """A fresh secret for this training process; the PASSIVE end must show it to be let in."""


class PipeError(FlCoreError):
    """A pipe cannot do what was asked: not open, a bad root, a refused or corrupt message."""


def check_heartbeats(pipe: str, interval: float, timeout: float) -> None:
    """Refuse a `heartbeat_timeout` that a peer beating every `interval` could miss.

    For pipe plugins' constructors; `pipe` names the pipe kind in the error.
    """
    if timeout <= interval:
        raise PipeError(
            f"{pipe} pipe: heartbeat_timeout ({timeout:g} s) must be longer "
            f"than heartbeat_interval ({interval:g} s)"
        )


class PeerGoneError(PipeError):
    """The other end of pipe `name` closed its end or fell silent past `heartbeat_timeout`.

    `side` is the end that noticed; `reason` says what was seen.
    """

    def __init__(self, name: str, side: PipeSide, reason: str) -> None:
        self.name = name
        self.side = side
        self.reason = reason
        super().__init__(f"pipe {name!r} ({side} side): the {side.peer} side is gone: {reason}")


class Pipe(ABC):
    """A two-ended message channel between two processes.

    One thread at a time may call `send`, one (maybe another) `receive`.
    """

    def use_transports(self, make: TransportMaker) -> None:  # noqa: B027 - optional hook
        """Receive the maker of transports by name; called right after the factory.

        The runtime calls it on every pipe it builds, at both ends, before
        `prepare` and `open`. Pipes that need no transport ignore it (the
        default). A pipe that needs one and was never given a maker raises
        `PipeError` from `open`.
        """

    def prepare(self, context: PipeContext) -> None:  # noqa: B027 - optional hook
        """Fill in, from `context`, whatever the options left out; called before an ACTIVE `open`.

        Options given explicitly win. The default does nothing. Must not
        start threads or open anything: that happens in `open`.
        """

    @abstractmethod
    def peer_options(self) -> dict[str, Any]:
        """The factory options that build the PASSIVE end meeting this (opened, ACTIVE) end.

        Plain JSON values only: they travel to the training process in its
        environment. Raises `PipeError` if this end is not an open ACTIVE end.
        """

    @abstractmethod
    def open(self, name: str, side: PipeSide) -> None:
        """Open the end `side` of the pipe called `name` and start sending heartbeats.

        The peer may open its end before or after. Raises `PipeError` if the
        pipe cannot be opened (for example, a root folder that does not exist).
        """

    @abstractmethod
    def send(self, message: PipeMessage, timeout: float) -> bool:
        """Deliver `message`; False if the peer did not take it within `timeout`.

        A pipe that only publishes (it does not wait for the receiver)
        returns True once the message is published. Raises `PipeError` for
        a body over `max_payload` or one that cannot travel.
        """

    @abstractmethod
    def receive(self, timeout: float) -> PipeMessage | None:
        """The next message, or None if none came within `timeout`.

        Raises `PeerGoneError` once no message is waiting and the peer has
        closed its end or has been silent for `heartbeat_timeout`; `PipeError`
        for a message that is corrupt or over `max_payload`.
        """

    @abstractmethod
    def peer_alive(self) -> bool:
        """Whether the peer is open and was heard from within `heartbeat_timeout`."""

    @abstractmethod
    def close(self) -> None:
        """Close this end (the peer then sees it gone) and stop its heartbeats; idempotent."""


class PipeHookSpecs:
    """Hooks for pipe plugins."""

    @hookspec
    def fl_core_register_pipes(self, register: Register) -> None:
        """Register pipe factories; `factory(**options)` returns an unopened `Pipe`.

        Options come from the job config; a factory rejects unknown ones with
        `ConfigError` (`fl_core.config.options.check_options`). Do not create
        files or threads here or in the factory: that happens in `open`.
        """

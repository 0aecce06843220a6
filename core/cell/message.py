"""Cell messages: string headers plus a payload."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class MessageType(enum.StrEnum):
    """What a message expects of its receiver."""

    REQUEST = "request"
    REPLY = "reply"
    FIRE = "fire"
    """Fire-and-forget: no reply is sent."""
    CHUNK = "chunk"
    """A later chunk of a streamed payload (the first travels as its message)."""
    ACK = "ack"
    """A stream receiver's report of the bytes it has consumed."""
    ABORT = "abort"
    """A stream ended early; sent to whichever end is still waiting."""


class Header(enum.StrEnum):
    """Headers the cell layer reads and writes."""

    CHANNEL = "channel"
    TOPIC = "topic"
    ORIGIN = "origin"
    DESTINATION = "destination"
    MSG_ID = "msg_id"
    MSG_TYPE = "msg_type"
    IN_REPLY_TO = "in_reply_to"
    STATUS = "status"
    ERROR = "error"
    HOPS = "hops"
    """How many cells have relayed the message; bounds routing loops."""
    TIMEOUT = "timeout"
    """Seconds the requester waits; relays forget a forwarded request after it."""
    PAYLOAD = "payload"
    """What the body holds on a wire transport (a `PayloadKind`)."""
    STREAM = "stream"
    """The stream id, unique per sending cell, on every frame of a streamed payload."""
    SEQ = "seq"
    """A chunk's position in its stream, from 0."""
    SIZE = "size"
    """The whole streamed payload's size in bytes (on its first frame)."""
    WINDOW = "window"
    """The sender's flow-control window in bytes (on a stream's first frame), so the
    receiver acknowledges often enough whatever its own settings."""
    ACKED = "acked"
    """Bytes of a stream the receiver has consumed (on ACK messages)."""
    STREAM_ORIGIN = "stream_origin"
    """The sending cell of the stream an ABORT is about."""


class Status(enum.StrEnum):
    """The outcome a reply carries."""

    OK = "ok"
    HANDLER_ERROR = "handler_error"
    NO_HANDLER = "no_handler"
    UNREACHABLE = "unreachable"


@dataclass(slots=True)
class Message:
    """A message: headers (str -> str) and a payload.

    Over the in-process transport the payload is any object, handed over by
    reference; over wire transports it is bytes (or None).
    """

    headers: dict[str, str] = field(default_factory=dict)
    payload: object = None

    def get(self, header: str, default: str = "") -> str:
        """A header's value, or `default`."""
        return self.headers.get(header, default)

    @property
    def channel(self) -> str:
        """The channel this message travels on."""
        return self.headers.get(Header.CHANNEL, "")

    @property
    def topic(self) -> str:
        """The topic within the channel."""
        return self.headers.get(Header.TOPIC, "")

    @property
    def origin(self) -> str:
        """FQCN of the sending cell."""
        return self.headers.get(Header.ORIGIN, "")

    @property
    def destination(self) -> str:
        """FQCN of the target cell."""
        return self.headers.get(Header.DESTINATION, "")

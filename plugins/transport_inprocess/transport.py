"""Cells of one process linked by direct calls: frame bodies pass by reference.

Listeners live in the transport instance, not in a global table, so two
simulations in one process never see each other's cells.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import ClassVar
from urllib.parse import urlparse

from fl_core.errors import CellError, TargetUnreachableError
from fl_core.spec.transport import (
    CloseHandler,
    Connection,
    Frame,
    FrameHandler,
    Listener,
    Transport,
)

SCHEME = "inprocess"


class _Endpoint(Connection):
    """One end of an in-process link; `send` calls the other end's handler."""

    def __init__(self, peer: str) -> None:
        self._peer_name = peer
        self.other: _Endpoint | None = None
        self._on_frame: FrameHandler | None = None
        self._on_close: CloseHandler | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._started = threading.Event()

    @property
    def peer(self) -> str:
        return self._peer_name

    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._started.set()

    def send(self, frame: Frame) -> None:
        other = self.other
        if self._closed or other is None or other._closed:
            raise CellError(f"in-process link to {self._peer_name} is closed")
        # The peer may still be wiring its handlers (connect returns before
        # the listener's callback has run on another thread).
        if not other._started.wait(10.0) or other._on_frame is None:
            raise CellError(f"in-process peer {self._peer_name} never started")
        other._on_frame(frame)

    def close(self) -> None:
        for end in (self, self.other):
            if end is None:
                continue
            with end._lock:
                if end._closed:
                    continue
                end._closed = True
            if end._on_close is not None:
                end._on_close(None)


class _Listener(Listener):
    def __init__(
        self, transport: InProcessTransport, name: str, accept: Callable[[Connection], None]
    ) -> None:
        self._transport = transport
        self.name = name
        self.accept = accept

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.name}"

    def close(self) -> None:
        self._transport._unbind(self)


class InProcessTransport(Transport):
    """Links cells of one process. URLs are `inprocess://NAME`; an empty NAME
    (like port 0) is replaced by a fresh unique one."""

    schemes: ClassVar[tuple[str, ...]] = (SCHEME,)
    carries_objects: ClassVar[bool] = True

    def __init__(self) -> None:
        self._listeners: dict[str, _Listener] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _normalize(self, url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme != SCHEME:
            raise CellError(f"in-process transport cannot use {url!r}: expected {SCHEME}://NAME")
        return parsed.netloc + parsed.path

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        """Bind `inprocess://NAME`; `CellError` if taken.

        An empty NAME, or `HOST:0` as the wire transports take it, binds a
        fresh name, as port 0 does.
        """
        name = self._normalize(url)
        with self._lock:
            if not name or name.endswith(":0"):
                # Like port 0: a name no caller has bound.
                fresh = (f"listener-{i}" for i in self._ids)
                name = next(n for n in fresh if n not in self._listeners)
            elif name in self._listeners:
                raise CellError(f"{SCHEME}://{name} is already bound")
            listener = _Listener(self, name, on_connection)
            self._listeners[name] = listener
        return listener

    def _unbind(self, listener: _Listener) -> None:
        with self._lock:
            # Only this binding: once closed, the name may belong to a new
            # listener, which a repeated close() must leave alone.
            if self._listeners.get(listener.name) is listener:
                del self._listeners[listener.name]

    def connect(self, url: str, timeout: float) -> Connection:
        """Link to the listener at `url`; `TargetUnreachableError` if there is none."""
        name = self._normalize(url)
        with self._lock:
            listener = self._listeners.get(name)
        if listener is None:
            raise TargetUnreachableError(url, "nothing listens there")
        near, far = _Endpoint(url), _Endpoint(f"{SCHEME}-client-{next(self._ids)}")
        near.other, far.other = far, near
        listener.accept(far)
        return near

    def close(self) -> None:
        """Unbind every listener; links already made stay up until closed."""
        with self._lock:
            self._listeners.clear()

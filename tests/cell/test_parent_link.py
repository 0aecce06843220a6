"""A child's link to its parent: a failed connect_parent leaves nothing behind."""

from __future__ import annotations

import threading

import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.channels import Channel
from fl_core.cell.parent import CONTROL, HELLO_OK
from fl_core.errors import TargetUnreachableError
from fl_core.spec.transport import CloseHandler, Connection, Frame, FrameHandler
from fl_plugins.transport_inprocess.transport import InProcessTransport

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")

AUX = Channel.AUX_COMMUNICATION
WAIT = 10.0


class _LateHello(Connection):
    """A link whose parent's hello_ok arrives just as the child gives up: while
    (or right after) the child closes it, as a transport's receiving thread can."""

    def __init__(self, inner: Connection, when: str) -> None:
        self.inner = inner
        self.when = when
        self._on_frame: FrameHandler | None = None

    @property
    def peer(self) -> str:
        return self.inner.peer

    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        self._on_frame = on_frame
        self.inner.start(on_frame, on_close)

    def send(self, frame: Frame) -> None:
        self.inner.send(frame)

    def _late_hello(self) -> None:
        on_frame, self._on_frame = self._on_frame, None  # once
        if on_frame is not None:
            on_frame(Frame({CONTROL: HELLO_OK}))

    def close(self) -> None:
        if self.when == "while closing":
            self._late_hello()
        self.inner.close()
        if self.when == "after closing":
            self._late_hello()


class _LateHelloTransport(InProcessTransport):
    def __init__(self, when: str, late_url: str) -> None:
        super().__init__()
        self.when = when
        self.late_url = late_url

    def connect(self, url: str, timeout: float) -> Connection:
        conn = super().connect(url, timeout)
        return _LateHello(conn, self.when) if url == self.late_url else conn


@pytest.mark.parametrize("when", ["while closing", "after closing"])
def test_a_connect_parent_that_times_out_as_the_answer_comes_leaves_no_thread_or_link(
    when: str,
) -> None:
    transport = _LateHelloTransport(when, "inprocess://mute")
    mute = transport.listen("inprocess://mute", lambda c: c.start(lambda f: None, lambda e: None))
    resources = CellResources()
    server = Cell("server", transport, resources)
    child = Cell("site-1", transport, resources)
    try:
        with pytest.raises(TargetUnreachableError, match="no answer to hello"):
            child.connect_parent("inprocess://mute", timeout=0.2)
        reconnecting = [t.name for t in threading.enumerate() if t.name.startswith("fl-recon")]
        assert reconnecting == []
        # No half-made parent link is left: the cell can connect for real.
        child.connect_parent(server.listen("inprocess://"), timeout=WAIT)
        server.register_handler(AUX, "ping", lambda m: "pong")
        assert child.request("server", AUX, "ping", None, timeout=WAIT).payload == "pong"
    finally:
        child.close()
        server.close()
        mute.close()
        resources.close()

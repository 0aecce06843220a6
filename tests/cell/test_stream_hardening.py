"""Streams against hostile and unlucky peers: forged ABORTs, relay tables, orphan replies.

The hostile peers are raw links that speak the cell protocol by hand (as in
test_streams.py), so each can send frames no cell would send, under its own
true origin: the cell layer already refuses forged origins per link.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.channels import Channel
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message, MessageType, Status
from fl_core.cell.parent import CONTROL, HELLO, HELLO_OK
from fl_core.cell.streams import StreamSettings
from fl_core.errors import CellError, RemoteError, RequestTimeoutError, TargetUnreachableError
from fl_core.spec.transport import Connection, Frame
from fl_core.testing.stream_contract import wait_until
from fl_plugins.transport_inprocess.transport import InProcessTransport

AUX = Channel.AUX_COMMUNICATION
WAIT = 10.0
KiB = 1024
# Idle timeouts long enough never to fire during a test: what a test sees
# is the behaviour under test, not an idle check.
CALM = StreamSettings(chunk_size=64 * KiB, window=256 * KiB, idle_timeout=60.0)


class BytesOnly(InProcessTransport):
    carries_objects: ClassVar[bool] = False


class Raw:
    """A hand-driven child cell: sends what it is told, records what it gets."""

    def __init__(self, transport: InProcessTransport, url: str, name: str) -> None:
        self.name = name
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.conn: Connection = transport.connect(url, WAIT)
        self.conn.start(self.frames.put, lambda exc: None)
        self.conn.send(Frame({CONTROL: HELLO, Header.ORIGIN: name}))
        assert self.frames.get(timeout=WAIT).headers[CONTROL] == HELLO_OK

    def first(
        self,
        to: str,
        sid: str,
        size: int,
        body: bytes,
        kind: MessageType = MessageType.FIRE,
        **extra: str,
    ) -> None:
        """The first frame of a stream of `size` bytes of `bytes` payload."""
        headers = {
            Header.CHANNEL: str(AUX),
            Header.TOPIC: "sink",
            Header.ORIGIN: self.name,
            Header.DESTINATION: to,
            Header.MSG_TYPE: str(kind),
            Header.PAYLOAD: "bytes",
            Header.STREAM: sid,
            Header.SEQ: "0",
            Header.SIZE: str(size),
            **extra,
        }
        self.conn.send(Frame(headers, body))

    def chunk(self, to: str, sid: str, seq: int, body: bytes) -> None:
        headers = {
            Header.ORIGIN: self.name,
            Header.DESTINATION: to,
            Header.MSG_TYPE: str(MessageType.CHUNK),
            Header.STREAM: sid,
            Header.SEQ: str(seq),
        }
        self.conn.send(Frame(headers, body))

    def send_abort(self, to: str, sid: str, stream_origin: str, reason: str) -> None:
        headers = {
            Header.ORIGIN: self.name,  # its own, true origin
            Header.DESTINATION: to,
            Header.MSG_TYPE: str(MessageType.ABORT),
            Header.STREAM: sid,
            Header.STREAM_ORIGIN: stream_origin,
            Header.ERROR: reason,
            Header.STATUS: str(Status.HANDLER_ERROR),
        }
        self.conn.send(Frame(headers, None))

    def next(self, wanted: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        """The headers of the next frame `wanted` accepts (fails the test after WAIT)."""
        while True:
            try:
                frame = self.frames.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"{self.name} got no such frame within {WAIT:g} s")
            if wanted(frame.headers):
                return frame.headers

    def abort(self) -> dict[str, str]:
        return self.next(lambda h: h.get(Header.MSG_TYPE) == MessageType.ABORT)


def _sink(cell: Cell) -> queue.Queue[Any]:
    """A streaming handler on `cell` for AUX/sink: puts the bytes, or the error."""
    seen: queue.Queue[Any] = queue.Queue()

    def sink(message: Message) -> None:
        assert isinstance(message.payload, IncomingPayload)
        try:
            seen.put(b"".join(bytes(c) for c in message.payload.chunks()))
        except CellError as exc:
            seen.put(exc)

    cell.register_handler(AUX, "sink", sink, streaming=True)
    return seen


class Net:
    """`server` with raw children (and real ones) on a bytes-only in-process transport."""

    def __init__(self, settings: StreamSettings = CALM) -> None:
        self.transport, self.resources = BytesOnly(), CellResources()
        self.server = Cell("server", self.transport, self.resources, streams=settings)
        self.url = self.server.listen("inprocess://")
        self.raws: list[Raw] = []
        self.cells: list[Cell] = []

    def raw(self, name: str) -> Raw:
        peer = Raw(self.transport, self.url, name)
        self.raws.append(peer)
        return peer

    def cell(self, name: str, settings: StreamSettings = CALM) -> Cell:
        cell = Cell(name, self.transport, self.resources, streams=settings)
        cell.connect_parent(self.url, timeout=WAIT)
        self.cells.append(cell)
        return cell

    def close(self) -> None:
        for peer in self.raws:
            peer.conn.close()
        for cell in self.cells:
            cell.close()
        self.server.close()
        self.resources.close()


@pytest.fixture
def net() -> Iterator[Net]:
    built = Net()
    yield built
    built.close()


# --- 1. forged ABORTs ----------------------------------------------------------------


def test_a_forged_abort_for_another_cells_incoming_stream_is_ignored(net: Net) -> None:
    seen = _sink(net.server)
    sender, liar = net.raw("server.raw"), net.raw("server.liar")
    sender.first("server", "s1", 6, b"abc")
    liar.send_abort("server", "s1", "server.raw", "forged by server.liar")
    sender.chunk("server", "s1", 1, b"def")
    assert seen.get(timeout=WAIT) == b"abcdef"


def test_a_forged_abort_for_another_cells_outgoing_stream_is_ignored(net: Net) -> None:
    receiver, liar = net.raw("server.raw"), net.raw("server.liar")
    future = net.server.request_async("server.raw", AUX, "sink", bytes(1024 * KiB), WAIT)
    sid = receiver.next(lambda h: Header.STREAM in h)[Header.STREAM]
    liar.send_abort("server", sid, "server", "forged by server.liar")
    receiver.send_abort("server", sid, "server", "the real receiver gives up")
    error = future.exception(WAIT)
    assert isinstance(error, RemoteError), error
    assert error.detail == "the real receiver gives up"


def test_a_forged_abort_through_a_relay_breaks_neither_the_relay_nor_the_end(
    net: Net,
) -> None:
    seen = _sink(net.cell("server.sink"))
    sender, liar = net.raw("server.raw"), net.raw("server.liar")
    sender.first("server.sink", "s1", 6, b"abc")
    liar.send_abort("server.sink", "s1", "server.raw", "forged by server.liar")
    sender.chunk("server.sink", "s1", 1, b"def")
    assert seen.get(timeout=WAIT) == b"abcdef"


def test_stream_ids_cannot_be_guessed_from_the_last_one(net: Net) -> None:
    receiver = net.raw("server.raw")
    sids = []
    for _ in range(2):
        net.server.fire("server.raw", AUX, "sink", bytes(128 * KiB))
        first = receiver.next(lambda h: h.get(Header.MSG_TYPE) == MessageType.FIRE)
        sids.append(first[Header.STREAM])
    assert sids[0] != sids[1]
    assert all(len(sid) >= 16 for sid in sids), sids  # 64 random bits, not a counter


# --- 2. what a relay keeps of the streams it forwards ------------------------------


def test_a_relay_refuses_streams_over_its_per_link_cap_and_keeps_the_link() -> None:
    net = Net(StreamSettings(chunk_size=64 * KiB, idle_timeout=60.0, max_relayed_per_link=2))
    try:
        sink = net.cell("server.sink")
        seen = _sink(sink)
        sender = net.raw("server.raw")
        sender.first("server.sink", "s1", 4, b"ab")
        sender.first("server.sink", "s2", 4, b"cd")
        sender.first("server.sink", "s3", 4, b"ef")  # the third at once: over the cap
        abort = sender.abort()
        assert (abort[Header.STREAM], abort[Header.ORIGIN]) == ("s3", "server")
        assert "already relays 2 streams from server.raw" in abort[Header.ERROR]
        assert net.server.streams_in_flight()["relayed"] == 2
        # The link is up and the two streams in the cap go on.
        sender.chunk("server.sink", "s1", 1, b"AB")
        sender.chunk("server.sink", "s2", 1, b"CD")
        assert {seen.get(timeout=WAIT), seen.get(timeout=WAIT)} == {b"abAB", b"cdCD"}
        sender.first("server.sink", "s4", 4, b"gh")  # room again
        sender.chunk("server.sink", "s4", 1, b"GH")
        assert seen.get(timeout=WAIT) == b"ghGH"
        assert sink.streams_in_flight()["in"] == 0
    finally:
        net.close()


def test_a_relay_refuses_an_over_cap_streamed_request_with_an_error_reply() -> None:
    tight = StreamSettings(chunk_size=64 * KiB, idle_timeout=60.0, max_relayed_per_link=1)
    net = Net(tight)
    try:
        sink = net.cell("server.sink")
        sender = net.cell("server.a", CALM)
        hold = threading.Event()
        sink.register_handler(AUX, "hold", lambda m: hold.wait(WAIT), streaming=True)
        first = sender.request_async("server.sink", AUX, "hold", bytes(1024 * KiB), WAIT)
        wait_until(lambda: net.server.streams_in_flight()["relayed"] == 1, WAIT, "one stream")
        second = sender.request_async("server.sink", AUX, "hold", bytes(200 * KiB), WAIT)
        error = second.exception(WAIT)
        assert isinstance(error, TargetUnreachableError), error
        assert "already relays 1 streams from server.a" in str(error)
        assert not first.done()
        hold.set()
        assert first.result(WAIT).payload is True
    finally:
        net.close()


def test_a_relay_forgets_an_idle_stream_and_aborts_both_ends() -> None:
    net = Net(StreamSettings(chunk_size=64 * KiB, idle_timeout=0.3))
    try:
        sink = net.cell("server.sink", CALM)  # its own idle check would take a minute
        seen = _sink(sink)
        sender = net.raw("server.raw")
        sender.first("server.sink", "s1", 1000, b"x" * 100)
        abort = sender.abort()
        assert abort[Header.ORIGIN] == "server"
        assert "no frame for 0.3 s" in abort[Header.ERROR]
        error = seen.get(timeout=WAIT)
        assert isinstance(error, CellError) and "no frame for 0.3 s" in str(error)
        wait_until(lambda: not any(net.server.streams_in_flight().values()), WAIT, "no record")
        wait_until(lambda: not any(sink.streams_in_flight().values()), WAIT, "the sink to drop it")
    finally:
        net.close()


def test_a_slow_consumer_keeps_a_relayed_stream_alive_past_the_idle_timeout() -> None:
    tight = StreamSettings(chunk_size=64 * KiB, window=64 * KiB, idle_timeout=0.3)
    net = Net(tight)
    try:
        sender, receiver = net.cell("server.a", tight), net.cell("server.b", tight)

        def slow(message: Message) -> object:
            assert isinstance(message.payload, IncomingPayload)
            total = 0
            for index, chunk in enumerate(message.payload.chunks()):
                if index == 0:
                    threading.Event().wait(4 * tight.idle_timeout)  # holds the only chunk
                total += chunk.nbytes
            return total

        receiver.register_handler(AUX, "slow", slow, streaming=True)
        reply = sender.request("server.b", AUX, "slow", bytes(300 * KiB), timeout=WAIT)
        assert reply.payload == 300 * KiB
    finally:
        net.close()


# --- 3. a streamed reply nobody waits for --------------------------------------------


def test_a_streamed_reply_to_a_timed_out_request_is_refused_at_once(net: Net) -> None:
    replier = net.raw("server.raw")
    future = net.server.request_async("server.raw", AUX, "sink", b"", timeout=0.2)
    request = replier.next(lambda h: h.get(Header.MSG_TYPE) == MessageType.REQUEST)
    assert isinstance(future.exception(WAIT), RequestTimeoutError)
    replier.first(
        "server", "r1", 1024 * KiB, bytes(64 * KiB), MessageType.REPLY,
        **{Header.IN_REPLY_TO: request[Header.MSG_ID], Header.STATUS: str(Status.OK)},
    )  # fmt: skip
    abort = replier.abort()
    assert abort[Header.STREAM] == "r1"
    assert "no longer waits for it" in abort[Header.ERROR]
    assert net.server.streams_in_flight()["in"] == 0


def test_a_reply_still_streaming_when_its_request_is_cancelled_is_aborted(net: Net) -> None:
    replier = net.raw("server.raw")
    future = net.server.request_async("server.raw", AUX, "sink", b"", timeout=WAIT)
    request = replier.next(lambda h: h.get(Header.MSG_TYPE) == MessageType.REQUEST)
    replier.first(
        "server", "r1", 1024 * KiB, bytes(64 * KiB), MessageType.REPLY,
        **{Header.IN_REPLY_TO: request[Header.MSG_ID], Header.STATUS: str(Status.OK)},
    )  # fmt: skip
    wait_until(lambda: net.server.streams_in_flight()["in"] == 1, WAIT, "the reply to start")
    assert future.cancel()
    abort = replier.abort()
    assert abort[Header.STREAM] == "r1"
    assert "its request has ended" in abort[Header.ERROR]
    assert net.server.streams_in_flight()["in"] == 0


# --- forged replies ----------------------------------------------------------------------


def test_a_reply_from_a_cell_other_than_the_one_asked_is_dropped(net: Net) -> None:
    asker, answerer = net.cell("server.asker"), net.cell("server.answerer")
    liar = net.raw("server.liar")
    seen: queue.Queue[str] = queue.Queue()
    go = threading.Event()

    def slow(message: Message) -> object:
        seen.put(message.get(Header.MSG_ID))
        go.wait(WAIT)
        return "the real answer"

    answerer.register_handler(AUX, "ask", slow)
    future = asker.request_async("server.answerer", AUX, "ask", None, WAIT)
    msg_id = seen.get(timeout=WAIT)
    # The liar knows the request's id (the best a liar can do) and answers first.
    liar.conn.send(
        Frame(
            {
                Header.ORIGIN: "server.liar",
                Header.DESTINATION: "server.asker",
                Header.MSG_TYPE: str(MessageType.REPLY),
                Header.CHANNEL: str(AUX),
                Header.TOPIC: "ask",
                Header.IN_REPLY_TO: msg_id,
                Header.STATUS: str(Status.OK),
                Header.PAYLOAD: "json",
            },
            b'"forged"',
        )
    )
    liar.conn.send(
        Frame(
            {
                Header.ORIGIN: "server.liar",
                Header.DESTINATION: "server.asker",
                Header.MSG_TYPE: str(MessageType.REPLY),
                Header.CHANNEL: str(AUX),
                Header.TOPIC: "ask",
                Header.IN_REPLY_TO: msg_id,
                Header.STATUS: str(Status.HANDLER_ERROR),
                Header.ERROR: "forged failure",
            },
            None,
        )
    )
    go.set()
    assert future.result(WAIT).payload == "the real answer"


def test_request_ids_cannot_be_guessed_from_another_cells(net: Net) -> None:
    one, two = net.cell("server.one"), net.cell("server.two")
    ids: queue.Queue[str] = queue.Queue()
    net.server.register_handler(AUX, "id", lambda m: ids.put(m.get(Header.MSG_ID)))
    one.request("server", AUX, "id", None, WAIT)
    two.request("server", AUX, "id", None, WAIT)
    first, second = ids.get(timeout=WAIT), ids.get(timeout=WAIT)
    assert first.split("#")[1] != second.split("#")[1]  # not both "1"

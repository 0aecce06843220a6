"""Streams at the cell level, over a bytes-only in-process link with tiny settings."""

from __future__ import annotations

import gc
import json
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.channels import Channel
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Header, Message, MessageType
from fl_core.cell.parent import CONTROL, HELLO
from fl_core.cell.payload import PayloadLimits
from fl_core.cell.streams import StreamSettings
from fl_core.errors import CellError, RequestTimeoutError
from fl_core.model import FLModel
from fl_core.serialization.model_header import pack_header_json
from fl_core.spec.transport import Connection, Frame
from fl_core.testing.stream_contract import RssPeak, digests, wait_until
from fl_plugins.transport_inprocess.transport import InProcessTransport

AUX = Channel.AUX_COMMUNICATION
WAIT = 10.0
KiB = 1024
SMALL = StreamSettings(chunk_size=64 * KiB, window=256 * KiB, idle_timeout=0.3)


class BytesOnly(InProcessTransport):
    carries_objects: ClassVar[bool] = False


@pytest.fixture
def pair() -> Iterator[tuple[Cell, Cell]]:
    server, job, close = _wire(SMALL, SMALL)
    yield server, job
    close()


def test_the_sender_never_gets_ahead_of_the_receiver_by_more_than_the_window(
    pair: tuple[Cell, Cell],
) -> None:
    server, job = pair
    started: queue.Queue[IncomingPayload] = queue.Queue()
    go = threading.Event()

    def slow(message: Message) -> object:
        assert isinstance(message.payload, IncomingPayload)
        started.put(message.payload)
        go.wait(WAIT)
        return digests({name: array for name, array in message.payload.arrays()})

    server.register_handler(AUX, "slow", slow, streaming=True)
    model = FLModel(params={f"a{i}": np.full(50_000, i, dtype=np.float32) for i in range(20)})
    future = job.request_async("server", AUX, "slow", model, timeout=WAIT)
    payload = started.get(timeout=WAIT)
    wait_until(lambda: payload.buffered >= SMALL.window - SMALL.chunk_size, WAIT, "a full window")
    assert payload.buffered <= SMALL.window
    assert job.streams_in_flight()["out"] == 1  # the sender waits; it has not finished
    assert payload.buffered <= SMALL.window
    go.set()
    assert future.result(WAIT).payload == digests(model.params)


def test_a_streamed_model_the_handler_drops_is_freed_without_the_cycle_collector(
    pair: tuple[Cell, Cell],
) -> None:
    server, job = pair
    kept: queue.Queue[weakref.ref[np.ndarray]] = queue.Queue()

    def take(message: Message) -> object:
        assert isinstance(message.payload, IncomingPayload)
        got = message.payload.result(WAIT)  # whole, as a pipe's receive takes it
        assert isinstance(got, FLModel)
        for array in got.params.values():
            kept.put(weakref.ref(array))
        return None

    server.register_handler(AUX, "take", take, streaming=True)
    model = FLModel(params={f"a{i}": np.full(100_000, i, dtype=np.float32) for i in range(4)})
    gc.disable()
    try:
        job.request("server", AUX, "take", model, timeout=WAIT)
        refs = [kept.get(timeout=WAIT) for _ in range(4)]
        wait_until(lambda: all(ref() is None for ref in refs), WAIT, "the arrays to be freed")
    finally:
        gc.enable()


def test_a_reply_over_the_requesters_limit_fails_the_request_promptly() -> None:
    strict = StreamSettings(chunk_size=64 * KiB, limits=PayloadLimits(max_size=128 * KiB))
    server, job, close = _wire(StreamSettings(), strict)
    try:
        server.register_handler(AUX, "big", lambda m: bytes(1024 * KiB))
        future = job.request_async("server", AUX, "big", None, timeout=60.0)
        error = future.exception(WAIT)
        assert isinstance(error, CellError) and not isinstance(error, RequestTimeoutError)
        assert "over this cell's limit of 131072" in str(error)
    finally:
        close()


class RawPeer:
    """A hand-driven child of `server`, to send frames no cell would send."""

    def __init__(self, transport: InProcessTransport, url: str, name: str = "server.raw") -> None:
        self.transport = transport
        self.frames: queue.Queue[Frame] = queue.Queue()
        self.conn: Connection = transport.connect(url, WAIT)
        self.conn.start(self.frames.put, lambda exc: None)
        self.conn.send(Frame({CONTROL: HELLO, Header.ORIGIN: name}))
        assert self.frames.get(timeout=WAIT).headers[CONTROL] == "hello_ok"

    def first_chunk(self, size: int, body: bytes, kind: str = "bytes", topic: str = "sink") -> None:
        headers = {
            Header.CHANNEL: str(AUX),
            Header.TOPIC: topic,
            Header.ORIGIN: "server.raw",
            Header.DESTINATION: "server",
            Header.MSG_TYPE: str(MessageType.FIRE),
            Header.PAYLOAD: kind,
            Header.STREAM: "7",
            Header.SEQ: "0",
            Header.SIZE: str(size),
        }
        self.conn.send(Frame(headers, body))

    def chunk(self, seq: int, body: bytes) -> None:
        headers = {
            Header.ORIGIN: "server.raw",
            Header.DESTINATION: "server",
            Header.MSG_TYPE: str(MessageType.CHUNK),
            Header.STREAM: "7",
            Header.SEQ: str(seq),
        }
        self.conn.send(Frame(headers, body))

    def abort(self) -> dict[str, str]:
        while True:
            frame = self.frames.get(timeout=WAIT)
            if frame.headers.get(Header.MSG_TYPE) == MessageType.ABORT:
                return frame.headers


@pytest.fixture
def raw() -> Iterator[tuple[Cell, RawPeer, queue.Queue[Any]]]:
    transport, resources = BytesOnly(), CellResources()
    server = Cell("server", transport, resources, streams=SMALL)
    seen: queue.Queue[Any] = queue.Queue()

    def sink(message: Message) -> None:
        assert isinstance(message.payload, IncomingPayload)
        try:
            seen.put(b"".join(bytes(c) for c in message.payload.chunks()))
        except CellError as exc:
            seen.put(exc)

    server.register_handler(AUX, "sink", sink, streaming=True)
    peer = RawPeer(transport, server.listen("inprocess://"))
    yield server, peer, seen
    peer.conn.close()
    server.close()
    resources.close()


def test_a_sender_that_stalls_is_cut_off_after_the_idle_timeout(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    server, peer, seen = raw
    peer.first_chunk(1000, b"x" * 100)
    error = seen.get(timeout=WAIT)
    assert isinstance(error, CellError)
    assert "no data for 0.3 s" in str(error)
    assert "no data for 0.3 s (100 of 1000 bytes arrived)" in peer.abort()[Header.ERROR]
    wait_until(lambda: not any(server.streams_in_flight().values()), WAIT, "the stream to go")


def test_a_chunk_out_of_order_breaks_the_stream(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    _, peer, seen = raw
    peer.first_chunk(300, b"a" * 100)
    peer.chunk(2, b"c" * 100)
    assert "chunk 2 arrived where 1 was due" in peer.abort()[Header.ERROR]
    error = seen.get(timeout=WAIT)
    assert isinstance(error, CellError) and "broke off" in str(error)


def test_more_data_than_announced_breaks_the_stream(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    _, peer, seen = raw
    peer.first_chunk(150, b"a" * 100)
    peer.chunk(1, b"b" * 100)
    assert "more data than announced: 200 of 150" in peer.abort()[Header.ERROR]
    assert isinstance(seen.get(timeout=WAIT), CellError)


def test_a_whole_stream_in_order_arrives(raw: tuple[Cell, RawPeer, queue.Queue[Any]]) -> None:
    server, peer, seen = raw
    peer.first_chunk(250, b"a" * 100)
    peer.chunk(1, b"b" * 100)
    peer.chunk(2, b"c" * 50)
    assert seen.get(timeout=WAIT) == b"a" * 100 + b"b" * 100 + b"c" * 50
    wait_until(lambda: not any(server.streams_in_flight().values()), WAIT, "the stream to end")


def test_a_chunk_from_another_link_claiming_the_streams_origin_is_dropped(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    server, peer, seen = raw
    url = server.listen("inprocess://")
    liar = RawPeer(peer.transport, url, name="server.liar")
    try:
        peer.first_chunk(6, b"abc")
        liar.chunk(1, b"XYZ")  # origin "server.raw", stream 7, seq 1: but not its link
        peer.chunk(1, b"def")
        assert seen.get(timeout=WAIT) == b"abcdef"
    finally:
        liar.conn.close()


def test_a_chunk_of_an_unknown_stream_is_dropped(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    _, peer, seen = raw
    peer.chunk(1, b"stray")
    peer.first_chunk(3, b"abc")
    assert seen.get(timeout=WAIT) == b"abc"


def test_a_huge_announced_model_commits_no_memory_the_peer_has_not_sent(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    server, peer, seen = raw
    huge = 48 * 2**30  # twice this machine's memory
    doc = {
        "params_type": "FULL",
        "current_round": None,
        "total_rounds": None,
        "metrics": {},
        "meta": {},
        "arrays": [{"name": "w", "dtype": "uint8", "shape": [huge], "offset": 0, "nbytes": huge}],
    }
    header = pack_header_json(json.dumps(doc).encode())
    whole: queue.Queue[Message] = queue.Queue()
    server.register_handler(AUX, "whole", whole.put)  # not streaming: the cell assembles
    with RssPeak() as rss:
        body = header + bytes(64 * KiB)
        peer.first_chunk(len(header) + huge, body, kind="model", topic="whole")
        reason = peer.abort()[Header.ERROR]
    assert "no data for 0.3 s" in reason or "cannot reserve" in reason, reason
    assert rss.growth < 64 * 2**20, f"RSS grew by {rss.growth / 2**20:.0f} MiB"
    assert whole.empty() and seen.empty()
    wait_until(lambda: not any(server.streams_in_flight().values()), WAIT, "the stream to go")


def test_a_receiver_with_a_bigger_window_still_lets_a_small_window_sender_through() -> None:
    server, job, close = _wire(StreamSettings(), SMALL)  # windows 16 MiB and 256 KiB
    try:
        server.register_handler(AUX, "digest", lambda m: digests(m.payload.params))
        model = FLModel(params={"w": np.arange(1 << 20, dtype=np.float32)})  # 4 MiB
        reply = job.request("server", AUX, "digest", model, timeout=WAIT)
        assert reply.payload == digests(model.params)
    finally:
        close()


def test_a_consumer_slower_than_the_idle_timeout_is_not_cut_off(
    pair: tuple[Cell, Cell],
) -> None:
    server, job = pair
    go = threading.Event()

    def dawdle(message: Message) -> object:
        assert isinstance(message.payload, IncomingPayload)
        go.wait(WAIT)  # holds a full window for several idle timeouts
        return digests(dict(message.payload.arrays()))

    server.register_handler(AUX, "dawdle", dawdle, streaming=True)
    model = FLModel(params={f"a{i}": np.full(50_000, i, dtype=np.float32) for i in range(20)})
    future = job.request_async("server", AUX, "dawdle", model, timeout=WAIT)
    threading.Timer(4 * SMALL.idle_timeout, go.set).start()
    assert future.result(WAIT).payload == digests(model.params)


def _wire(streams_a: StreamSettings, streams_b: StreamSettings) -> tuple[Cell, Cell, Any]:
    transport, resources = BytesOnly(), CellResources()
    server = Cell("server", transport, resources, streams=streams_a)
    job = Cell("server.j", transport, resources, streams=streams_b)
    job.connect_parent(server.listen("inprocess://"), timeout=WAIT)

    def close() -> None:
        job.close()
        server.close()
        resources.close()

    return server, job, close


def test_a_stream_refused_at_its_end_fails_its_request_promptly() -> None:
    strict = StreamSettings(
        chunk_size=64 * KiB, window=256 * KiB, limits=PayloadLimits(max_model_arrays=2)
    )
    server, job, close = _wire(strict, SMALL)
    try:
        server.register_handler(AUX, "same", lambda m: None)
        model = FLModel(params={n: np.ones(20_000, dtype=np.float32) for n in "abc"})
        future = job.request_async("server", AUX, "same", model, timeout=60.0)
        error = future.exception(WAIT)  # long before the request's own timeout
        assert isinstance(error, CellError) and not isinstance(error, RequestTimeoutError)
        assert "3 arrays" in str(error) or "limit is 2" in str(error), error
    finally:
        close()


def test_a_request_that_times_out_stops_streaming_its_payload(pair: tuple[Cell, Cell]) -> None:
    server, job = pair
    hold = threading.Event()
    server.register_handler(AUX, "hold", lambda m: hold.wait(WAIT), streaming=True)
    model = FLModel(params={f"a{i}": np.ones(50_000, dtype=np.float32) for i in range(20)})
    future = job.request_async("server", AUX, "hold", model, timeout=0.5)
    assert isinstance(future.exception(WAIT), RequestTimeoutError)
    wait_until(lambda: job.streams_in_flight()["out"] == 0, WAIT, "the sender to stop")
    wait_until(lambda: server.streams_in_flight()["in"] == 0, WAIT, "the receiver to drop it")
    hold.set()


def test_a_chunks_consumer_slower_than_the_idle_timeout_is_kept_alive() -> None:
    tight = StreamSettings(chunk_size=64 * KiB, window=64 * KiB, idle_timeout=0.3)
    server, job, close = _wire(tight, tight)
    try:

        def slow(message: Message) -> object:
            assert isinstance(message.payload, IncomingPayload)
            total = 0
            for index, chunk in enumerate(message.payload.chunks()):
                if index == 0:
                    threading.Event().wait(4 * tight.idle_timeout)  # holds the only chunk
                total += chunk.nbytes
            return total

        server.register_handler(AUX, "slow", slow, streaming=True)
        reply = job.request("server", AUX, "slow", bytes(300 * KiB), timeout=WAIT)
        assert reply.payload == 300 * KiB
    finally:
        close()


def test_a_forged_origin_from_a_child_is_dropped(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    server, peer, seen = raw
    liar = RawPeer(peer.transport, server.listen("inprocess://"), name="server.liar")
    try:
        liar.first_chunk(3, b"abc")  # claims origin server.raw: not its own subtree
        peer.first_chunk(3, b"xyz")
        assert seen.get(timeout=WAIT) == b"xyz"
        assert seen.empty()
    finally:
        liar.conn.close()


@pytest.mark.parametrize("size", ["3²", "٣"])
def test_a_non_ascii_digit_in_a_size_is_refused_not_raised(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]], size: str
) -> None:
    _, peer, _ = raw
    peer.conn.send(
        Frame(
            {
                Header.CHANNEL: str(AUX),
                Header.TOPIC: "sink",
                Header.ORIGIN: "server.raw",
                Header.DESTINATION: "server",
                Header.MSG_TYPE: str(MessageType.FIRE),
                Header.PAYLOAD: "bytes",
                Header.STREAM: "7",
                Header.SEQ: "0",
                Header.SIZE: size,
            },
            b"a",
        )
    )
    assert "bad size header" in peer.abort()[Header.ERROR]


def test_a_sender_that_overruns_its_window_is_cut_off(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    _, peer, seen = raw
    chunk = bytes(64 * KiB)
    peer.first_chunk(64 * len(chunk), chunk)  # announces no window: the receiver's 256 KiB
    for seq in range(1, 63):
        peer.chunk(seq, chunk)  # never waits for an ACK
    assert "overran its window of 262144 bytes" in peer.abort()[Header.ERROR]
    assert isinstance(seen.get(timeout=WAIT), CellError)


def test_a_big_announced_bytes_payload_costs_only_what_arrived(
    raw: tuple[Cell, RawPeer, queue.Queue[Any]],
) -> None:
    server, peer, _ = raw
    whole: queue.Queue[Message] = queue.Queue()
    server.register_handler(AUX, "whole", whole.put)  # not streaming: the cell assembles
    with RssPeak() as rss:
        peer.first_chunk(512 * 2**20, b"x", topic="whole")
        assert "no data for 0.3 s" in peer.abort()[Header.ERROR]
    assert rss.growth < 64 * 2**20, f"RSS grew by {rss.growth / 2**20:.0f} MiB"
    assert whole.empty()

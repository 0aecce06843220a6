"""The streaming part of the transport contract: payloads of any size, bounded memory.

`TransportContract` includes these tests; they run through the cell tree of
`build_cell_tree` (two relays between server.j and site-1.j), so they check
the cell layer's chunking, flow-control window and relaying over the
transport under test. Class attributes scale them:
`huge_payload_bytes` (3 GiB by default), `stream_wait`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ClassVar

import numpy as np
import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.message import Message
from fl_core.cell.payload import PayloadLimits
from fl_core.cell.streams import StreamSettings
from fl_core.errors import CellError, RemoteError, TargetUnreachableError
from fl_core.model import FLModel
from fl_core.spec.transport import Transport

__all__ = ["RssPeak", "StreamContract", "digests", "wait_until"]

AUX = Channel.AUX_COMMUNICATION
MiB = 2**20


def digests(params: dict[str, np.ndarray]) -> dict[str, str]:
    """sha256 of each array's bytes, with its dtype and shape."""
    return {
        name: f"{array.dtype}{list(array.shape)}:"
        + hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
        for name, array in params.items()
    }


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class RssPeak:
    """Samples this process's RSS every few milliseconds; `growth` is peak minus start."""

    def __init__(self, interval: float = 0.005) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self.start = 0
        self.peak = 0
        self._thread = threading.Thread(target=self._run, name="rss-peak", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> RssPeak:
        self.start = self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        """Bytes the RSS rose above its value at the start."""
        return self.peak - self.start


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.01)


def _model(total: int, seed: int = 0) -> FLModel:
    """Random arrays of mixed dtypes and sizes adding up to about `total` bytes."""
    rng = np.random.default_rng(seed)
    big = total // 2
    return FLModel(
        params={
            "dense.w": rng.standard_normal(big // 4, dtype=np.float32).reshape(-1, 4),
            "dense.b": rng.standard_normal(7).astype(np.float64),
            "steps": np.arange(3, dtype=np.int64),
            "empty": np.zeros((0, 3), dtype=np.float32),
            "conv.w": rng.standard_normal((total - big) // 8),
        },
        metrics={"loss": 0.25},
        meta={"num_samples": 12, "note": "ünïcode"},
        current_round=3,
        total_rounds=5,
    )


def _outcome(future: Future[Message], timeout: float) -> Message | BaseException:
    try:
        return future.result(timeout)
    except Exception as exc:
        return exc


class StreamContract:
    """Streaming tests every transport passes; part of `TransportContract`."""

    huge_payload_bytes: ClassVar[int] = 3 * 2**30
    """The size of the payload that must stream with bounded memory."""
    stream_wait: ClassVar[float] = 300.0
    """Bounds the waits of the huge-payload test (reached only when broken)."""
    wait: ClassVar[float]
    listen_url: ClassVar[str]

    def _streams_idle(self, *cells: Cell) -> bool:
        return all(not any(cell.streams_in_flight().values()) for cell in cells)

    def test_cells_carry_every_payload_kind(self, tree: Any) -> None:
        tree["site-1.j"].register_handler(AUX, "same", lambda m: m.payload)
        model = _model(64 * 1024)
        for payload in (None, b"\x00bytes", {"w": [1, 2.5, None], "s": "ß"}, "text", 7, model):
            reply = tree["server.j"].request("site-1.j", AUX, "same", payload, timeout=self.wait)
            if isinstance(payload, FLModel):
                back = reply.payload
                assert isinstance(back, FLModel)
                assert digests(back.params) == digests(payload.params)
                assert (back.metrics, back.meta) == (payload.metrics, payload.meta)
                assert (back.current_round, back.total_rounds) == (3, 5)
            else:
                assert reply.payload == payload

    def test_cells_refuse_a_payload_they_cannot_encode_at_once(self, tree: Any) -> None:
        tree["site-1.j"].register_handler(AUX, "same", lambda m: m.payload)
        future = tree["server.j"].request_async("site-1.j", AUX, "same", {1, 2}, self.wait)
        result = _outcome(future, self.wait)
        if tree.transport.carries_objects:
            assert isinstance(result, Message) and result.payload == {1, 2}
        else:
            # Refused at the sender, saying why, not lost to a timeout.
            assert isinstance(result, CellError), result
            assert not isinstance(result, TargetUnreachableError)
            assert "(set) cannot be sent" in str(result)

    def test_a_model_larger_than_a_frame_goes_and_comes_back_through_relays(
        self, tree: Any
    ) -> None:
        model = _model(40 * MiB)
        tree["site-1.j"].register_handler(AUX, "same", lambda m: m.payload)
        reply = tree["server.j"].request("site-1.j", AUX, "same", model, timeout=60.0)
        assert isinstance(reply.payload, FLModel)
        assert digests(reply.payload.params) == digests(model.params)
        assert reply.payload.meta == model.meta
        cells = [tree[name] for name in ("server.j", "server", "site-1", "site-1.j")]
        wait_until(lambda: self._streams_idle(*cells), self.wait, "every stream to finish")

    def test_streams_in_both_directions_at_once_stay_apart(self, tree: Any) -> None:
        models = {i: _model(6 * MiB, seed=i) for i in range(6)}
        for name in ("server.j", "site-1.j"):
            tree[name].register_handler(AUX, "digest", lambda m: digests(m.payload.params))
        futures = [
            tree["server.j" if i % 2 else "site-1.j"].request_async(
                "site-1.j" if i % 2 else "server.j", AUX, "digest", models[i], 60.0
            )
            for i in models
        ]
        for i, future in enumerate(futures):
            assert future.result(60.0).payload == digests(models[i].params)

    def test_a_huge_model_streams_array_by_array_in_bounded_memory(self, tree: Any) -> None:
        # One 32 MiB block repeated: the payload is huge, the sender's memory is not.
        block = np.arange(8 * MiB, dtype=np.float32)
        count = max(1, self.huge_payload_bytes // block.nbytes)
        model = FLModel(params={f"layer{i}": block for i in range(count)})
        expected = hashlib.sha256(block.data).hexdigest()

        def consume(message: Message) -> object:
            payload = message.payload
            assert isinstance(payload, IncomingPayload)
            arrays = total = 0
            for _, array in payload.arrays():
                if hashlib.sha256(array.data).hexdigest() != expected:
                    raise AssertionError("an array arrived changed")
                arrays, total = arrays + 1, total + array.nbytes
                del array
            return {"arrays": arrays, "bytes": total}

        tree["site-1.j"].register_handler(AUX, "fold", consume, streaming=True)
        with RssPeak() as rss:
            reply = tree["server.j"].request("site-1.j", AUX, "fold", model, self.stream_wait)
        assert reply.payload == {"arrays": count, "bytes": count * block.nbytes}
        # Sender, two relays and the receiver all live in this process.
        assert rss.growth < 256 * MiB, f"RSS grew by {rss.growth / MiB:.0f} MiB"

    def _held_stream(
        self, tree: Any, model: FLModel
    ) -> tuple[Future[Message], queue.Queue[Any], threading.Event]:
        """Start streaming `model` server.j -> site-1.j; the receiver stalls after one
        array until the returned event is set."""
        if tree.transport.carries_objects:
            pytest.skip("this transport hands payloads over whole: nothing streams")
        events: queue.Queue[Any] = queue.Queue()
        release = threading.Event()

        def consume(message: Message) -> object:
            payload = message.payload
            assert isinstance(payload, IncomingPayload)
            try:
                for _ in payload.arrays():
                    events.put("array")
                    release.wait(self.wait)
            except CellError as exc:
                events.put(exc)
                raise
            return None

        tree["site-1.j"].register_handler(AUX, "hold", consume, streaming=True)
        future = tree["server.j"].request_async("site-1.j", AUX, "hold", model, 60.0)
        assert events.get(timeout=self.wait) == "array"
        return future, events, release

    def test_a_stream_fails_promptly_when_its_receiver_goes(self, tree: Any) -> None:
        many = FLModel(params={f"a{i}": np.full(MiB, i, dtype=np.float32) for i in range(32)})
        future, _, release = self._held_stream(tree, many)
        tree["site-1.j"].close()
        error = _outcome(future, self.wait)
        release.set()
        assert isinstance(error, TargetUnreachableError), error
        assert error.fqcn == "site-1.j"
        cells = [tree[name] for name in ("server.j", "server", "site-1")]
        wait_until(lambda: self._streams_idle(*cells), self.wait, "the broken stream to be gone")

    def test_a_stream_breaks_off_at_the_receiver_when_its_sender_goes(self, tree: Any) -> None:
        many = FLModel(params={f"a{i}": np.full(MiB, i, dtype=np.float32) for i in range(32)})
        _, events, release = self._held_stream(tree, many)
        tree["server.j"].close()
        release.set()
        while (event := events.get(timeout=self.wait)) == "array":
            pass
        assert isinstance(event, CellError)
        assert "from server.j broke off" in str(event)
        cells = [tree[name] for name in ("server", "site-1", "site-1.j")]
        wait_until(lambda: self._streams_idle(*cells), self.wait, "the broken stream to be gone")

    def test_a_receiver_refuses_a_payload_over_its_limit_and_goes_on(
        self, transport: Transport
    ) -> None:
        small = StreamSettings(limits=PayloadLimits(max_size=4 * MiB))
        receiver = Cell("server", transport, streams=small)
        sender = Cell("server.j", transport)
        try:
            receiver.register_handler(AUX, "same", lambda m: m.payload)
            sender.connect_parent(receiver.listen(self.listen_url), timeout=self.wait)
            future = sender.request_async("server", AUX, "same", _model(16 * MiB), 60.0)
            error = _outcome(future, self.wait)
            if transport.carries_objects:
                assert isinstance(error, Message)  # objects are handed over, never encoded
                return
            assert isinstance(error, RemoteError), error
            assert "over this cell's limit" in str(error)
            reply = sender.request("server", AUX, "same", b"small", timeout=self.wait)
            assert isinstance(reply.payload, bytes | bytearray | memoryview)
            assert bytes(reply.payload) == b"small"
        finally:
            sender.close()
            receiver.close()

"""Cells over the in-process transport: the tree, routing, requests and their failures.

The tree used by most tests is the simulator's:

    server ── server.j
          └── site-1 ── site-1.j
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import numpy as np
import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.errors import (
    CellError,
    InvalidFQCNError,
    NoHandlerError,
    RemoteError,
    RequestTimeoutError,
    TargetUnreachableError,
)
from fl_core.model import FLModel
from fl_core.spec.transport import CloseHandler, Connection, Frame, FrameHandler, Listener
from fl_core.testing.transport_contract import deferring
from fl_plugins.transport_inprocess.transport import InProcessTransport

AUX = Channel.AUX_COMMUNICATION
WAIT = 10.0
pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
"""Bounds every wait in these tests; only reached when something is broken."""
NAMES = ("server", "server.j", "site-1", "site-1.j")

T = TypeVar("T")


class Tree:
    """The four cells, sharing one transport and one `CellResources`."""

    def __init__(self) -> None:
        self.transport = InProcessTransport()
        self.resources = CellResources()
        self.cells: dict[str, Cell] = {}
        server = self.add("server")
        self.server_url = server.listen("inprocess://server")
        self.add("server.j", self.server_url)
        self.site_url = self.add("site-1", self.server_url).listen("inprocess://site-1")
        self.add("site-1.j", self.site_url)
        for cell in self.cells.values():
            cell.register_handler(AUX, "echo", echo(cell))

    def add(self, name: str, parent_url: str | None = None) -> Cell:
        cell = Cell(name, self.transport, self.resources)
        self.cells[name] = cell
        if parent_url is not None:
            cell.connect_parent(parent_url, timeout=WAIT)
        return cell

    def __getitem__(self, name: str) -> Cell:
        return self.cells[name]

    def close(self) -> None:
        for cell in reversed(list(self.cells.values())):
            cell.close()
        self.resources.close()
        self.transport.close()


def echo(cell: Cell) -> Callable[[Message], object]:
    def handler(message: Message) -> object:
        return {"at": cell.fqcn, "from": message.origin, "payload": message.payload}

    return handler


@pytest.fixture
def tree() -> Iterator[Tree]:
    tree = Tree()
    yield tree
    tree.close()


def outcome(future: Future[T]) -> T | BaseException:
    """The future's result or its exception, within WAIT."""
    try:
        return future.result(WAIT)
    except Exception as exc:
        return exc


# --- the tree and request/reply ------------------------------------------------


def test_the_tree_knows_its_children(tree: Tree) -> None:
    assert tree["server"].children() == ["server.j", "site-1"]
    assert tree["site-1"].children() == ["site-1.j"]
    assert tree["site-1.j"].children() == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("server.j", "server"),  # child -> parent
        ("site-1.j", "site-1"),  # child -> parent, one level down
        ("site-1.j", "server"),  # grandchild -> root
        ("server", "site-1.j"),  # parent -> grandchild
        ("site-1", "site-1.j"),  # parent -> child
        ("site-1.j", "server.j"),  # sibling subtree -> sibling subtree
        ("server.j", "site-1.j"),  # and back
        ("server.j", "site-1"),
        ("site-1", "site-1"),  # self
        ("server", "server"),
    ],
)
def test_request_and_reply_in_every_direction(tree: Tree, source: str, target: str) -> None:
    payload = {"weights": [0.5, 1.5]}
    reply = tree[source].request(target, AUX, "echo", payload, timeout=WAIT)
    assert reply.payload == {"at": target, "from": source, "payload": payload}
    assert reply.origin == target
    assert reply.destination == source
    assert (reply.channel, reply.topic) == (AUX, "echo")


def test_objects_travel_by_reference_in_process(tree: Tree) -> None:
    payload = {"big": bytearray(10)}
    reply = tree["site-1.j"].request("server.j", AUX, "echo", payload, timeout=WAIT)
    assert reply.payload["payload"] is payload  # type: ignore[index]


def test_extra_headers_reach_the_handler_and_reply_headers_come_back(tree: Tree) -> None:
    requests = deferring(tree["server.j"], "ask")
    future = tree["site-1.j"].request_async(
        "server.j", AUX, "ask", timeout=WAIT, headers={"round": "3"}
    )
    request = requests.get(timeout=WAIT)
    assert request.get("round") == "3"
    tree["server.j"].reply(request, "ok", verdict="accepted")
    reply = future.result(WAIT)
    assert (reply.payload, reply.get("verdict")) == ("ok", "accepted")


def test_fire_and_forget_is_delivered_and_gets_no_reply(tree: Tree) -> None:
    received: queue.Queue[Message] = queue.Queue()

    def handler(message: Message) -> object:
        received.put(message)
        return "ignored"

    tree["server.j"].register_handler(Channel.SERVER_MAIN, "log", handler)
    tree["site-1.j"].fire("server.j", Channel.SERVER_MAIN, "log", {"loss": 0.25})
    message = received.get(timeout=WAIT)
    assert message.payload == {"loss": 0.25}
    assert message.origin == "site-1.j"


def test_fire_without_a_route_raises(tree: Tree) -> None:
    with pytest.raises(TargetUnreachableError):
        tree["server"].fire("site-9", AUX, "echo")
    with pytest.raises(InvalidFQCNError):
        tree["server"].fire("site 9", AUX, "echo")


def test_broadcast_gives_each_target_its_reply_or_its_error(tree: Tree) -> None:
    tree["site-1.j"].register_handler(AUX, "only-j", lambda message: "from site-1.j")
    results = tree["server.j"].broadcast(
        ["site-1.j", "site-1", "site-9.j"], AUX, "only-j", timeout=WAIT
    )
    assert set(results) == {"site-1.j", "site-1", "site-9.j"}
    reply = results["site-1.j"]
    assert isinstance(reply, Message) and reply.payload == "from site-1.j"
    no_handler = results["site-1"]
    assert isinstance(no_handler, NoHandlerError)
    assert (no_handler.fqcn, no_handler.channel, no_handler.topic) == ("site-1", AUX, "only-j")
    assert "no handler for aux_communication/only-j at site-1" in str(no_handler)
    unreachable = results["site-9.j"]
    assert isinstance(unreachable, TargetUnreachableError)
    assert unreachable.fqcn == "site-9.j"


# --- failures ------------------------------------------------------------------


def test_a_request_nobody_answers_times_out_naming_target_channel_and_topic(tree: Tree) -> None:
    requests = deferring(tree["server.j"], "never")
    with pytest.raises(RequestTimeoutError) as info:
        tree["site-1.j"].request("server.j", AUX, "never", timeout=0.2)
    error = info.value
    assert (error.fqcn, error.channel, error.topic, error.timeout) == (
        "server.j",
        AUX,
        "never",
        0.2,
    )
    assert "no reply from 'server.j' on aux_communication/never within 0.2 s" in str(error)
    # A late answer is dropped without troubling the late replier.
    tree["server.j"].reply(requests.get(timeout=WAIT), "too late")


def test_a_failing_handler_becomes_a_remote_error_with_its_text(tree: Tree) -> None:
    def handler(message: Message) -> object:
        raise ValueError("weights contain NaN")

    tree["server.j"].register_handler(AUX, "train", handler)
    with pytest.raises(RemoteError) as info:
        tree["site-1.j"].request("server.j", AUX, "train", timeout=WAIT)
    assert info.value.detail == "ValueError: weights contain NaN"
    assert (info.value.fqcn, info.value.channel, info.value.topic) == ("server.j", AUX, "train")
    assert "weights contain NaN" in str(info.value)


def test_a_deferred_reply_from_another_thread_arrives(tree: Tree) -> None:
    requests = deferring(tree["server"], "slow")
    future = tree["site-1.j"].request_async("server", AUX, "slow", "question", timeout=WAIT)
    request = requests.get(timeout=WAIT)
    assert request.payload == "question"
    assert not future.done()
    replier = threading.Thread(target=tree["server"].reply, args=(request, "answer"))
    replier.start()
    replier.join(WAIT)
    assert future.result(WAIT).payload == "answer"


def test_an_unknown_target_is_unreachable_from_a_relay_not_a_timeout(tree: Tree) -> None:
    with pytest.raises(TargetUnreachableError) as info:
        tree["site-1.j"].request("site-7.j", AUX, "echo", timeout=WAIT)
    assert info.value.fqcn == "site-7.j"
    assert "no route from server" in str(info.value)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("site-1.j", "site-1.nope"),  # under the relay's own name
        ("server.j", "server.nope"),
        ("server", "site-1.j.deeper"),  # under a leaf
        ("site-1", "site-1.j.deeper"),
    ],
)
def test_unknown_names_inside_a_subtree_do_not_bounce(tree: Tree, source: str, target: str) -> None:
    future = tree[source].request_async(target, AUX, "echo", timeout=WAIT)
    error = outcome(future)
    assert isinstance(error, TargetUnreachableError)
    assert error.fqcn == target


def test_a_cycle_of_misconnected_cells_cannot_loop_forever() -> None:
    transport = InProcessTransport()
    resources = CellResources()
    a, b = Cell("a", transport, resources), Cell("b", transport, resources)
    try:
        a_url, b_url = a.listen("inprocess://a"), b.listen("inprocess://b")
        b.connect_parent(a_url)
        a.connect_parent(b_url)  # each is now the other's parent
        error = outcome(a.request_async("zzz", AUX, "echo", timeout=WAIT))
        assert isinstance(error, TargetUnreachableError)
        assert "the request came back to a (are cells connected in a cycle?)" in str(error)
    finally:
        a.close()
        b.close()
        resources.close()


def test_invalid_names_are_refused(tree: Tree) -> None:
    with pytest.raises(InvalidFQCNError, match="segment 2 is empty"):
        Cell("server..j", tree.transport, tree.resources)
    error = outcome(tree["server"].request_async("site 1", AUX, "echo", timeout=WAIT))
    assert isinstance(error, InvalidFQCNError)


def test_a_duplicate_child_name_is_refused_at_connect_parent(tree: Tree) -> None:
    twin = Cell("server.j", tree.transport, tree.resources)
    try:
        with pytest.raises(CellError, match=r"'server\.j' is already connected"):
            twin.connect_parent(tree.server_url, timeout=WAIT)
    finally:
        twin.close()
    # The first cell of that name is untouched.
    reply = tree["server"].request("server.j", AUX, "echo", "hi", timeout=WAIT)
    assert reply.payload == {"at": "server.j", "from": "server", "payload": "hi"}


def test_connect_parent_to_nothing_is_unreachable(tree: Tree) -> None:
    lonely = Cell("site-2", tree.transport, tree.resources)
    try:
        with pytest.raises(TargetUnreachableError):
            lonely.connect_parent("inprocess://nobody", timeout=WAIT)
    finally:
        lonely.close()


def test_a_second_parent_is_refused(tree: Tree) -> None:
    with pytest.raises(CellError, match="already connected to a parent"):
        tree["site-1"].connect_parent(tree.server_url, timeout=WAIT)
    assert tree["server"].children() == ["server.j", "site-1"]


def test_a_child_closing_fails_requests_to_it_at_once(tree: Tree) -> None:
    requests = deferring(tree["server.j"], "hold")
    future = tree["server"].request_async("server.j", AUX, "hold", timeout=WAIT * 10)
    requests.get(timeout=WAIT)
    tree["server.j"].close()
    error = outcome(future)
    assert isinstance(error, TargetUnreachableError)
    assert error.fqcn == "server.j"
    assert "closed" in str(error)
    assert tree["server"].children() == ["site-1"]


def test_a_parent_closing_fails_requests_to_it_at_once(tree: Tree) -> None:
    requests = deferring(tree["site-1"], "hold")
    future = tree["site-1.j"].request_async("site-1", AUX, "hold", timeout=WAIT * 10)
    requests.get(timeout=WAIT)
    tree["site-1"].close()
    error = outcome(future)
    assert isinstance(error, TargetUnreachableError)
    # With its parent gone the cell has no route anywhere.
    after = outcome(tree["site-1.j"].request_async("server", AUX, "echo", timeout=WAIT))
    assert isinstance(after, TargetUnreachableError)


def test_close_fails_the_cells_own_pending_requests(tree: Tree) -> None:
    requests = deferring(tree["server"], "hold")
    future = tree["server.j"].request_async("server", AUX, "hold", timeout=WAIT * 10)
    requests.get(timeout=WAIT)
    tree["server.j"].close()
    error = outcome(future)
    assert isinstance(error, CellError)
    assert "'server.j' closed" in str(error)


def test_a_closed_cell_sends_nothing_even_to_itself(tree: Tree) -> None:
    cell = tree["site-1"]
    cell.close()
    for target in ("site-1", "server", "site-1.j"):
        error = outcome(cell.request_async(target, AUX, "echo", timeout=WAIT))
        assert isinstance(error, CellError) and "closed" in str(error)
    with pytest.raises(CellError, match="closed"):
        cell.fire("site-1", AUX, "echo")


def test_a_cell_with_closed_resources_fails_requests_instead_of_hanging() -> None:
    transport = InProcessTransport()
    resources = CellResources()
    cell = Cell("server", transport, resources)
    cell.register_handler(AUX, "echo", echo(cell))
    resources.close()
    try:
        error = outcome(cell.request_async("server", AUX, "echo", timeout=WAIT))
        assert isinstance(error, CellError)
    finally:
        cell.close()


def test_cancelling_a_request_drops_its_late_reply_quietly(tree: Tree) -> None:
    requests = deferring(tree["server.j"], "hold")
    future = tree["site-1.j"].request_async("server.j", AUX, "hold", timeout=WAIT * 10)
    request = requests.get(timeout=WAIT)
    assert future.cancel()
    tree["server.j"].reply(request, "nobody waits")  # must not raise
    # The requester still works.
    assert tree["site-1.j"].request("server.j", AUX, "echo", 1, timeout=WAIT).payload == {
        "at": "server.j",
        "from": "site-1.j",
        "payload": 1,
    }


def test_a_cell_owning_its_resources_stops_their_threads_on_close() -> None:
    transport = InProcessTransport()
    cell = Cell("server", transport)  # creates its own dispatcher and timer
    cell.register_handler(AUX, "echo", echo(cell))
    assert cell.request("server", AUX, "echo", 1, timeout=WAIT).payload["payload"] == 1  # type: ignore[index]
    cell.close()
    cell.close()  # idempotent
    # fl_no_threads_left checks that the dispatcher and timer threads ended.


# --- load ----------------------------------------------------------------------


def test_two_hundred_concurrent_requests_are_all_answered_correctly(tree: Tree) -> None:
    def double(message: Message) -> object:
        assert isinstance(message.payload, int)
        return (message.origin, message.payload * 2)

    for name in NAMES:
        tree[name].register_handler(AUX, "double", double)
    pairs = [
        ("site-1.j", "server.j"),
        ("server.j", "site-1.j"),
        ("server", "site-1.j"),
        ("site-1", "site-1"),
    ]

    def send(index: int) -> tuple[int, Future[Message]]:
        source, target = pairs[index % len(pairs)]
        return index, tree[source].request_async(target, AUX, "double", index, timeout=WAIT)

    with ThreadPoolExecutor(8) as senders:
        sent = list(senders.map(send, range(200)))
    for index, future in sent:
        source, _ = pairs[index % len(pairs)]
        assert future.result(WAIT).payload == (source, index * 2)


# --- a parent that speaks first ------------------------------------------------


class InlineExecutor(Executor):
    """Runs each task at once on the submitting thread (a deterministic dispatcher)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class _Tap(Connection):
    """An accepted connection that calls `after_first_send` once its first frame is out."""

    def __init__(self, inner: Connection, after_first_send: Callable[[], None]) -> None:
        self.inner = inner
        self.after_first_send: Callable[[], None] | None = after_first_send

    @property
    def peer(self) -> str:
        return self.inner.peer

    def start(self, on_frame: FrameHandler, on_close: CloseHandler) -> None:
        self.inner.start(on_frame, on_close)

    def send(self, frame: Frame) -> None:
        self.inner.send(frame)
        hook, self.after_first_send = self.after_first_send, None
        if hook is not None:
            hook()

    def close(self) -> None:
        self.inner.close()


class TappingTransport(InProcessTransport):
    """Calls `after_first_send` right after a listener's side sends its first
    frame on an accepted connection (a cell's answer to the hello)."""

    def __init__(self, after_first_send: Callable[[], None]) -> None:
        super().__init__()
        self.after_first_send = after_first_send

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        return super().listen(url, lambda conn: on_connection(_Tap(conn, self.after_first_send)))


def test_a_parent_may_send_the_moment_it_accepts_a_child() -> None:
    early: list[Future[Message]] = []
    transport = TappingTransport(
        lambda: early.append(server.request_async("site-1", AUX, "echo", "hi", timeout=WAIT))
    )
    resources = CellResources()
    # Handlers run at once on the receiving thread: the child answers while
    # it is still inside connect_parent.
    child_resources = CellResources(dispatcher=InlineExecutor())
    server = Cell("server", transport, resources)
    child = Cell("site-1", transport, child_resources)
    child.register_handler(AUX, "echo", echo(child))
    try:
        child.connect_parent(server.listen("inprocess://server"), timeout=WAIT)
        assert len(early) == 1
        reply = outcome(early[0])
        assert isinstance(reply, Message), reply
        assert reply.payload == {"at": "site-1", "from": "server", "payload": "hi"}
    finally:
        child.close()
        server.close()
        child_resources.close()
        resources.close()


# --- a transport that carries bytes only -----------------------------------------


class BytesOnlyTransport(InProcessTransport):
    """Behaves like a wire transport: frame bodies must be bytes."""

    carries_objects: ClassVar[bool] = False


@pytest.fixture
def wire() -> Iterator[tuple[Cell, Cell]]:
    transport = BytesOnlyTransport()
    resources = CellResources()
    server = Cell("server", transport, resources)
    job = Cell("server.j", transport, resources)
    job.connect_parent(server.listen("inprocess://"), timeout=WAIT)
    yield server, job
    job.close()
    server.close()
    resources.close()


def test_a_wire_transport_carries_bytes(wire: tuple[Cell, Cell]) -> None:
    server, job = wire
    job.register_handler(AUX, "bytes", lambda message: bytes(message.payload)[::-1])  # type: ignore[call-overload]
    assert server.request("server.j", AUX, "bytes", b"abc", timeout=WAIT).payload == b"cba"
    assert server.request("server.j", AUX, "bytes", bytearray(b"xy"), timeout=WAIT).payload == b"yx"


def test_a_wire_transport_carries_json_data_and_models(wire: tuple[Cell, Cell]) -> None:
    server, job = wire
    job.register_handler(AUX, "echo", echo(job))
    reply = server.request("server.j", AUX, "echo", {"w": [1, 2.5, None]}, timeout=WAIT)
    assert reply.payload == {"at": "server.j", "from": "server", "payload": {"w": [1, 2.5, None]}}
    job.register_handler(AUX, "model", lambda message: message.payload)
    model = FLModel(params={"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, metrics={"a": 1.0})
    back = server.request("server.j", AUX, "model", model, timeout=WAIT).payload
    assert isinstance(back, FLModel) and back is not model
    assert np.array_equal(back.params["w"], model.params["w"]) and back.metrics == {"a": 1.0}


def test_a_wire_transport_refuses_an_unencodable_payload_clearly(wire: tuple[Cell, Cell]) -> None:
    server, job = wire
    job.register_handler(AUX, "echo", echo(job))
    error = outcome(server.request_async("server.j", AUX, "echo", {1, 2}, timeout=WAIT))
    assert isinstance(error, CellError)
    assert not isinstance(error, TargetUnreachableError | RequestTimeoutError)
    assert "(set) cannot be sent" in str(error)
    assert "server -> server.j on aux_communication/echo" in str(error)
    with pytest.raises(CellError, match="send an FLModel, bytes, or plain JSON data"):
        server.fire("server.j", AUX, "echo", object())


def test_a_handler_returning_an_unencodable_object_over_a_wire_is_a_remote_error(
    wire: tuple[Cell, Cell],
) -> None:
    server, job = wire
    job.register_handler(AUX, "odd", lambda message: {"not": {1, 2}})
    error = outcome(server.request_async("server.j", AUX, "odd", b"", timeout=WAIT))
    assert isinstance(error, RemoteError)  # not a timeout: the requester learns why
    assert "cannot be sent" in error.detail


def test_a_deferred_unencodable_reply_over_a_wire_raises_at_the_replier(
    wire: tuple[Cell, Cell],
) -> None:
    server, job = wire
    requests = deferring(job, "later")
    future = server.request_async("server.j", AUX, "later", b"", timeout=WAIT)
    with pytest.raises(CellError, match="cannot be sent"):
        job.reply(requests.get(timeout=WAIT), object())
    error = outcome(future)
    assert isinstance(error, RemoteError)
    assert "(object) cannot be sent" in error.detail


def test_a_wire_transport_still_passes_objects_to_the_cell_itself(
    wire: tuple[Cell, Cell],
) -> None:
    server, _ = wire
    server.register_handler(AUX, "echo", echo(server))
    reply = server.request("server", AUX, "echo", {"stays": "local"}, timeout=WAIT)
    assert reply.payload == {"at": "server", "from": "server", "payload": {"stays": "local"}}

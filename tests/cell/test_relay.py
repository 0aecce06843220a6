"""Relays remember forwarded requests only until they are answered, expire or are lost."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.message import Header, Message
from fl_core.cell.relay import DEFAULT_TIMEOUT, MAX_TIMEOUT, request_timeout
from fl_core.errors import RequestTimeoutError
from fl_core.testing.transport_contract import AUX, CellTree, build_cell_tree, deferring
from fl_plugins.transport_inprocess.transport import InProcessTransport


@pytest.fixture
def tree() -> Iterator[CellTree]:
    built = build_cell_tree(InProcessTransport(), "inprocess://")
    yield built
    built.close()


def relayed(cell: Cell) -> int:
    return cell.relayed_requests()


class Blob:
    """A payload that can be watched with a weak reference."""


def test_an_answered_request_leaves_no_record_and_no_payload(tree: CellTree) -> None:
    tree["site-1.j"].register_handler(AUX, "take", lambda m: b"ok")
    blob = Blob()
    watch = weakref.ref(blob)
    reply = tree["server.j"].request("site-1.j", AUX, "take", blob, timeout=5)
    assert reply.payload == b"ok"
    del blob
    assert watch() is None  # no relay on the way kept the payload
    assert (relayed(tree["server"]), relayed(tree["site-1"])) == (0, 0)


def test_a_record_is_dropped_when_its_request_times_out(tree: CellTree) -> None:
    deferring(tree["site-1.j"], "never")
    future = tree["server.j"].request_async("site-1.j", AUX, "never", b"", timeout=0.2)
    with pytest.raises(RequestTimeoutError):
        future.result(5)
    gone = threading.Event()
    for _ in range(100):  # the relay's own timer fires at the same 0.2 s
        if relayed(tree["site-1"]) == 0 and relayed(tree["server"]) == 0:
            break
        gone.wait(0.05)
    assert (relayed(tree["server"]), relayed(tree["site-1"])) == (0, 0)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("2.5", 2.5),
        ("nan", DEFAULT_TIMEOUT),
        ("-1", DEFAULT_TIMEOUT),
        ("x", DEFAULT_TIMEOUT),
        ("1e12", MAX_TIMEOUT),
    ],
)
def test_a_peer_cannot_make_a_record_live_for_ever(given: str, used: float) -> None:
    assert request_timeout(Message({Header.TIMEOUT: given})) == used

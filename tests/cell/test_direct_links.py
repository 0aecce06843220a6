"""Direct links: two cells that are not parent and child talk without the tree's relays."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Header, MessageType
from fl_core.cell.proof import AdmissionRefused
from fl_core.errors import CellError, TargetUnreachableError
from fl_core.model import FLModel
from fl_core.spec.transport import Frame
from fl_plugins.transport_tcp.transport import TcpTransport

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")

AUX = Channel.AUX_COMMUNICATION


@pytest.fixture
def tree() -> Iterator[dict[str, Cell]]:
    """server <- server.j (listening) and server <- site-1 <- site-1.j, over tcp."""
    transport = TcpTransport()
    cells: dict[str, Cell] = {}
    try:
        for name in ("server", "server.j", "site-1", "site-1.j"):
            cells[name] = Cell(name, transport)
        url = cells["server"].listen("tcp://127.0.0.1:0")
        cells["server.j"].connect_parent(url)
        cells["site-1"].connect_parent(url)
        site_url = cells["site-1"].listen("tcp://127.0.0.1:0")
        cells["site-1.j"].connect_parent(site_url)
        cells["server.j"].register_handler(AUX, "echo", lambda m: m.payload)
        cells["site-1.j"].register_handler(AUX, "echo", lambda m: m.payload)
        yield cells
    finally:
        for cell in reversed(cells.values()):
            cell.close()
        transport.close()


KEY = b"site-1's secret"


def _keys(name: str) -> bytes:
    if name != "site-1.j":
        raise AdmissionRefused(f"{name} is not admitted")
    return KEY


def _direct(tree: dict[str, Cell], key: bytes = KEY) -> str:
    tree["server.j"].accept_direct(_keys)
    url = tree["server.j"].listen("tcp://127.0.0.1:0")
    return tree["site-1.j"].connect_direct(url, key=key)


def test_a_direct_link_names_the_far_end_and_carries_both_ways_without_the_tree(
    tree: dict[str, Cell],
) -> None:
    assert _direct(tree) == "server.j"
    # The tree between them goes away: only the direct link can carry this.
    tree["site-1"].close()
    model = FLModel(params={"w": np.arange(10 * 2**20, dtype=np.float32)})  # 40 MiB: streams
    reply = tree["site-1.j"].request("server.j", AUX, "echo", model, 60)
    assert isinstance(reply.payload, FLModel)
    np.testing.assert_array_equal(reply.payload.params["w"], model.params["w"])
    back = tree["server.j"].request("site-1.j", AUX, "echo", b"hello", 10)
    assert bytes(back.payload) == b"hello"


def test_when_the_direct_link_closes_messages_take_the_tree_again(
    tree: dict[str, Cell],
) -> None:
    _direct(tree)
    tree["server.j"].close_direct("site-1.j")
    reply = None
    for _ in range(100):  # until the initiator has seen the link close
        try:
            reply = tree["site-1.j"].request("server.j", AUX, "echo", b"via the tree", 10)
            break
        except TargetUnreachableError:
            continue
    assert reply is not None and bytes(reply.payload) == b"via the tree"


def test_a_cell_cannot_open_a_direct_link_to_itself_or_into_its_own_subtree() -> None:
    transport = TcpTransport()
    parent, child = Cell("site-1", transport), Cell("site-1.j", transport)
    try:
        url = child.listen("tcp://127.0.0.1:0")
        with pytest.raises(CellError, match="refused a direct link"):
            parent.connect_direct(url, key=KEY)  # site-1.j is under site-1: the tree's job
    finally:
        child.close()
        parent.close()
        transport.close()


def test_a_direct_link_carries_only_what_its_far_end_sends(tree: dict[str, Cell]) -> None:
    origin, destination = "server", "site-1.j"  # server.j speaking for its parent
    _direct(tree)
    seen = threading.Event()
    tree["site-1"].register_handler(AUX, "note", lambda m: seen.set())
    tree["site-1.j"].register_handler(AUX, "note", lambda m: seen.set())
    # The far end writes a frame of its own making straight onto the link.
    link = tree["server.j"].links.link_to("site-1.j")
    assert link is not None
    headers = {
        Header.CHANNEL: str(AUX),
        Header.TOPIC: "note",
        Header.ORIGIN: origin,
        Header.DESTINATION: destination,
        Header.MSG_TYPE: MessageType.FIRE,
        Header.MSG_ID: "forged#1",
        Header.PAYLOAD: "none",
    }
    link.send(Frame(headers, None))
    # What the link does carry still arrives after it, so the forged one had its chance.
    reply = tree["server.j"].request("site-1.j", AUX, "echo", b"after", 10)
    assert bytes(reply.payload) == b"after"
    assert not seen.wait(0.5)


def test_a_cell_that_does_not_accept_direct_links_refuses_them(tree: dict[str, Cell]) -> None:
    url = tree["server.j"].listen("tcp://127.0.0.1:0")
    with pytest.raises(CellError, match="accepts no direct links"):
        tree["site-1.j"].connect_direct(url, key=KEY)


def test_a_wrong_key_is_refused_and_the_tree_still_carries(tree: dict[str, Cell]) -> None:
    with pytest.raises(CellError, match="did not prove the credential"):
        _direct(tree, key=b"a guess")
    reply = tree["site-1.j"].request("server.j", AUX, "echo", b"by the tree", 10)
    assert bytes(reply.payload) == b"by the tree"


@pytest.mark.parametrize("claimed", ["server", "server.j.x"])
def test_no_direct_link_may_claim_an_ancestor_or_the_subtree_of_its_far_end(
    tree: dict[str, Cell], claimed: str
) -> None:
    transport = TcpTransport()
    impostor = Cell(claimed, transport)
    try:
        tree["server.j"].accept_direct(lambda name: KEY)  # any name that holds the key
        url = tree["server.j"].listen("tcp://127.0.0.1:0")
        with pytest.raises(CellError, match="subtree or an ancestor"):
            impostor.connect_direct(url, key=KEY)
        # server.j still reaches the real server through its parent.
        tree["server"].register_handler(AUX, "echo", lambda m: b"the real one")
        reply = tree["server.j"].request("server", AUX, "echo", b"", 10)
        assert bytes(reply.payload) == b"the real one"
    finally:
        impostor.close()
        transport.close()

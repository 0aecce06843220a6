"""The in-process transport: binding, linking, closing, and isolation of instances."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fl_core.errors import CellError, ConfigError, TargetUnreachableError
from fl_core.plugins import make_plugin_manager
from fl_core.spec.transport import Connection, Frame, Transport
from fl_plugins.transport_inprocess import hooks
from fl_plugins.transport_inprocess.transport import InProcessTransport


class Peer:
    """Records what a connection delivers to its owner."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closes: list[BaseException | None] = []

    def attach(self, conn: Connection) -> Connection:
        conn.start(self.frames.append, self.closes.append)
        return conn


class Server:
    """A listener's owner: starts every accepted connection."""

    def __init__(self) -> None:
        self.peer = Peer()
        self.accepted: list[Connection] = []

    def on_connection(self, conn: Connection) -> None:
        self.accepted.append(self.peer.attach(conn))


@pytest.fixture
def transport() -> Iterator[InProcessTransport]:
    transport = InProcessTransport()
    yield transport
    transport.close()


def linked(transport: InProcessTransport, name: str = "a") -> tuple[Server, Peer, Connection]:
    server = Server()
    url = transport.listen(f"inprocess://{name}", server.on_connection).url
    client = Peer()
    conn = client.attach(transport.connect(url, timeout=1.0))
    return server, client, conn


def test_the_hook_registers_inprocess_and_the_factory_builds_a_transport() -> None:
    registry = make_plugin_manager(
        autoload=False, extra=[("transport_inprocess", hooks)]
    ).registry()
    assert registry.names("transport") == {"inprocess": "transport_inprocess"}
    transport = registry.create("transport", "inprocess", expect=Transport)
    assert isinstance(transport, InProcessTransport)
    assert transport.carries_objects
    assert transport.schemes == ("inprocess",)


def test_the_factory_refuses_options_naming_the_option() -> None:
    registry = make_plugin_manager(
        autoload=False, extra=[("transport_inprocess", hooks)]
    ).registry()
    with pytest.raises(ConfigError, match="takes no options") as info:
        registry.create("transport", "inprocess", {"port": 1})
    assert info.value.key == "components.transport.options.port"


def test_frames_flow_both_ways_by_reference(transport: InProcessTransport) -> None:
    server, client, conn = linked(transport)
    body = {"weights": [1, 2, 3]}
    conn.send(Frame({"k": "v"}, body))
    assert server.peer.frames[0].headers == {"k": "v"}
    assert server.peer.frames[0].body is body
    server.accepted[0].send(Frame({"back": "1"}, b"x"))
    assert [f.headers for f in client.frames] == [{"back": "1"}]


def test_listen_returns_the_url_it_bound(transport: InProcessTransport) -> None:
    server = Server()
    assert transport.listen("inprocess://server", server.on_connection).url == "inprocess://server"


def test_an_empty_name_is_replaced_by_a_fresh_one(transport: InProcessTransport) -> None:
    first = transport.listen("inprocess://", Server().on_connection).url
    second = transport.listen("inprocess://", Server().on_connection).url
    assert first != second
    assert first.startswith("inprocess://") and first != "inprocess://"
    server = Server()
    url = transport.listen("inprocess://", server.on_connection).url
    transport.connect(url, 1.0)  # the returned URL is the one to connect to
    assert len(server.accepted) == 1


def test_a_fresh_name_skips_names_already_bound(transport: InProcessTransport) -> None:
    taken = Server()
    transport.listen("inprocess://listener-1", taken.on_connection)
    fresh = transport.listen("inprocess://", Server().on_connection).url
    assert fresh != "inprocess://listener-1"
    transport.connect("inprocess://listener-1", 1.0)
    assert len(taken.accepted) == 1


def test_connecting_to_nothing_is_unreachable(transport: InProcessTransport) -> None:
    with pytest.raises(TargetUnreachableError, match="nothing listens there") as info:
        transport.connect("inprocess://nobody", 1.0)
    assert info.value.fqcn == "inprocess://nobody"


def test_binding_a_name_twice_is_refused(transport: InProcessTransport) -> None:
    transport.listen("inprocess://a", Server().on_connection)
    with pytest.raises(CellError, match=r"inprocess://a is already bound"):
        transport.listen("inprocess://a", Server().on_connection)


def test_a_foreign_scheme_is_refused(transport: InProcessTransport) -> None:
    with pytest.raises(CellError, match="expected inprocess://NAME"):
        transport.listen("tcp://localhost:0", Server().on_connection)
    with pytest.raises(CellError, match="expected inprocess://NAME"):
        transport.connect("grpc://x", 1.0)


def test_a_closed_listener_accepts_nothing_and_frees_its_name(
    transport: InProcessTransport,
) -> None:
    listener = transport.listen("inprocess://a", Server().on_connection)
    listener.close()
    with pytest.raises(TargetUnreachableError):
        transport.connect("inprocess://a", 1.0)
    again = Server()
    transport.listen("inprocess://a", again.on_connection)
    transport.connect("inprocess://a", 1.0)
    assert len(again.accepted) == 1


def test_closing_an_old_listener_again_leaves_the_new_one_bound(
    transport: InProcessTransport,
) -> None:
    old = transport.listen("inprocess://a", Server().on_connection)
    old.close()
    new = Server()
    transport.listen("inprocess://a", new.on_connection)
    old.close()  # idempotent: must not unbind the name's new owner
    transport.connect("inprocess://a", 1.0)
    assert len(new.accepted) == 1


def test_close_calls_on_close_once_on_both_ends(transport: InProcessTransport) -> None:
    server, client, conn = linked(transport)
    conn.close()
    conn.close()
    server.accepted[0].close()
    assert client.closes == [None]
    assert server.peer.closes == [None]


def test_closing_from_the_accepting_end_notifies_both(transport: InProcessTransport) -> None:
    server, client, _ = linked(transport)
    server.accepted[0].close()
    assert client.closes == [None]
    assert server.peer.closes == [None]


def test_send_after_close_raises_on_both_ends(transport: InProcessTransport) -> None:
    server, _, conn = linked(transport)
    conn.close()
    with pytest.raises(CellError, match="closed"):
        conn.send(Frame({"late": "1"}))
    with pytest.raises(CellError, match="closed"):
        server.accepted[0].send(Frame({"late": "1"}))
    assert server.peer.frames == []


def test_accepted_links_survive_the_listener_closing(transport: InProcessTransport) -> None:
    server = Server()
    listener = transport.listen("inprocess://a", server.on_connection)
    conn = Peer().attach(transport.connect("inprocess://a", 1.0))
    listener.close()
    conn.send(Frame({"still": "up"}))
    assert [f.headers for f in server.peer.frames] == [{"still": "up"}]


def test_two_transports_do_not_see_each_others_listeners() -> None:
    first, second = InProcessTransport(), InProcessTransport()
    try:
        first.listen("inprocess://server", Server().on_connection)
        with pytest.raises(TargetUnreachableError):
            second.connect("inprocess://server", 1.0)
        # The same name binds independently in each.
        other = Server()
        second.listen("inprocess://server", other.on_connection)
        second.connect("inprocess://server", 1.0)
        assert len(other.accepted) == 1
    finally:
        first.close()
        second.close()


def test_transport_close_unbinds_every_listener() -> None:
    transport = InProcessTransport()
    transport.listen("inprocess://a", Server().on_connection)
    transport.close()
    with pytest.raises(TargetUnreachableError):
        transport.connect("inprocess://a", 1.0)

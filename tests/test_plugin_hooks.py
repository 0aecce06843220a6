"""Hooks go through pluggy: ordering, wrappers, tracing, provenance, and the event relay."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import Any

import pluggy
import pytest

from fl_core.errors import DuplicateComponentError, InvalidComponentError, PluginLoadError
from fl_core.plugins import EventRelay, PluginManager, make_plugin_manager
from fl_core.spec import Register, hookimpl
from fl_core.spec.events import Events
from fl_core.spec.security import Credentials, Identity, SecurityProvider
from fl_core.spec.transport import Connection, Listener, Transport


class StubTransport(Transport):
    """Passes the transport interface check; never moves a frame."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        raise NotImplementedError

    def connect(self, url: str, timeout: float) -> Connection:
        raise NotImplementedError


class Registering:
    """A plugin registering `names` as transports, noting each call in `calls`."""

    def __init__(self, label: str, calls: list[str], *names: str) -> None:
        self.label = label
        self.calls = calls
        self.names = names or (label,)

    @hookimpl
    def fl_core_register_transports(self, register: Register) -> None:
        self.calls.append(self.label)
        for name in self.names:
            register(name, StubTransport)


class Early(Registering):
    @hookimpl(tryfirst=True)
    def fl_core_register_transports(self, register: Register) -> None:
        super().fl_core_register_transports(register)


class Late(Registering):
    @hookimpl(trylast=True)
    def fl_core_register_transports(self, register: Register) -> None:
        super().fl_core_register_transports(register)


class Wrapping:
    """A wrapper around the transport registration hook; notes what it wraps."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl(wrapper=True)
    def fl_core_register_transports(self, register: Register) -> Generator[None, None, None]:
        self.calls.append("wrapper: before")
        result = yield
        self.calls.append("wrapper: after")
        return result


def manager(*plugins: tuple[str, object]) -> PluginManager:
    return make_plugin_manager(autoload=False, extra=list(plugins))


# --- ordering ---------------------------------------------------------------------


def test_tryfirst_and_trylast_order_the_plugins_registration_calls() -> None:
    calls: list[str] = []
    pm = manager(
        ("a", Early("a", calls)),
        ("b", Registering("b", calls)),
        ("c", Late("c", calls)),
        ("d", Registering("d", calls)),
    )
    registry = pm.registry()
    # pluggy's order: tryfirst, then the others last-registered first, then trylast.
    assert calls == ["a", "d", "b", "c"]
    assert registry.names("transport") == {"a": "a", "b": "b", "c": "c", "d": "d"}


def test_a_tryfirst_plugin_registers_a_clashing_name_first() -> None:
    calls: list[str] = []
    pm = manager(("plain", Registering("plain", calls, "tcp")), ("eager", Early("e", calls, "tcp")))
    with pytest.raises(DuplicateComponentError) as info:
        pm.registry()
    assert (info.value.first, info.value.second) == ("eager", "plain")


# --- wrappers and tracing ---------------------------------------------------------


def test_a_wrapper_sees_each_plugins_registration_call() -> None:
    calls: list[str] = []
    pm = manager(
        ("wrapper", Wrapping(calls)),
        ("one", Registering("one", calls)),
        ("two", Registering("two", calls)),
    )
    registry = pm.registry()
    assert calls == [
        "wrapper: before",
        "two",
        "wrapper: after",
        "wrapper: before",
        "one",
        "wrapper: after",
    ]
    # The wrapper registers nothing of its own and takes no credit.
    assert registry.names("transport") == {"one": "one", "two": "two"}


def test_a_wrapper_alone_is_not_called() -> None:
    calls: list[str] = []
    assert manager(("wrapper", Wrapping(calls))).registry().names("transport") == {}
    assert calls == []


def test_hookcall_monitoring_sees_the_registration_hooks_with_their_plugin() -> None:
    pm = manager(("one", Registering("one", [])), ("two", Registering("two", [])))
    seen: list[tuple[str, list[str]]] = []

    def before(name: str, impls: Sequence[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
        seen.append((name, [impl.plugin_name for impl in impls]))

    def after(outcome: object, name: str, impls: object, kwargs: object) -> None:
        pass

    undo = pm.add_hookcall_monitoring(before, after)
    pm.registry()
    undo()
    assert seen == [
        ("fl_core_register_transports", ["two"]),
        ("fl_core_register_transports", ["one"]),
    ]


def test_pm_trace_writes_the_registration_hooks() -> None:
    pm = manager(("one", Registering("one", [])))
    lines: list[str] = []
    pm.trace.root.setwriter(lines.append)
    undo = pm.enable_tracing()
    pm.registry()
    undo()
    assert any("fl_core_register_transports" in line for line in lines), lines


# --- provenance and errors --------------------------------------------------------


def test_provenance_is_kept_for_two_plugins_with_a_wrapper_between() -> None:
    calls: list[str] = []
    registry = manager(
        ("alpha", Registering("alpha", calls, "a1", "a2")),
        ("wrapper", Wrapping(calls)),
        ("beta", Late("beta", calls, "b1")),
    ).registry()
    assert registry.names("transport") == {"a1": "alpha", "a2": "alpha", "b1": "beta"}
    assert registry.get("transport", "b1").plugin == "beta"


def test_a_hook_that_raises_under_a_wrapper_still_names_its_plugin() -> None:
    class Broken:
        @hookimpl
        def fl_core_register_transports(self, register: Register) -> None:
            raise RuntimeError("no config file")

    pm = manager(("fine", Registering("fine", [])), ("wrapper", Wrapping([])), ("broken", Broken()))
    with pytest.raises(PluginLoadError, match="plugin 'broken'") as info:
        pm.registry()
    assert info.value.plugin == "broken"
    assert isinstance(info.value.cause, RuntimeError)


def test_create_checks_the_kinds_interface_by_default() -> None:
    class NotASecurityProvider:
        pass

    class Sloppy:
        @hookimpl
        def fl_core_register_security_providers(self, register: Register) -> None:
            register("odd", NotASecurityProvider)

    registry = manager(("sloppy", Sloppy())).registry()
    with pytest.raises(InvalidComponentError, match="not a SecurityProvider") as info:
        registry.create("security", "odd")
    assert (info.value.kind, info.value.name, info.value.plugin) == ("security", "odd", "sloppy")


def test_create_still_takes_an_explicit_interface() -> None:
    class Plain(SecurityProvider):
        def credentials(self, identity: str) -> Credentials | None:
            return None

        def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
            return "refused"

    class Provides:
        @hookimpl
        def fl_core_register_security_providers(self, register: Register) -> None:
            register("plain", Plain)

    registry = manager(("provides", Provides())).registry()
    assert isinstance(registry.create("security", "plain"), Plain)
    with pytest.raises(InvalidComponentError, match="not a StubTransport"):
        registry.create("security", "plain", expect=StubTransport)


# --- the event relay --------------------------------------------------------------


class Observer:
    def __init__(self, seen: list[tuple[str, ...]], fail: str = "") -> None:
        self.seen = seen
        self.fail = fail

    @hookimpl
    def fl_core_job_started(self, job_id: str, mode: str) -> None:
        self.seen.append(("started", job_id, mode))
        if self.fail == "started":
            raise RuntimeError("observer refuses the job")

    @hookimpl
    def fl_core_job_finished(self, job_id: str, mode: str, status: str, reason: str) -> None:
        self.seen.append(("finished", job_id, mode, status, reason))
        if self.fail == "finished":
            raise RuntimeError("observer is broken")


def test_the_relay_fires_both_hooks_through_pluggy() -> None:
    seen: list[tuple[str, ...]] = []
    pm = manager(("observer", Observer(seen)))
    hooks: list[str] = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: hooks.append(name), lambda *args: None
    )
    events: Events = EventRelay(pm)
    events.job_started("j1", "poc")
    events.job_finished("j1", "poc", "finished", "")
    undo()
    assert seen == [("started", "j1", "poc"), ("finished", "j1", "poc", "finished", "")]
    assert hooks == ["fl_core_job_started", "fl_core_job_finished"]


def test_a_raising_started_hook_propagates() -> None:
    relay = EventRelay(manager(("observer", Observer([], fail="started"))))
    with pytest.raises(RuntimeError, match="observer refuses the job"):
        relay.job_started("j1", "simulator")


def test_a_raising_finished_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, ...]] = []
    relay = EventRelay(manager(("observer", Observer(seen, fail="finished"))))
    with caplog.at_level(logging.ERROR, logger="fl_core.plugins"):
        relay.job_finished("j7", "poc", "failed", "too few clients")
    assert seen == [("finished", "j7", "poc", "failed", "too few clients")]
    assert "fl_core_job_finished" in caplog.text and "j7" in caplog.text
    assert "observer is broken" in caplog.text


def test_the_relay_with_no_observers_does_nothing() -> None:
    relay = EventRelay(manager())
    relay.job_started("j1", "poc")
    relay.job_finished("j1", "poc", "aborted", "stopped by admin")


def test_a_registration_hook_under_another_name_is_a_load_error_naming_the_plugin() -> None:
    class Renamed:
        @hookimpl(specname="fl_core_register_transports")
        def transports(self, register: Register) -> None:
            register("renamed", StubTransport)

    pm = manager(("plain", Registering("plain", [])), ("renamed", Renamed()))
    with pytest.raises(PluginLoadError, match="plugin 'renamed'") as info:
        pm.registry()
    assert "registration hooks must be named fl_core_register_transports" in str(info.value)

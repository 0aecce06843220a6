"""The plugin manager: discovery, selection, the registry and its errors."""

from __future__ import annotations

import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fl_core import plugins
from fl_core.errors import (
    DuplicateComponentError,
    InvalidComponentError,
    MissingDependencyError,
    PluginLoadError,
    UnknownComponentError,
)
from fl_core.plugins import (
    BLOCK_ENV,
    DISABLE_AUTOLOAD_ENV,
    PLUGINS_ENV,
    Registry,
    make_plugin_manager,
)
from fl_core.spec import ComponentKind, Register, hookimpl
from fl_core.spec.transport import Connection, Listener, Transport

BUILTINS = [
    ("transport", "inprocess", "transport_inprocess"),
    ("security", "none", "security_none"),
    ("workflow", "sag", "workflow_sag"),
]
BUILTIN_PLUGINS = {plugin for _, _, plugin in BUILTINS}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The tests set these themselves; the shell running pytest must not."""
    for var in (DISABLE_AUTOLOAD_ENV, PLUGINS_ENV, BLOCK_ENV):
        monkeypatch.delenv(var, raising=False)
    yield


# --- small plugins -----------------------------------------------------------


class Widget(ABC):
    """An interface for `expect=` checks."""

    @abstractmethod
    def spin(self) -> int: ...


class FakeTransport(Transport):
    """Passes the transport kind's own check; never used to move frames."""

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        raise NotImplementedError

    def connect(self, url: str, timeout: float) -> Connection:
        raise NotImplementedError


class RealWidget(Widget, FakeTransport):
    def __init__(self, speed: int = 1) -> None:
        self.speed = speed

    def spin(self) -> int:
        return self.speed


class TransportPlugin:
    """A plugin written as a class; registered as an instance."""

    def __init__(self, *names: str, **register_options: Any) -> None:
        self.names = names or ("fake",)
        self.options = register_options

    @hookimpl
    def fl_core_register_transports(self, register: Register) -> None:
        for name in self.names:
            register(name, RealWidget, **self.options)


def module_plugin(name: str, hook: str, body: Callable[[Register], None]) -> types.ModuleType:
    """A plugin written as a module, like a real `hooks.py`."""
    module = types.ModuleType(name)

    def impl(register: Register) -> None:
        body(register)

    impl.__name__ = hook
    setattr(module, hook, hookimpl(impl))
    return module


@dataclass
class FakeDist:
    name: str
    version: str


@dataclass
class FakeEntryPoint:
    """What `_discover` returns: enough of `importlib.metadata.EntryPoint`."""

    name: str
    value: str
    dist: FakeDist | None
    target: object = None
    error: BaseException | None = None

    def load(self) -> object:
        if self.error is not None:
            raise self.error
        return self.target


def manager_with(*extra: tuple[str, object]) -> Registry:
    return make_plugin_manager(autoload=False, extra=list(extra)).registry()


# --- built-ins and selection -------------------------------------------------


@pytest.mark.parametrize(("kind", "name", "plugin"), BUILTINS)
def test_autoload_registers_the_builtins_from_fl_core(kind: str, name: str, plugin: str) -> None:
    pm = make_plugin_manager()
    names = pm.registry().names(kind)
    if name == "sag" and name not in names:
        pytest.skip("workflow_sag does not register `sag` yet (hooks under construction)")
    assert names[name] == plugin
    info = pm.infos[plugin]
    assert info.distribution == "fl-core"
    assert info.version
    assert info.module == f"fl_plugins.{plugin}.hooks"


def test_builtin_plugins_load_in_sorted_order() -> None:
    pm = make_plugin_manager()
    loaded = [name for name in pm.infos if name in BUILTIN_PLUGINS]
    assert loaded == sorted(BUILTIN_PLUGINS)


def test_entry_points_are_loaded_in_sorted_order(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []

    class Recording(FakeEntryPoint):
        def load(self) -> object:
            loads.append(self.name)
            return types.ModuleType(self.name)

    dist = FakeDist("fake-dist", "1.0")
    unsorted = [Recording(n, f"{n}.hooks", dist) for n in ("zeta", "alpha", "mid")]
    monkeypatch.setattr(plugins, "entry_points", lambda group: unsorted)
    pm = make_plugin_manager()
    assert loads == ["alpha", "mid", "zeta"]
    assert pm.infos["mid"].distribution == "fake-dist"


def test_only_loads_just_the_named_plugins() -> None:
    registry = make_plugin_manager(only=["security_none"]).registry()
    assert registry.names("security") == {"none": "security_none"}
    assert registry.names("transport") == {}
    assert registry.names("workflow") == {}


def test_only_refuses_a_plugin_that_is_not_installed() -> None:
    with pytest.raises(PluginLoadError, match="no entry point named 'securty_none'") as info:
        make_plugin_manager(only=["securty_none"])
    assert info.value.plugin == "securty_none"
    assert "security_none" in str(info.value)  # the installed names help spot the typo


def test_blocked_plugins_are_not_loaded() -> None:
    registry = make_plugin_manager(blocked=["transport_inprocess"]).registry()
    assert "inprocess" not in registry.names("transport")
    assert registry.names("security") == {"none": "security_none", "pki": "security_pki"}


def test_disable_autoload_env_loads_no_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    pm = make_plugin_manager()
    assert pm.infos == {}
    assert all(not pm.registry().names(kind) for kind in ComponentKind)
    # An explicit argument wins over the environment.
    assert "inprocess" in make_plugin_manager(autoload=True).registry().names("transport")


def test_plugins_env_loads_named_plugins_even_without_autoload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setenv(PLUGINS_ENV, " transport_inprocess , ")
    registry = make_plugin_manager().registry()
    assert registry.names("transport") == {"inprocess": "transport_inprocess"}
    assert registry.names("security") == {}


def test_plugins_env_refuses_a_plugin_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setenv(PLUGINS_ENV, "transport_inproces")
    with pytest.raises(PluginLoadError, match="transport_inproces"):
        make_plugin_manager()


def test_block_env_blocks_entry_points_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "security_none,mine")
    registry = make_plugin_manager(extra=[("mine", TransportPlugin("mine"))]).registry()
    assert "none" not in registry.names("security")
    assert "mine" not in registry.names("transport")
    assert registry.names("transport")["inprocess"] == "transport_inprocess"


# --- extra plugins and the registry ------------------------------------------


def test_an_extra_class_plugin_registers_its_components() -> None:
    registry = manager_with(("widgets", TransportPlugin("fast", "slow")))
    assert registry.names("transport") == {"fast": "widgets", "slow": "widgets"}
    widget = registry.create("transport", "fast", {"speed": 7}, expect=Widget)
    assert isinstance(widget, RealWidget)
    assert widget.spin() == 7


def test_an_extra_module_plugin_registers_its_components() -> None:
    module = module_plugin(
        "my_launchers",
        "fl_core_register_launchers",
        lambda register: register("docker", RealWidget),
    )
    registry = manager_with(("my_launchers", module))
    component = registry.get("launcher", "docker")
    assert (component.kind, component.name, component.plugin) == (
        "launcher",
        "docker",
        "my_launchers",
    )
    assert [c.name for c in registry.components()] == ["docker"]


def test_components_of_one_hook_are_attributed_to_each_plugin() -> None:
    registry = manager_with(("first", TransportPlugin("a")), ("second", TransportPlugin("b")))
    assert registry.names("transport") == {"a": "first", "b": "second"}


def test_an_unknown_component_lists_what_is_installed_and_from_where() -> None:
    registry = manager_with(("widgets", TransportPlugin("fast", "slow")))
    with pytest.raises(UnknownComponentError) as info:
        registry.create("transport", "grpc")
    message = str(info.value)
    assert "unknown transport 'grpc'" in message
    assert "fast (plugin widgets)" in message and "slow (plugin widgets)" in message
    assert info.value.available == {"fast": "widgets", "slow": "widgets"}
    with pytest.raises(UnknownComponentError, match="no pipe is installed"):
        registry.get("pipe", "file")


def test_one_name_from_two_plugins_is_a_duplicate_naming_both() -> None:
    pm = make_plugin_manager(
        autoload=False, extra=[("alpha", TransportPlugin("tcp")), ("beta", TransportPlugin("tcp"))]
    )
    with pytest.raises(DuplicateComponentError) as info:
        pm.registry()
    assert {info.value.first, info.value.second} == {"alpha", "beta"}
    assert "'alpha'" in str(info.value) and "'beta'" in str(info.value)
    assert info.value.name == "tcp"


def test_the_same_name_in_two_kinds_is_no_duplicate() -> None:
    module = module_plugin(
        "pipes", "fl_core_register_pipes", lambda register: register("fake", RealWidget)
    )
    registry = manager_with(("transports", TransportPlugin("fake")), ("pipes", module))
    assert registry.names("transport") == {"fake": "transports"}
    assert registry.names("pipe") == {"fake": "pipes"}


def test_a_hook_that_raises_is_a_load_error_naming_the_plugin() -> None:
    def broken(register: Register) -> None:
        raise KeyError("missing setting")

    pm = make_plugin_manager(
        autoload=False,
        extra=[("broken", module_plugin("broken", "fl_core_register_workflows", broken))],
    )
    with pytest.raises(PluginLoadError, match="plugin 'broken'") as info:
        pm.registry()
    assert info.value.plugin == "broken"
    assert isinstance(info.value.cause, KeyError)
    assert "missing setting" in str(info.value)


@pytest.mark.parametrize(
    ("name", "factory", "problem"),
    [
        ("", RealWidget, "invalid name ''"),
        ("ok", "not callable", "factory that is not callable"),
    ],
)
def test_registering_nonsense_is_an_invalid_component(
    name: str, factory: object, problem: str
) -> None:
    module = module_plugin(
        "sloppy",
        "fl_core_register_pipes",
        lambda register: register(name, factory),  # type: ignore[arg-type]
    )
    pm = make_plugin_manager(autoload=False, extra=[("sloppy", module)])
    with pytest.raises(InvalidComponentError, match=problem) as info:
        pm.registry()
    assert info.value.plugin == "sloppy"
    assert info.value.kind == "pipe"


def test_a_missing_optional_module_names_the_install_command() -> None:
    plugin = TransportPlugin(
        "grpc", requires=("no_such_module_xyz",), install="pip install 'fl-core[grpc]'"
    )
    registry = manager_with(("grpc_plugin", plugin))
    assert "grpc" in registry.names("transport")  # registering needs no import
    with pytest.raises(MissingDependencyError) as info:
        registry.create("transport", "grpc")
    assert "pip install 'fl-core[grpc]'" in str(info.value)
    assert info.value.module == "no_such_module_xyz"
    assert info.value.plugin == "grpc_plugin"


def test_a_missing_dotted_module_is_a_missing_dependency_too() -> None:
    registry = manager_with(("p", TransportPlugin("x", requires=("no_such_pkg_xyz.sub",))))
    with pytest.raises(MissingDependencyError, match=r"pip install no_such_pkg_xyz\.sub"):
        registry.check_available("transport", "x")


def test_present_optional_modules_pass() -> None:
    registry = manager_with(("p", TransportPlugin("x", requires=("json", "os.path"))))
    assert isinstance(registry.create("transport", "x"), RealWidget)


def test_a_factory_building_the_wrong_type_is_an_invalid_component() -> None:
    class NotAWidget(FakeTransport):
        pass

    module = module_plugin(
        "liar", "fl_core_register_transports", lambda register: register("w", NotAWidget)
    )
    registry = manager_with(("liar", module))
    with pytest.raises(InvalidComponentError, match="built a NotAWidget, which is not a Widget"):
        registry.create("transport", "w", expect=Widget)
    # Without `expect`, only the kind's own interface is checked.
    assert isinstance(registry.create("transport", "w"), NotAWidget)


# --- loading failures --------------------------------------------------------


def test_an_entry_point_that_fails_to_import_is_a_load_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = FakeEntryPoint(
        "shiny",
        "shiny_plugin.hooks",
        FakeDist("shiny-plugin", "2.1"),
        error=ImportError("No module named 'grpc'"),
    )
    monkeypatch.setattr(plugins, "_discover", lambda: [bad])
    with pytest.raises(PluginLoadError) as info:
        make_plugin_manager()
    assert info.value.plugin == "shiny"
    assert info.value.distribution == "shiny-plugin"
    assert isinstance(info.value.cause, ImportError)
    assert "No module named 'grpc'" in str(info.value)
    assert "FL_CORE_BLOCK_PLUGINS=shiny" in str(info.value)


def test_a_blocked_entry_point_is_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = FakeEntryPoint("shiny", "x.hooks", FakeDist("x", "1"), error=ImportError("boom"))
    monkeypatch.setattr(plugins, "_discover", lambda: [bad])
    assert "shiny" not in make_plugin_manager(blocked=["shiny"]).infos


def test_an_entry_point_without_distribution_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("loose", "loose.hooks", None, target=TransportPlugin("loose"))
    monkeypatch.setattr(plugins, "_discover", lambda: [ep])
    pm = make_plugin_manager()
    assert pm.infos["loose"].distribution == "(unknown)"
    assert pm.registry().names("transport") == {"loose": "loose"}


def test_two_plugins_with_one_name_is_a_load_error() -> None:
    with pytest.raises(PluginLoadError, match="plugin 'twin'"):
        make_plugin_manager(
            autoload=False, extra=[("twin", TransportPlugin("a")), ("twin", TransportPlugin("b"))]
        )


def test_an_extra_plugin_shadowing_an_entry_point_is_a_load_error() -> None:
    with pytest.raises(PluginLoadError, match="plugin 'security_none'"):
        make_plugin_manager(only=["security_none"], extra=[("security_none", TransportPlugin())])


def test_a_misspelled_hook_is_a_load_error_naming_the_plugin() -> None:
    module = module_plugin(
        "typo", "fl_core_register_transport", lambda register: register("x", RealWidget)
    )
    with pytest.raises(PluginLoadError, match="fl_core_register_transport") as info:
        make_plugin_manager(autoload=False, extra=[("typo", module)])
    assert info.value.plugin == "typo"


def test_a_hook_with_a_wrong_parameter_is_a_load_error() -> None:
    class WrongArgument:
        @hookimpl
        def fl_core_register_transports(self, registrar: Register) -> None:
            registrar("x", RealWidget)

    with pytest.raises(PluginLoadError, match="plugin 'wrong'") as info:
        make_plugin_manager(autoload=False, extra=[("wrong", WrongArgument())])
    assert "registrar" in str(info.value)


def test_unknown_security_provider_reads_as_english() -> None:
    from fl_core.errors import UnknownComponentError

    error = UnknownComponentError("security", "pki", {"none": "security_none"})
    assert "installed security providers: none (plugin security_none)" in str(error)
    assert "no security provider is installed" in str(UnknownComponentError("security", "x", {}))

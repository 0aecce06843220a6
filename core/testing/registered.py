"""Components built as the runtime builds them: through a plugin's registered factory.

The contract suites use these so that a plugin's hook, its factory and its
option checks are under contract too, not only its classes. A plugin is named
by a `PluginRef`: an installed entry-point name (`"transport_tcp"`), or a
`(name, hooks_module)` pair for a plugin that is not installed. The manager
behind a factory holds that plugin alone, as `fl_core.testing.plugin_manager_with`
does; `None` means every installed plugin.

    make = component_factory("transport", "tcp", "transport_tcp")
    transport = make(hello_timeout=0.5)     # registry.create("transport", "tcp", {...})
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import pytest

from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec import ComponentKind
from fl_core.spec.pipe import Pipe, TransportMaker
from fl_core.spec.security import Credentials
from fl_core.spec.transport import Transport

__all__ = [
    "PluginRef",
    "SecureFactory",
    "TransportUnderTest",
    "component_factory",
    "pipe_factory",
    "plugin_registry",
    "plugin_source",
    "transport_maker",
]

PluginRef = str | tuple[str, object]
"""An installed entry-point name, or `(name, plugin)` for a plugin added directly."""

SecureFactory = Callable[[Credentials, bool], Transport]
"""`(credentials, require_client_cert) -> Transport`."""


def plugin_registry(plugin: PluginRef | None = None) -> Registry:
    """The registry of a plugin manager holding only `plugin` (every installed one if None)."""
    if plugin is None:
        return make_plugin_manager(autoload=True).registry()
    if isinstance(plugin, str):
        return make_plugin_manager(only=[plugin]).registry()
    name, module = plugin
    return make_plugin_manager(autoload=False, extra=[(name, module)]).registry()


def component_factory(
    kind: ComponentKind | str, name: str, plugin: PluginRef | None = None, **defaults: Any
) -> Callable[..., Any]:
    """`make(**options)`: `registry.create(kind, name, {**defaults, **options})`.

    The registry is `plugin_registry(plugin)`, built once. Raises
    `UnknownComponentError` at once if the plugin does not register `name`.
    """
    registry = plugin_registry(plugin)
    registry.get(kind, name)

    def make(**options: Any) -> Any:
        return registry.create(kind, name, {**defaults, **options})

    return make


def transport_maker() -> TransportMaker:
    """What the runtime hands a pipe (`Pipe.use_transports`): transports by name.

    Built from every installed plugin, on the first call.
    """
    registries: list[Registry] = []

    def make(name: str, options: Any) -> Transport:
        if not registries:
            registries.append(plugin_registry(None))
        transport = registries[0].create(ComponentKind.TRANSPORT, name, dict(options))
        assert isinstance(transport, Transport)
        return transport

    return make


def pipe_factory(
    name: str, plugin: PluginRef | None = None, **defaults: Any
) -> Callable[..., Pipe]:
    """`make(**options)`: a pipe end from its registered factory, given its transport maker.

    The same steps as the runtime's before `prepare` and `open`.
    """
    build = component_factory(ComponentKind.PIPE, name, plugin, **defaults)
    make_transport = transport_maker()

    def make(**options: Any) -> Pipe:
        pipe = build(**options)
        assert isinstance(pipe, Pipe)
        pipe.use_transports(make_transport)
        return pipe

    return make


def plugin_source(plugin: PluginRef | None) -> str:
    """A Python expression that names `plugin` again in another process.

    A `(name, module)` pair must hold an importable module; a plugin that is
    an object built in the test cannot travel.
    """
    if plugin is None or isinstance(plugin, str):
        return repr(plugin)
    name, module = plugin
    if not isinstance(module, ModuleType):
        raise TypeError(
            f"plugin {name!r} is a {type(module).__name__}; another process can only "
            "import a module: name it by its entry point or give its hooks module"
        )
    return f"({name!r}, __import__('importlib').import_module({module.__name__!r}))"


class TransportUnderTest:
    """The transport the transport suites test, built through its plugin's factory.

    Set `component` (the registered name) and `plugin` (see `PluginRef`), or
    override the `transport_factory` fixture. `secure_transport_factory`
    passes `credentials` and `require_client_cert` to the same factory, the
    options every TLS-capable transport factory accepts.
    """

    plugin: ClassVar[PluginRef | None] = None
    """The plugin that registers the transport; None: every installed plugin."""
    component: ClassVar[str] = ""
    """The transport's registered name (what a job config writes)."""

    @pytest.fixture
    def transport_factory(self) -> Callable[..., Transport]:
        """`(**options) -> Transport`: by default, the plugin's registered factory."""
        if not self.component:
            pytest.fail(
                f"{type(self).__name__} must set `component` (and `plugin`) or define a "
                "transport_factory fixture"
            )
        return component_factory(ComponentKind.TRANSPORT, self.component, self.plugin)

    @pytest.fixture
    def secure_transport_factory(
        self, transport_factory: Callable[..., Transport]
    ) -> SecureFactory:
        """`(credentials, require_client_cert) -> Transport`, through `transport_factory`."""

        def make(credentials: Credentials, require_client_cert: bool) -> Transport:
            return transport_factory(
                credentials=credentials, require_client_cert=require_client_cert
            )

        return make

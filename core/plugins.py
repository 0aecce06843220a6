"""The plugin manager: pluggy, entry-point discovery and the component registry.

There is no global manager. `make_plugin_manager()` builds one; its
`registry()` asks every plugin to register its components and returns a
`Registry` that maps (kind, name) to a factory and the plugin that gave it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from fl_core.errors import (
    DuplicateComponentError,
    InvalidComponentError,
    MissingDependencyError,
    PluginLoadError,
    UnknownComponentError,
)
from fl_core.spec import PROJECT, ComponentKind
from fl_core.spec.kinds import HOOKSPECS, KINDS

log = logging.getLogger(__name__)

DISABLE_AUTOLOAD_ENV = "FL_CORE_DISABLE_PLUGIN_AUTOLOAD"
"""Set (to anything but empty) to skip entry-point discovery, as pytest does."""
PLUGINS_ENV = "FL_CORE_PLUGINS"
"""Comma-separated entry-point names to load even when autoload is disabled."""
BLOCK_ENV = "FL_CORE_BLOCK_PLUGINS"
"""Comma-separated plugin names never to load."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """Where a plugin came from."""

    name: str
    distribution: str
    version: str
    module: str


@dataclass(frozen=True, slots=True)
class Component:
    """A registered factory and its provenance."""

    kind: ComponentKind
    name: str
    plugin: str
    factory: Callable[..., Any]
    requires: tuple[str, ...] = ()
    install: str = ""


@dataclass
class Registry:
    """Components by kind and name, built from a plugin manager's hooks."""

    _components: dict[ComponentKind, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in ComponentKind}
    )

    def add(self, component: Component) -> None:
        """Add a component; a second one with the same kind and name is an error."""
        existing = self._components[component.kind].get(component.name)
        if existing is not None:
            raise DuplicateComponentError(
                component.kind, component.name, existing.plugin, component.plugin
            )
        self._components[component.kind][component.name] = component

    def names(self, kind: ComponentKind | str) -> dict[str, str]:
        """Registered names of `kind`, each mapped to the plugin that provides it."""
        return {n: c.plugin for n, c in sorted(self._components[ComponentKind(kind)].items())}

    def components(self) -> list[Component]:
        """Every component, sorted by kind then name."""
        return [c for kind in ComponentKind for _, c in sorted(self._components[kind].items())]

    def get(self, kind: ComponentKind | str, name: str) -> Component:
        """The component, or `UnknownComponentError` listing what is installed."""
        kind = ComponentKind(kind)
        component = self._components[kind].get(name)
        if component is None:
            raise UnknownComponentError(kind, name, self.names(kind))
        return component

    def check_available(self, kind: ComponentKind | str, name: str) -> Component:
        """Like `get`, and also verify that the component's optional modules exist."""
        component = self.get(kind, name)
        for module in component.requires:
            if not _importable(module):
                raise MissingDependencyError(
                    component.kind,
                    name,
                    component.plugin,
                    module,
                    component.install or f"pip install {module}",
                )
        return component

    def create(
        self,
        kind: ComponentKind | str,
        name: str,
        options: Mapping[str, Any] | None = None,
        expect: type | None = None,
    ) -> Any:
        """Build the component `name` of `kind` with `options`.

        The result must be an instance of `expect`, by default the kind's
        interface (`fl_core.spec.kinds.KINDS`); otherwise the error names the
        plugin whose factory built it.
        """
        component = self.check_available(kind, name)
        instance = component.factory(**dict(options or {}))
        if expect is None:
            expect = KINDS[component.kind].interface
        if not isinstance(instance, expect):
            raise InvalidComponentError(
                f"{component.kind} {name!r} from plugin {component.plugin!r} built a "
                f"{type(instance).__name__}, which is not a {expect.__name__}",
                kind=component.kind,
                name=name,
                plugin=component.plugin,
            )
        return instance


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus provenance of entry-point plugins and a registry."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        for spec in HOOKSPECS:
            self.add_hookspecs(spec)
        self.infos: dict[str, PluginInfo] = {}

    def add_plugin(self, module: ModuleType | object, name: str, info: PluginInfo) -> None:
        """Register `module` as plugin `name` and remember where it came from.

        Raises `PluginLoadError` if the name is taken, the object is already
        registered, or a hook implementation does not match its spec.
        """
        try:
            self.register(module, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginLoadError(name, info.distribution, exc) from exc
        self.infos[name] = info

    def check_hooks(self) -> None:
        """Raise `PluginLoadError` for a hook implementation no hookspec declares.

        A misspelled hook name would otherwise be ignored without a word.
        """
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.get_name(exc.plugin) or repr(exc.plugin)
            info = self.infos.get(name)
            raise PluginLoadError(name, info.distribution if info else "(unknown)", exc) from exc

    def registry(self) -> Registry:
        """Ask every plugin for its components; a fresh `Registry` each call.

        Each registration hook is called through pluggy once per plugin that
        implements it, in pluggy's order (`tryfirst` first, `trylast` last),
        with a `register` bound to that plugin, so every component keeps its
        provenance while wrappers, tracing and call monitoring see the calls.
        """
        registry = Registry()
        for kind, spec in KINDS.items():
            impls = _registering(getattr(self.hook, spec.hook))
            for impl in impls:
                # pluggy's subset caller leaves a plugin out only by this
                # attribute; one implemented under another name (specname)
                # would run in every other plugin's call, under their names.
                if not hasattr(impl.plugin, spec.hook):
                    raise self._load_error(
                        impl.plugin_name,
                        ValueError(
                            f"{impl.function.__name__} implements {spec.hook} under another "
                            f"name; registration hooks must be named {spec.hook}"
                        ),
                    )
            for impl in impls:
                others = [other.plugin for other in impls if other.plugin is not impl.plugin]
                # Only this plugin's implementation (and every wrapper) runs.
                caller = self.subset_hook_caller(spec.hook, remove_plugins=others)
                try:
                    caller(register=_registrar(registry, kind, impl.plugin_name))
                except (DuplicateComponentError, InvalidComponentError):
                    raise  # already name the plugins involved
                except Exception as exc:
                    raise self._load_error(impl.plugin_name, exc) from exc
        return registry

    def _load_error(self, plugin: str, cause: BaseException) -> PluginLoadError:
        info = self.infos.get(plugin)
        return PluginLoadError(plugin, info.distribution if info else "(not installed)", cause)


def _registering(hook: pluggy.HookCaller) -> list[pluggy.HookImpl]:
    """The implementations of `hook` that are not wrappers, in the order pluggy calls them.

    pluggy calls from the end of the list. Wrappers are left out here
    because they are never left out of a call: they wrap every plugin's.
    """
    return [i for i in reversed(hook.get_hookimpls()) if not (i.wrapper or i.hookwrapper)]


class EventRelay:
    """Fires the notification hooks of a plugin manager (an `fl_core.spec.events.Events`).

    Roles are handed one of these instead of the manager. Calls go through
    pluggy, so ordering, wrappers and tracing apply as to any hook.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._hook = pm.hook

    def job_started(self, job_id: str, mode: str) -> None:
        """Fire `fl_core_job_started`; an exception from a hook propagates and fails the job."""
        self._hook.fl_core_job_started(job_id=job_id, mode=mode)

    def job_finished(self, job_id: str, mode: str, status: str, reason: str) -> None:
        """Fire `fl_core_job_finished`; the job has ended, so a failing hook is only logged."""
        try:
            self._hook.fl_core_job_finished(job_id=job_id, mode=mode, status=status, reason=reason)
        except Exception:
            log.exception("a fl_core_job_finished hook failed for job %s", job_id)


def _registrar(registry: Registry, kind: ComponentKind, plugin: str) -> Callable[..., None]:
    def register(
        name: str,
        factory: Callable[..., Any],
        *,
        requires: Sequence[str] = (),
        install: str = "",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidComponentError(
                f"plugin {plugin!r} registered a {kind} with an invalid name {name!r}",
                kind=kind,
                name=str(name),
                plugin=plugin,
            )
        if not callable(factory):
            raise InvalidComponentError(
                f"plugin {plugin!r} registered {kind} {name!r} with a factory that is not callable",
                kind=kind,
                name=name,
                plugin=plugin,
            )
        registry.add(Component(kind, name, plugin, factory, tuple(requires), install))

    return register


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # find_spec imports the parents of a dotted name: "a.b" with no "a"
        # raises instead of returning None.
        return False


def _env_names(var: str) -> list[str]:
    return [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]


def _discover() -> list[EntryPoint]:
    return sorted(entry_points(group=PROJECT), key=lambda ep: ep.name)


def make_plugin_manager(
    autoload: bool | None = None,
    blocked: Iterable[str] = (),
    extra: Iterable[tuple[str, object]] = (),
    only: Iterable[str] | None = None,
) -> PluginManager:
    """Build a plugin manager.

    `autoload` loads every entry point of the group `fl_core` in sorted
    order (default: unless `FL_CORE_DISABLE_PLUGIN_AUTOLOAD` is set; the
    names in `FL_CORE_PLUGINS` load either way). `only` restricts loading to
    those entry-point names. `blocked` (and `FL_CORE_BLOCK_PLUGINS`) names
    plugins never to load. `extra` adds (name, module-or-object) plugins
    directly, as tests and embedding applications do.

    Raises `PluginLoadError` naming the plugin if one fails to import or to
    register, declares a hook no spec knows, or is requested by name (`only`,
    `FL_CORE_PLUGINS`) but not installed.
    """
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    blocked_set = set(blocked) | set(_env_names(BLOCK_ENV))
    wanted = set(only) if only is not None else None
    forced = set(_env_names(PLUGINS_ENV))
    extra = list(extra)  # iterated twice below

    pm = PluginManager()
    for name in blocked_set:
        pm.set_blocked(name)
    discovered = _discover()
    _check_requested(discovered, (wanted or set()) | forced, blocked_set, extra)
    for ep in discovered:
        if ep.name in blocked_set:
            continue
        selected = ep.name in wanted if wanted is not None else autoload
        if not (selected or ep.name in forced):
            continue
        dist = ep.dist.name if ep.dist is not None else "(unknown)"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginLoadError(ep.name, dist, exc) from exc
        pm.add_plugin(module, ep.name, PluginInfo(ep.name, dist, version, ep.value))
    for name, plugin in extra:
        if name in blocked_set:
            continue
        module_name = getattr(plugin, "__name__", type(plugin).__name__)
        pm.add_plugin(plugin, name, PluginInfo(name, "(added directly)", "-", module_name))
    pm.check_hooks()
    return pm


def _check_requested(
    discovered: Sequence[EntryPoint],
    requested: set[str],
    blocked: set[str],
    extra: Sequence[tuple[str, object]],
) -> None:
    """A plugin asked for by name (`only=`, `FL_CORE_PLUGINS`) must exist, as with
    pytest's `-p`: a typo must not quietly run without the plugin."""
    known = {ep.name for ep in discovered} | {name for name, _ in extra}
    for name in sorted(requested - known - blocked):
        installed = ", ".join(sorted(ep.name for ep in discovered)) or "none"
        cause = LookupError(
            f"no entry point named {name!r} in group {PROJECT!r} (installed: {installed})"
        )
        raise PluginLoadError(name, "(not installed)", cause)

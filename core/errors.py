"""The exceptions of fl-core.

Every error the runtime raises on purpose is an `FlCoreError`; subclasses carry
the facts as attributes so callers and tests need not parse messages.
"""

from __future__ import annotations

from collections.abc import Mapping


class FlCoreError(Exception):
    """Base class of every error fl-core raises on purpose."""


# --- plugins -----------------------------------------------------------------


class PluginError(FlCoreError):
    """A problem with a plugin or the components it registers."""


class PluginLoadError(PluginError):
    """An entry-point plugin could not be imported or registered."""

    def __init__(self, plugin: str, distribution: str, cause: BaseException) -> None:
        self.plugin = plugin
        self.distribution = distribution
        self.cause = cause
        super().__init__(
            f"plugin {plugin!r} (distribution {distribution}) failed to load: "
            f"{type(cause).__name__}: {cause}. Fix or uninstall {distribution}, "
            f"or block it with FL_CORE_BLOCK_PLUGINS={plugin}"
        )


def _plural(kind: str, count: int = 2) -> str:
    noun = "security provider" if kind == "security" else kind
    return noun if count == 1 else noun + "s"


class UnknownComponentError(PluginError):
    """A config names a component that no installed plugin registered."""

    def __init__(self, kind: str, name: str, available: Mapping[str, str]) -> None:
        self.kind = kind
        self.name = name
        self.available = dict(available)
        if available:
            listed = ", ".join(f"{n} (plugin {p})" for n, p in sorted(available.items()))
            hint = f"installed {_plural(kind)}: {listed}"
        else:
            hint = f"no {_plural(kind, 1)} is installed"
        super().__init__(
            f"unknown {kind} {name!r}; {hint}. Install a plugin that provides it, or fix the name."
        )


class DuplicateComponentError(PluginError):
    """Two plugins registered the same component name for one kind."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind = kind
        self.name = name
        self.first = first
        self.second = second
        super().__init__(
            f"{kind} {name!r} is registered by both plugin {first!r} and plugin {second!r}; "
            f"block one with FL_CORE_BLOCK_PLUGINS={second}"
        )


class MissingDependencyError(PluginError):
    """A component needs an optional dependency that is not installed."""

    def __init__(self, kind: str, name: str, plugin: str, module: str, install: str) -> None:
        self.kind = kind
        self.name = name
        self.plugin = plugin
        self.module = module
        self.install = install
        super().__init__(
            f"{kind} {name!r} (plugin {plugin}) needs the module {module!r}, which is not "
            f"installed; fix: {install}"
        )


class InvalidComponentError(PluginError):
    """A plugin registered an invalid component, or a factory returned something
    that does not implement its kind's interface.

    `kind`, `name` and `plugin` say which component it is (empty when unknown).
    """

    def __init__(self, message: str, *, kind: str = "", name: str = "", plugin: str = "") -> None:
        self.kind = kind
        self.name = name
        self.plugin = plugin
        super().__init__(message)


# --- configuration -------------------------------------------------------------


class ConfigError(FlCoreError):
    """A job or site configuration is invalid.

    `source` is the file (or folder) the value came from, `key` the dotted key
    path (`workflow.options.task_timeout`), `problem` what was expected.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class ModeNotAvailableError(FlCoreError):
    """A deployment mode whose runtime has not been built yet."""

    def __init__(self, mode: str, reason: str) -> None:
        self.mode = mode
        super().__init__(f"mode {mode!r} is not available yet: {reason}")


# --- cell network --------------------------------------------------------------


class CellError(FlCoreError):
    """A failure in the cell network."""


class InvalidFQCNError(CellError, ValueError):
    """A string is not a valid fully qualified cell name."""

    def __init__(self, fqcn: str, problem: str) -> None:
        self.fqcn = fqcn
        super().__init__(f"invalid FQCN {fqcn!r}: {problem}")


class TargetUnreachableError(CellError):
    """No route leads to the target cell (not connected, or gone)."""

    def __init__(self, fqcn: str, detail: str = "") -> None:
        self.fqcn = fqcn
        self.detail = detail
        super().__init__(f"cell {fqcn!r} is unreachable" + (f": {detail}" if detail else ""))


class RequestTimeoutError(CellError, TimeoutError):
    """A request got no reply within its timeout."""

    def __init__(self, fqcn: str, channel: str, topic: str, timeout: float) -> None:
        self.fqcn = fqcn
        self.channel = channel
        self.topic = topic
        self.timeout = timeout
        super().__init__(f"no reply from {fqcn!r} on {channel}/{topic} within {timeout:g} s")


class RemoteError(CellError):
    """The target's handler failed; `detail` is its error text."""

    def __init__(self, fqcn: str, channel: str, topic: str, detail: str) -> None:
        self.fqcn = fqcn
        self.channel = channel
        self.topic = topic
        self.detail = detail
        super().__init__(f"{fqcn} failed to handle {channel}/{topic}: {detail}")


class NoHandlerError(CellError):
    """The target cell has no handler for the channel and topic.

    `fqcn`, `channel` and `topic` say which request found no handler (empty
    when unknown).
    """

    def __init__(self, message: str, *, fqcn: str = "", channel: str = "", topic: str = "") -> None:
        self.fqcn = fqcn
        self.channel = channel
        self.topic = topic
        super().__init__(message)


# --- runtime -------------------------------------------------------------------


class JobFailedError(FlCoreError):
    """A job ended in failure; `reason` names the root cause."""

    def __init__(self, job: str, reason: str) -> None:
        self.job = job
        self.reason = reason
        super().__init__(f"job {job!r} failed: {reason}")


class TaskFailedError(FlCoreError):
    """A site could not complete a task; `detail` carries the traceback, if any."""

    def __init__(self, site: str, task: str, reason: str, detail: str = "") -> None:
        self.site = site
        self.task = task
        self.reason = reason
        self.detail = detail
        super().__init__(f"site {site!r} failed task {task!r}: {reason}")

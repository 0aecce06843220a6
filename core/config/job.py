"""The job config: `job.yaml` at the top of a job folder, read and validated.

A job folder holds `job.yaml` and the user's code. `load_job` reads the file
with `yaml.safe_load` and hands the result to `parse_job`, which checks every
key and raises `ConfigError` naming the file and the key (`ConfigErrors`, listing
each, when it finds several). Paths in the file
are relative to the job folder and must stay inside it; the config holds them
resolved.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from fl_core.errors import ConfigError
from fl_core.spec import ComponentKind

from ._checks import Checker, describe, did_you_mean, join, load_yaml, quote_hint

JOB_FILE: Final = "job.yaml"
"""The name of the config file at the top of a job folder."""

DEFAULT_WORKFLOW: Final = "sag"
"""The workflow a job runs when its config names none."""

COMPONENT_KINDS: Final[tuple[str, ...]] = tuple(
    sorted(kind.value for kind in ComponentKind if kind is not ComponentKind.WORKFLOW)
)
"""The kinds a job may choose under `components` (the workflow has its own key)."""

_JOB_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_JOB_NAME_TEXT: Final = (
    "a job name of 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
)
_INT_TEXT: Final = "an integer >= 1"
_T = TypeVar("_T")

# Required keys map to what they hold, so "missing" errors say what to write.
_TOP_REQUIRED: Final = {
    "name": _JOB_NAME_TEXT,
    "min_clients": _INT_TEXT,
    "rounds": _INT_TEXT,
    "executor": "a mapping with at least 'script'",
}
_TOP_KEYS: Final = (
    *_TOP_REQUIRED,
    "workflow",
    "initial_model",
    "components",
    "schedule_timeout",
)

DEFAULT_SCHEDULE_TIMEOUT: Final = 600.0
"""Seconds a submitted job may wait for its sites (POC, production) before it fails."""
_EXECUTOR_REQUIRED: Final = {"script": "the path of a .py file, relative to the job folder"}
_EXECUTOR_KEYS: Final = (
    *_EXECUTOR_REQUIRED,
    "args",
    "launch",
    "task_timeout",
    "fail_on_script_error",
)
_CHOICE_REQUIRED: Final = {"name": "a component name"}
_CHOICE_KEYS: Final = (*_CHOICE_REQUIRED, "options")


class LaunchMode(enum.StrEnum):
    """When a site starts the user's training script."""

    ONCE = "once"
    """One process for the whole job; it receives every task in turn."""
    PER_TASK = "per_task"
    """A fresh process for each task, which exits after its result is sent."""


@dataclass(frozen=True, slots=True)
class ComponentChoice:
    """A component a job picks by its registered name, with the options for its factory."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """How each site runs the user's training script."""

    script: Path
    """The script, resolved; a `.py` file inside the job folder."""
    args: tuple[str, ...] = ()
    """Command-line arguments passed to the script."""
    launch: LaunchMode = LaunchMode.PER_TASK
    """Whether the script runs once per job or once per task."""
    task_timeout: float | None = None
    """Seconds one task may run in the script; None for no limit."""
    fail_on_script_error: bool = False
    """Whether a script that exits non-zero or is killed after sending its result fails
    (its task with `per_task`, else the job) instead of only being reported."""


def _default_workflow() -> ComponentChoice:
    return ComponentChoice(DEFAULT_WORKFLOW, {})


@dataclass(frozen=True, slots=True, kw_only=True)
class JobConfig:
    """A validated job config."""

    source: Path
    """The `job.yaml` the config was read from."""
    job_dir: Path
    """The job folder, resolved."""
    name: str
    """The job's name."""
    min_clients: int
    """How many sites must take part before the job starts."""
    rounds: int
    """How many training rounds the workflow runs."""
    executor: ExecutorConfig
    """How sites run the training script."""
    workflow: ComponentChoice = field(default_factory=_default_workflow)
    """The server-side workflow."""
    initial_model: Path | None = None
    """A `.npz` file inside the job folder with the starting weights, resolved; or None."""
    components: dict[str, ComponentChoice] = field(default_factory=dict)
    """Only the kinds the file names (among `COMPONENT_KINDS`); the rest use site defaults."""
    schedule_timeout: float = DEFAULT_SCHEDULE_TIMEOUT
    """Seconds a submitted job may wait to start (enough sites, a free slot) before it fails."""


def load_job(job_dir: str | Path) -> JobConfig:
    """Read and validate `<job_dir>/job.yaml`.

    Raises `ConfigError` if the folder or file is missing or unreadable, the
    YAML is malformed (with line and column), or any value is invalid.
    """
    folder = Path(job_dir).resolve()
    if not folder.exists():
        raise ConfigError(str(folder), "", "job folder not found")
    if not folder.is_dir():
        raise ConfigError(str(folder), "", "expected a job folder, but this is not a folder")
    source = folder / JOB_FILE
    if not source.is_file():
        problem = (
            f"{JOB_FILE} is not a file" if source.exists() else f"no {JOB_FILE} in the job folder"
        )
        if not source.exists() and (folder / "job.yml").is_file():
            problem += f"; found job.yml, rename it to {JOB_FILE}"
        raise ConfigError(str(folder), "", problem)
    try:
        # Bytes, so PyYAML picks the encoding (UTF-8, or UTF-16 with a BOM).
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(str(source), "", f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        data = load_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(str(source), "", _yaml_problem(exc)) from exc
    return parse_job(data, folder, source)


def parse_job(data: object, job_dir: Path, source: Path) -> JobConfig:
    """Validate an already-loaded `job.yaml` mapping into a `JobConfig`.

    `job_dir` is the job folder that relative paths are resolved against;
    `source` names the file in errors. Every key is checked: one problem is
    raised as a `ConfigError`, several as a `ConfigErrors` listing each.
    """
    check = Checker(str(source))
    job_dir = job_dir.resolve()
    if data is None:
        raise check.error(
            "", f"the file is empty; expected a mapping with the keys {', '.join(_TOP_REQUIRED)}"
        )
    top = check.mapping(
        data,
        "",
        _TOP_KEYS,
        _TOP_REQUIRED,
        what="a mapping of job settings at the top level",
        collect=True,
    )

    def take(key: str, parse: Callable[[object], _T], default: _T) -> _T:
        # A missing key was reported by `mapping`; a present one is checked on its own,
        # so one run of `job check` shows every problem of the file.
        if key not in top:
            return default
        return check.attempt(lambda: parse(top[key]), default)

    placeholder = ExecutorConfig(script=job_dir)
    config = JobConfig(
        source=source,
        job_dir=job_dir,
        name=take("name", lambda v: _name(check, v), ""),
        min_clients=take("min_clients", lambda v: check.integer(v, "min_clients", 1), 1),
        rounds=take("rounds", lambda v: check.integer(v, "rounds", 1), 1),
        workflow=take("workflow", lambda v: _workflow(check, v), _default_workflow()),
        executor=take("executor", lambda v: _executor(check, v, job_dir), placeholder),
        initial_model=take("initial_model", lambda v: _initial_model(check, v, job_dir), None),
        components=take("components", lambda v: _components(check, v), {}),
        schedule_timeout=take(
            "schedule_timeout", lambda v: _schedule_timeout(check, v), DEFAULT_SCHEDULE_TIMEOUT
        ),
    )
    check.raise_errors()
    return config


def _name(check: Checker, value: object) -> str:
    name = check.string(value, "name", _JOB_NAME_TEXT)
    if not _JOB_NAME.fullmatch(name):
        length = f"; it has {len(name)} characters" if len(name) > 64 else ""
        raise check.error("name", f"expected {_JOB_NAME_TEXT}, got {describe(name)}{length}")
    return name


def _workflow(check: Checker, value: object) -> ComponentChoice:
    return _default_workflow() if value is None else _choice(check, value, "workflow")


def _schedule_timeout(check: Checker, value: object) -> float:
    seconds = check.positive_seconds(value, "schedule_timeout", allow_null=False)
    assert seconds is not None
    return seconds


def _choice(check: Checker, value: object, key: str) -> ComponentChoice:
    """A component given as `name` or as `{name: ..., options: {...}}`."""
    if isinstance(value, str):
        return ComponentChoice(check.plugin_name(value, key), {})
    if not isinstance(value, Mapping):
        raise check.error(
            key,
            "expected a component name or a mapping with 'name' and 'options', "
            f"got {describe(value)}",
        )
    choice = check.mapping(value, key, _CHOICE_KEYS, _CHOICE_REQUIRED)
    return ComponentChoice(
        check.plugin_name(choice["name"], join(key, "name")),
        check.options(choice.get("options"), join(key, "options")),
    )


def _executor(check: Checker, value: object, job_dir: Path) -> ExecutorConfig:
    # Each key on its own, so a bad script path does not hide a bad timeout.
    inner = Checker(check.source)
    executor = inner.mapping(
        value,
        "executor",
        _EXECUTOR_KEYS,
        _EXECUTOR_REQUIRED,
        what="a mapping with at least 'script'",
        collect=True,
    )
    script = job_dir
    if "script" in executor:
        script = inner.attempt(
            lambda: check.job_file(executor["script"], "executor.script", job_dir, ".py"), job_dir
        )
    config = ExecutorConfig(
        script=script,
        args=inner.attempt(lambda: _args(check, executor.get("args"), "executor.args"), ()),
        launch=inner.attempt(
            lambda: _launch(check, executor.get("launch"), "executor.launch"), LaunchMode.PER_TASK
        ),
        task_timeout=inner.attempt(
            lambda: check.positive_seconds(executor.get("task_timeout"), "executor.task_timeout"),
            None,
        ),
        fail_on_script_error=inner.attempt(
            lambda: _flag(
                check, executor.get("fail_on_script_error"), "executor.fail_on_script_error"
            ),
            False,
        ),
    )
    inner.raise_errors()
    return config


def _flag(check: Checker, value: object, key: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        # `"false"` in quotes is a non-empty string: truthy, the opposite of what it says.
        raise check.error(key, f"expected true or false, got {describe(value)}")
    return value


def _args(check: Checker, value: object, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        # A single string is refused rather than split: shell quoting rules
        # would be a second, hidden syntax inside the YAML.
        raise check.error(
            key, f'expected a list of strings, e.g. ["--delta", "1"], got {describe(value)}'
        )
    args: list[str] = []
    for index, arg in enumerate(value):
        # Empty strings are real arguments, so this is not `check.string`.
        if not isinstance(arg, str):
            raise check.error(
                f"{key}[{index}]", f"expected a string, got {describe(arg)}{quote_hint(arg)}"
            )
        args.append(arg)
    return tuple(args)


def _launch(check: Checker, value: object, key: str) -> LaunchMode:
    if value is None:
        return LaunchMode.PER_TASK
    allowed = [mode.value for mode in LaunchMode]
    if not isinstance(value, str) or value not in allowed:
        raise check.error(
            key,
            f"expected one of: {', '.join(allowed)}, got {describe(value)}"
            + did_you_mean(value, allowed),
        )
    return LaunchMode(value)


def _initial_model(check: Checker, value: object, job_dir: Path) -> Path | None:
    if value is None:
        return None
    return check.job_file(value, "initial_model", job_dir, ".npz")


def _components(check: Checker, value: object) -> dict[str, ComponentChoice]:
    if value is None:
        return {}
    kinds = ", ".join(COMPONENT_KINDS)
    if not isinstance(value, Mapping):
        raise check.error(
            "components",
            f"expected a mapping of component kind ({kinds}) to component, got {describe(value)}",
        )
    for kind in value:
        key = join("components", kind)
        if kind == ComponentKind.WORKFLOW:
            raise check.error(key, "the workflow is chosen by the top-level 'workflow' key")
        if not isinstance(kind, str) or kind not in COMPONENT_KINDS:
            raise check.error(
                key,
                f"unknown component kind; allowed kinds: {kinds}"
                + did_you_mean(kind, COMPONENT_KINDS),
            )
    return {
        str(kind): _choice(check, choice, join("components", kind))
        for kind, choice in value.items()
    }


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong with the YAML, and where, in the file's 1-based lines and columns."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"cannot read the file as text: {exc.reason} (byte {exc.position})"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "syntax error"
        if exc.context:
            context = exc.context
            if exc.context_mark is not None:
                context += f" at line {exc.context_mark.line + 1}"
            problem += f" ({context})"
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {exc}"

"""Which executor runs a job's training script: in this process, or in its own.

A job whose config names a pipe (`components: {pipe: file}`) runs the script
as a process of its own per site, reached through that pipe
(`ProcessExecutor`); without one the script runs on a thread of the client
job (`InProcessExecutor`). Either way the script is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fl_core.cell.timer import Timer
from fl_core.config import ComponentChoice, JobConfig
from fl_core.plugins import Registry
from fl_core.runtime.executor import Assignment, Done, InProcessExecutor, LogSink
from fl_core.runtime.process_executor import ProcessExecutor
from fl_core.runtime.script_errors import ScriptError, ScriptErrorSink
from fl_core.spec import ComponentKind
from fl_core.spec.launcher import Launcher
from fl_core.spec.pipe import Pipe

__all__ = ["TaskExecutor", "build_executor", "check_executor"]

log = logging.getLogger(__name__)

DEFAULT_LAUNCHER = ComponentChoice("process", {})
"""What starts training processes when the job config names no launcher."""


class TaskExecutor(Protocol):
    """What a `ClientRunner` hands its tasks to."""

    def execute(self, site: str, task: Assignment, done: Done) -> None:
        """Run `task` for `site`; `done(outcome)` is called exactly once."""

    def finish(self, site: str, then: Callable[[], None]) -> None:
        """The job has no more work for `site`: end its script, then call `then()`.

        A script that ends badly on the way out is reported (the executor's
        script error sink) before `then` is called. Returns at once.
        """

    def stop(self, reason: str, grace: float = 5.0) -> list[str]:
        """End all work; what is still running after `grace` s."""


def check_executor(job: JobConfig, registry: Registry) -> Launcher | None:
    """Build what a training process of `job` needs once, so bad options fail now.

    Returns the launcher that starts training processes, or None for a job
    that names no pipe (its script runs in-process). Raises the component's
    `ConfigError` / `UnknownComponentError`. Starts nothing: pipes and
    launchers do their work in `open` and `launch`.
    """
    pipe = job.components.get(ComponentKind.PIPE)
    if pipe is None:
        return None
    made = registry.create(ComponentKind.PIPE, pipe.name, pipe.options, expect=Pipe)
    made.close()
    choice = job.components.get(ComponentKind.LAUNCHER, DEFAULT_LAUNCHER)
    launcher = registry.create(ComponentKind.LAUNCHER, choice.name, choice.options, expect=Launcher)
    assert isinstance(launcher, Launcher)
    return launcher


def build_executor(
    job: JobConfig,
    *,
    registry: Registry,
    job_id: str,
    workspace: Path,
    logs: LogSink,
    timer: Timer,
    threads: int = 1,
    on_script_error: ScriptErrorSink | None = None,
) -> TaskExecutor:
    """The executor `job` asks for; bad pipe or launcher options fail here, before any site runs.

    `on_script_error` hears of scripts that end badly with no task to fail.
    Raises the component's `ConfigError` / `UnknownComponentError`.
    """
    settings = job.executor
    errors = on_script_error or _log_only
    pipe = job.components.get(ComponentKind.PIPE)
    if pipe is None:
        return InProcessExecutor(
            settings.script,
            settings.launch,
            threads=threads,
            job_id=job_id,
            logs=logs,
            timer=timer,
            task_timeout=settings.task_timeout,
            on_script_error=errors,
            fail_on_script_error=settings.fail_on_script_error,
        )

    def make_pipe() -> Pipe:
        made = registry.create(ComponentKind.PIPE, pipe.name, pipe.options, expect=Pipe)
        assert isinstance(made, Pipe)
        # A pipe over cells makes its transport by name, as everything else does.
        made.use_transports(lambda name, options: registry.create("transport", name, options))
        return made

    launcher = check_executor(job, registry)
    assert launcher is not None
    return ProcessExecutor(
        settings.script,
        settings.launch,
        job_id=job_id,
        workspace=workspace,
        launcher=launcher,
        make_pipe=make_pipe,
        pipe_name=pipe.name,
        logs=logs,
        args=settings.args,
        task_timeout=settings.task_timeout,
        threads=threads,
        on_script_error=errors,
        fail_on_script_error=settings.fail_on_script_error,
    )


def _log_only(error: ScriptError) -> None:
    log.warning("%s", error.describe())

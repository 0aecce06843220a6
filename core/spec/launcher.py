"""Launchers: start, watch and stop a job process (server job or client job)."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fl_core.spec import Register, hookspec


class ProcessType(enum.StrEnum):
    """The processes of a federation."""

    SERVER_PARENT = "server_parent"
    SERVER_JOB = "server_job"
    CLIENT_PARENT = "client_parent"
    CLIENT_JOB = "client_job"
    TRAINER = "trainer"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to start: the command, its environment and where it lives."""

    job_id: str
    role: ProcessType
    argv: Sequence[str]
    workspace: Path
    log_file: Path
    """stdout and stderr are appended here."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the launching process's environment."""
    stderr_file: Path | None = None
    """If set, stderr is appended here instead of to `log_file` (a trainer's
    stderr tail explains its crash)."""


class JobHandle(ABC):
    """A started job process."""

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code if the process has ended, else None. Never blocks."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds for the end; the exit code, or None."""

    @abstractmethod
    def terminate(self, grace: float = 5.0) -> None:
        """Ask the process to stop, then kill it and its children after `grace` s."""


class Launcher(ABC):
    """Starts job processes."""

    @abstractmethod
    def launch(self, spec: LaunchSpec) -> JobHandle:
        """Start the process described by `spec`.

        Raises `fl_core.errors.FlCoreError` with the reason if it cannot start.
        """


class LauncherHookSpecs:
    """Hooks for launcher plugins."""

    @hookspec
    def fl_core_register_launchers(self, register: Register) -> None:
        """Register launcher factories; `factory(**options)` returns a `Launcher`."""

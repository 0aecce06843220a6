"""Notification hooks: plugins hear about jobs starting and finishing."""

from __future__ import annotations

from typing import Protocol

from fl_core.spec import hookspec


class EventHookSpecs:
    """Hooks any plugin may implement to observe the runtime."""

    @hookspec
    def fl_core_job_started(self, job_id: str, mode: str) -> None:
        """Called in the server job when a job starts running.

        Must return quickly and must not raise: an exception here fails the job.
        """

    @hookspec
    def fl_core_job_finished(self, job_id: str, mode: str, status: str, reason: str) -> None:
        """Called in the server job when a job has ended (`status` finished/failed/aborted)."""


class JobEvents(Protocol):
    """How a role fires the notification hooks above, without holding a plugin manager.

    The containers hand roles an implementation that calls the hooks through
    pluggy (so `tryfirst`, wrappers and tracing apply).
    """

    def job_started(self, *, job_id: str, mode: str) -> None:
        """Fire `fl_core_job_started`; an exception from a hook propagates (it fails the job)."""

    def job_finished(self, *, job_id: str, mode: str, status: str, reason: str) -> None:
        """Fire `fl_core_job_finished`; a hook's exception is logged, never raised."""

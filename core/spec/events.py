"""Notification hooks: plugins hear about jobs starting and finishing."""

from __future__ import annotations

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

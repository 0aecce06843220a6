"""Notification hooks: plugins hear about jobs starting and finishing.

The runtime fires them through an `Events` object it is handed (the plugin
manager's `fl_core.plugins.EventRelay` in every mode), so a role never needs
the plugin manager itself.
"""

from __future__ import annotations

from typing import Protocol

from fl_core.spec import hookspec


class Events(Protocol):
    """What a role calls to fire the notification hooks.

    `job_started` lets an exception from a hook propagate: the spec says it
    fails the job. `job_finished` never raises: the job has ended already, so
    a failing hook is logged instead.
    """

    def job_started(self, job_id: str, mode: str) -> None:
        """Fire `fl_core_job_started`; raises what a hook raised."""

    def job_finished(self, job_id: str, mode: str, status: str, reason: str) -> None:
        """Fire `fl_core_job_finished`; a hook's exception is logged, not raised."""


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

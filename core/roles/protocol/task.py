"""The task protocol between a client job and its server job (channel SERVER_MAIN).

Small fields travel as headers; the model is the payload.
"""

from __future__ import annotations

import enum


class Topic(enum.StrEnum):
    """Topics on `Channel.SERVER_MAIN` served by a server job."""

    JOIN = "join"
    GET_TASK = "get_task"
    SUBMIT_RESULT = "submit_result"
    LOG = "log"
    SCRIPT_ERROR = "script_error"
    """A site's training script ended badly with no task to fail (after its result, or
    at the job's end): `{"round": int | None, "exit_code": int | None,
    "last_line": str, "what": str}` (`round` of the last result it sent)."""
    LEAVE = "leave"
    """A site is done with an ended job: its scripts have ended and any script errors
    were reported. The server job waits for this before it writes its summary."""
    DIRECT = "direct"
    """Where the server job listens for direct links from its client jobs: `{url}`."""


class TaskHeader(enum.StrEnum):
    """Headers of task and result messages."""

    KIND = "task_kind"
    TASK_ID = "task_id"
    TASK_NAME = "task_name"
    ROUND = "round"
    OUTCOME = "outcome"
    REASON = "reason"
    ACCEPTED = "accepted"


class TaskKind(enum.StrEnum):
    """What a get_task reply holds."""

    TASK = "task"
    WAIT = "wait"
    """No task yet: ask again (the long poll expired)."""
    END = "end"
    """The job is over."""


class Outcome(enum.StrEnum):
    """How a site's attempt at a task ended."""

    OK = "ok"
    FAILED = "failed"

"""The link between the Client API functions and whatever runs the script.

A runtime binds a `ClientSession` to the thread that runs a training script
(in-process executor) or, in a separate training process, creates one from
the environment (pipes). The API functions in `fl_core.client` talk only to
the session bound to the calling thread.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

from fl_core.errors import FlCoreError
from fl_core.model import FLModel


class ClientSession(ABC):
    """What a training script's Client API calls reach."""

    @property
    @abstractmethod
    def site_name(self) -> str:
        """The name of the site this script trains for."""

    @property
    @abstractmethod
    def job_id(self) -> str:
        """The id of the running job."""

    @abstractmethod
    def receive(self, timeout: float | None) -> FLModel | None:
        """The next task's model, or None when the job (or this task slot) has ended."""

    @abstractmethod
    def send(self, model: FLModel, *, sent_torch: bool = False) -> None:
        """Return the result of the task last received.

        `sent_torch`: the script gave its params as torch tensors (converted to
        numpy arrays in `model` by the Client API); its next tasks then arrive
        as tensors (`wants_torch`).
        """

    def wants_torch(self) -> bool:
        """Whether the task last received should reach the script as torch tensors."""
        return False

    @abstractmethod
    def is_running(self) -> bool:
        """False once there is no more work for this script."""

    @abstractmethod
    def log(self, key: str, value: float, step: int | None) -> None:
        """Record a metric for the site (kept in the job's workspace)."""


_bound = threading.local()


@contextmanager
def bound_session(session: ClientSession) -> Iterator[ClientSession]:
    """Bind `session` to the current thread for the duration of the block."""
    previous = getattr(_bound, "session", None)
    _bound.session = session
    try:
        yield session
    finally:
        _bound.session = previous


def current_session() -> ClientSession:
    """The session bound to this thread; raises if the script runs outside fl-core."""
    session: ClientSession | None = getattr(_bound, "session", None)
    if session is None:
        raise FlCoreError(
            "no fl-core runtime is attached to this thread: run the script as part of a job "
            "(`fl-core run JOB`), and call the Client API from the script's own thread"
        )
    return session

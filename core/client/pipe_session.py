"""The training process's side of the Client API: a `ClientSession` over a pipe.

When the training script runs as its own process, its client job (the ACTIVE
end) and the script (the PASSIVE end) talk through a `Pipe`. These are the
topics (`PipeTopic`) on that pipe:

- `task` (ACTIVE -> PASSIVE): headers `task_id`, `task_name`, `round`, and
  `params_format: torch` if the site's last result was sent as torch tensors;
  body the task's `FLModel`.
- `result` (PASSIVE -> ACTIVE): header `task_id` of the task answered, and
  `params_format: torch` if the script sent torch tensors; body the result
  `FLModel` (numpy arrays).
- `log` (PASSIVE -> ACTIVE): body `{"key": str, "value": float, "step": int
  or null}`, a metric the script recorded.
- `end` (ACTIVE -> PASSIVE): no body; there is no more work.
- `failed` (PASSIVE -> ACTIVE): body `{"reason": str, "traceback": str}`.

A script answers each task with one `result` before it receives the next.
`failed` is reserved for the executor that runs the script (not sent by
`PipeSession` yet). Header values are strings, as on every pipe.

The client job tells the training process how to reach it through the
environment variable `FL_CORE_PIPE`, a JSON object:
`{"name": <pipe component, e.g. "file">, "options": {<the component's options>},
"pipe": <the pipe's name>, "site": <site name>, "job_id": <job id>}`;
`session_from_environment` reads it and opens the PASSIVE end.

Models travel as numpy arrays rebuilt by the pipe (dtype and shape exact);
the Client API converts a script's torch tensors at its edge
(`fl_core.client.torch_params`).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from fl_core.client.session import ClientSession
from fl_core.errors import FlCoreError
from fl_core.model import FLModel
from fl_core.spec.pipe import PeerGoneError, Pipe, PipeMessage, PipeSide

__all__ = [
    "ENV_VAR",
    "PARAMS_FORMAT",
    "TORCH",
    "NoTaskError",
    "PipeSession",
    "PipeTopic",
    "session_from_environment",
]

log = logging.getLogger(__name__)

ENV_VAR = "FL_CORE_PIPE"
"""The environment variable a client job sets for its training process."""
PARAMS_FORMAT = "params_format"
"""The header that says a model's params are (to be) torch tensors for the script."""
TORCH = "torch"
"""The `PARAMS_FORMAT` value for torch tensors."""

_WAIT_SLICE = 1.0
"""Seconds per pipe `receive` while a caller waits without a timeout."""
_SEND_SLICE = 3600.0
"""Seconds per pipe `send` attempt; a send not taken is retried while the peer lives.
Long, because over a cell pipe it bounds the whole transfer of a big result; a
client job that is gone ends the attempt at once (`PeerGoneError`)."""
_ENV_KEYS = {"name", "options", "pipe", "site", "job_id"}


class PipeTopic(enum.StrEnum):
    """The topics on the pipe between a client job and its training process."""

    TASK = "task"
    RESULT = "result"
    LOG = "log"
    END = "end"
    FAILED = "failed"


class NoTaskError(FlCoreError, RuntimeError):
    """`send` with no task to answer.

    Also a `RuntimeError`, as the in-process session raises for the same mistake.
    """


class PipeSession(ClientSession):
    """The Client API's view of the client job, through the PASSIVE end of `pipe`.

    `pipe` must be open. One thread at a time may call `receive`, one may
    call `send` / `log`.
    """

    def __init__(self, pipe: Pipe, site: str, job_id: str) -> None:
        self._pipe = pipe
        self._site = site
        self._job_id = job_id
        self._lock = threading.Lock()
        self._current: str | None = None
        self._pending: FLModel | None = None
        """A task `is_running` waited for, which the next `receive` returns."""
        self._ended = False
        self._torch = False

    @property
    def site_name(self) -> str:
        return self._site

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def pipe(self) -> Pipe:
        """The pipe this session talks through."""
        return self._pipe

    def receive(self, timeout: float | None) -> FLModel | None:
        """The next task's model; None on `end`, when the client job is gone, or on timeout."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            return pending
        return self._wait(timeout)

    def _wait(self, timeout: float | None) -> FLModel | None:
        if self._ended:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = self._pipe.receive(wait)
            except PeerGoneError as exc:
                log.warning("site %s job %s: no more tasks: %s", self._site, self._job_id, exc)
                self._ended = True
                return None
            if message is not None:
                return self._take(message)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _take(self, message: PipeMessage) -> FLModel | None:
        if message.topic == PipeTopic.END:
            self._ended = True
            return None
        if message.topic != PipeTopic.TASK:
            raise FlCoreError(
                f"pipe session (site {self._site}): unexpected topic {message.topic!r} from the "
                f"client job; expected {PipeTopic.TASK.value!r} or {PipeTopic.END.value!r}"
            )
        task_id = message.headers.get("task_id")
        if not task_id:
            raise FlCoreError(f"pipe session (site {self._site}): a task without a task_id header")
        if not isinstance(message.body, FLModel):
            raise FlCoreError(
                f"pipe session (site {self._site}): task {task_id!r} carries "
                f"{type(message.body).__name__}, not an FLModel"
            )
        with self._lock:
            self._current = task_id
            self._torch = message.headers.get(PARAMS_FORMAT) == TORCH
        return message.body

    def wants_torch(self) -> bool:
        """True if the client job marked the task last received `params_format: torch`."""
        return self._torch

    def send(self, model: FLModel, *, sent_torch: bool = False) -> None:
        """Send `model` as the result of the task last received."""
        with self._lock:
            task_id, self._current = self._current, None
        if task_id is None:
            raise NoTaskError("flare.send() called with no task to answer: call receive() first")
        headers = {"task_id": task_id}
        if sent_torch:
            headers[PARAMS_FORMAT] = TORCH
        self._deliver(PipeMessage(PipeTopic.RESULT, headers, model))

    def is_running(self) -> bool:
        """Whether there is a task for the script: waits for the next one, or for `end`.

        True while a task is unanswered or one is waiting for `receive`;
        otherwise it blocks until the client job sends a task (kept for the
        next `receive`) or `end` (False), as FLARE's Client API does, so a
        `while is_running(): receive()` loop never receives None.
        """
        with self._lock:
            if self._current is not None or self._pending is not None:
                return True
        if self._ended:
            return False
        model = self._wait(None)
        if model is None:
            return False
        with self._lock:
            self._pending = model
        return True

    def log(self, key: str, value: float, step: int | None) -> None:
        """Send the metric to the client job."""
        self._deliver(PipeMessage(PipeTopic.LOG, {}, {"key": key, "value": value, "step": step}))

    def _deliver(self, message: PipeMessage) -> None:
        while not self._pipe.send(message, _SEND_SLICE):
            if not self._pipe.peer_alive():
                raise FlCoreError(
                    f"pipe session (site {self._site}): the client job is gone; "
                    f"{message.topic!r} message not delivered"
                )

    def close(self) -> None:
        """Close this end of the pipe (the client job sees the trainer gone); idempotent."""
        self._ended = True
        self._pipe.close()


def _fail(problem: str) -> FlCoreError:
    return FlCoreError(f"environment variable {ENV_VAR}: {problem}")


def _text(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def session_from_environment(environ: Mapping[str, str] | None = None) -> PipeSession | None:
    """Open the PASSIVE end named by `FL_CORE_PIPE` and return its session; None if unset.

    Raises `FlCoreError` naming the variable if its value is not what the
    module docstring describes, or the pipe cannot be built or opened.
    """
    raw = (os.environ if environ is None else environ).get(ENV_VAR)
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise _fail(f"must be a JSON object, got {type(config).__name__}")
    missing = sorted(_ENV_KEYS - {"options"} - config.keys())
    if missing:
        raise _fail(f"missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(config.keys() - _ENV_KEYS)
    if unknown:
        raise _fail(f"unknown {', '.join(repr(k) for k in unknown)}")
    component, pipe_name = _text(config, "name"), _text(config, "pipe")
    site, job_id = _text(config, "site"), _text(config, "job_id")
    options = config.get("options", {})
    if not isinstance(options, dict):
        raise _fail(f"'options' must be a JSON object, got {type(options).__name__}")
    # This is the training process's composition root: its container builds the pipe.
    from fl_core.containers.trainer import trainer_pipe

    try:
        pipe = trainer_pipe(component, options)  # handed the installed transports
    except FlCoreError as exc:
        raise _fail(f"cannot build pipe {component!r}: {exc}") from exc
    try:
        pipe.open(pipe_name, PipeSide.PASSIVE)
    except FlCoreError as exc:
        pipe.close()
        raise _fail(f"cannot open pipe {pipe_name!r}: {exc}") from exc
    return PipeSession(pipe, site, job_id)

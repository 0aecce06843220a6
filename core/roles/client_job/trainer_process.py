"""One running training process and the ACTIVE end of its pipe, and how it is ended.

`ProcessExecutor` keeps one `TrainerProcess` per site while the site has a
script running; `end` is the one way a trainer goes: told `end`, given a
grace period to exit, then stopped with its children, its pipe closed and
its pipe folder removed.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fl_core.client.pipe_session import PARAMS_FORMAT, TORCH, PipeTopic
from fl_core.model import FLModel
from fl_core.pids import read_tail
from fl_core.roles.client_job.in_process import LogSink, TaskOutcome
from fl_core.spec.launcher import JobHandle
from fl_core.spec.pipe import Pipe, PipeError, PipeMessage

__all__ = ["STDERR_TAIL", "TrainerProcess", "close_pipe", "outcome_of"]

log = logging.getLogger(__name__)

STDERR_TAIL = 4096
"""Bytes of a failed script's stderr kept in the task's failure."""
_SLICE = 0.25
"""Seconds per wait, between checks of a `stop`."""


def close_pipe(site: str, pipe: Pipe, number: int) -> None:
    """Close the ACTIVE end of training process `number`'s pipe; a failure is only logged."""
    try:
        pipe.close()
    except PipeError as exc:
        # Its process is gone by now; a pipe that cannot close cleanly leaves only
        # files or a cell behind, which the log names.
        log.warning("%s: closing the pipe of training process %d: %s", site, number, exc)


@dataclass(slots=True)
class TrainerProcess:
    """One running training process and the ACTIVE end of its pipe."""

    handle: JobHandle
    pipe: Pipe
    folder: Path
    stderr_file: Path
    stderr_offset: int
    number: int
    last_round: int | None = None
    """The round of the last result it sent."""

    def stderr_tail(self) -> str:
        """The end of what this process wrote to stderr (not earlier processes')."""
        return read_tail(self.stderr_file, STDERR_TAIL, self.stderr_offset)

    def end(self, site: str, grace: float, *, patient: bool, stopping: threading.Event) -> bool:
        """Tell it `end`, let it exit within `grace`, then stop it; close and remove the pipe.

        `patient`: the script is expected to end by itself, so it gets the
        grace period even if it cannot be told `end` (it may be closing
        already); otherwise such a script is stopped at once. `stopping` set
        meanwhile (an abort) cuts the wait short. Returns whether it had to
        be stopped.
        """
        stopped = False
        if self.handle.poll() is None:
            deadline = time.monotonic() + grace  # one period to take `end` and to exit
            if self._tell_end(deadline, stopping) or patient:
                while self.handle.wait(_SLICE) is None:
                    if time.monotonic() >= deadline or stopping.is_set():
                        break
            stopped = self.handle.poll() is None
        self.handle.terminate(grace)
        close_pipe(site, self.pipe, self.number)
        shutil.rmtree(self.folder, ignore_errors=True)
        return stopped

    def _tell_end(self, deadline: float, stopping: threading.Event) -> bool:
        """Send `end` to a script whose end of the pipe is open; whether it was taken."""
        if not self.pipe.peer_alive():
            return False  # not up (yet) or gone: nobody to tell
        try:
            # Over a cell pipe a send waits for the script's receive: one try per slice,
            # so a `stop` meanwhile ends the wait (a send not taken is dropped by the peer).
            while not self.pipe.send(PipeMessage(PipeTopic.END), _SLICE * 4):
                if time.monotonic() >= deadline or stopping.is_set():
                    return False
                if self.handle.poll() is not None:
                    return False
            return True
        except PipeError:
            return False  # it went meanwhile: terminate ends what is left


def outcome_of(
    message: PipeMessage, site: str, task_id: str, logs: LogSink, torch_sites: set[str]
) -> TaskOutcome | None:
    """What one message from a site's training script means: an outcome, or None to wait on.

    A log line goes to `logs`; a result for `task_id` is the outcome, and
    its format (torch or numpy) is noted in `torch_sites`.
    """
    if message.topic == PipeTopic.LOG:
        body = message.body
        if (
            isinstance(body, dict)
            and isinstance(body.get("key"), str)
            and isinstance(body.get("value"), int | float)
            and (body.get("step") is None or type(body.get("step")) is int)
        ):
            logs(site, body["key"], float(body["value"]), body.get("step"))
        else:
            log.warning("%s: the training script sent a malformed log message", site)
        return None
    answered = message.headers.get("task_id")
    if message.topic == PipeTopic.RESULT:
        if answered != task_id:
            log.warning("%s: a result for task %r, not %r, ignored", site, answered, task_id)
            return None
        if not isinstance(message.body, FLModel):
            got = type(message.body).__name__
            return TaskOutcome(
                reason=f"the training script sent a {got} as its result, not a model"
            )
        if message.headers.get(PARAMS_FORMAT) == TORCH:
            torch_sites.add(site)
        else:
            torch_sites.discard(site)
        return TaskOutcome(result=message.body)
    if message.topic == PipeTopic.FAILED:
        body = message.body if isinstance(message.body, dict) else {}
        return TaskOutcome(
            reason=f"the training script failed: {body.get('reason', 'no reason given')}",
            detail=str(body.get("traceback", "")),
        )
    log.warning("%s: unexpected %r message from the training script", site, message.topic)
    return None

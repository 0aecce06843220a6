"""The client job process (CJ, cell `<site>.<job>`): one site's part of one job.

`ClientJob` is what the POC and production containers build for the
`client-job` role. It is handed the federation config, the job, a transport
and a factory of task executors. It joins its client parent and links
directly to its server job, both proving the job's token, then pulls tasks
until the job ends or its parent aborts it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.config import JobConfig
from fl_core.config.federation import FederationConfig
from fl_core.errors import CellError, FlCoreError, TargetUnreachableError
from fl_core.roles.client_job.executors import TaskExecutor
from fl_core.roles.client_job.runner import ClientRunner
from fl_core.roles.protocol.parent import Field, ParentTopic
from fl_core.roles.protocol.task import Topic
from fl_core.spec.security import SecurityProvider
from fl_core.spec.transport import Transport

log = logging.getLogger(__name__)

ExecutorFactory = Callable[..., TaskExecutor]
"""`make(job_id=, workspace=, logs=, timer=, on_script_error=)`: the job's task executor."""


@dataclass(frozen=True, slots=True)
class ClientJobArgs:
    """What the client parent tells a client job process on its command line."""

    site: str
    job_id: str
    job_dir: Path
    workspace: Path
    parent_url: str


class ClientJob:
    """Runs one site's part of a job in its own process; `run()` returns how it ended."""

    def __init__(
        self,
        federation: FederationConfig,
        job: JobConfig,
        args: ClientJobArgs,
        *,
        transport: Transport,
        executors: ExecutorFactory,
        security: SecurityProvider | None = None,
    ) -> None:
        self.federation = federation
        self.job = job
        self.args = args
        self.transport = transport
        self.executors = executors
        self.cell = Cell(f"{args.site}.{args.job_id}", transport)
        if security is not None:  # who may link here is bound to their certificates
            self.cell.links.check_peers(security.admit)

    def run(self, token: str, stop: threading.Event) -> int:
        """Take part in the job until it ends; 0 when this site's part went well, else 1.

        `token` is the job's token for this site, from the client parent
        (never in argv); `stop` set by a signal ends the part early.
        """
        args, job, cell = self.args, self.job, self.cell
        args.workspace.mkdir(parents=True, exist_ok=True)
        # The script sees its job folder on sys.path and its arguments in sys.argv.
        sys.argv = [str(job.executor.script), *job.executor.args]
        sys.path.insert(0, str(job.job_dir))
        runner: ClientRunner | None = None

        def logs(site: str, key: str, value: Any, step: int | None) -> None:
            if runner is not None:
                runner.send_log(key, value, step)

        executor = self.executors(
            job_id=args.job_id,
            workspace=args.workspace,
            logs=logs,
            timer=cell.resources.timer,
            on_script_error=lambda error: runner.report_script_error(error) if runner else None,
        )
        runner = ClientRunner(
            cell,
            args.site,
            f"server.{args.job_id}",
            executor,
            join_timeout=self.federation.server.job_start_timeout,
        )

        def on_abort(message: Message) -> object:
            if message.origin != args.site:  # only its client parent stops a client job
                raise FlCoreError(f"{message.origin} may not abort {cell.fqcn}")
            data = message.payload if isinstance(message.payload, dict) else {}
            log.info("aborted: %s", data.get(Field.REASON))
            stop.set()
            return None

        cell.register_handler(Channel.CLIENT_COMMAND, ParentTopic.ABORT, on_abort)
        try:
            if not token:
                raise FlCoreError(f"client job {cell.fqcn}: no token from its parent")
            cell.connect_parent(args.parent_url, reconnect=False, key=token.encode())
            timeout = self.federation.server.job_start_timeout
            link_directly(cell, f"server.{args.job_id}", token, timeout)
            runner.start()
            while not runner.done.wait(0.2):
                if stop.is_set():
                    runner.stop()
                    break
        finally:
            executor.stop("the job ended", 5.0)
            cell.close()
            self.transport.close()
        if runner.error:
            log.error("client job failed: %s", runner.error)
            return 1
        return 0


def link_directly(cell: Cell, server_job: str, token: str, timeout: float) -> None:
    """Open a direct link to the server job, waiting for its process to come up.

    Without one everything still works, through the tree of parents.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = cell.request(server_job, Channel.SERVER_MAIN, Topic.DIRECT, None, 10.0)
            url = reply.payload.get("url") if isinstance(reply.payload, dict) else None
            if not isinstance(url, str):
                raise CellError(f"{server_job} sent no direct URL")
            reached = cell.connect_direct(url, key=token.encode())
            if reached != server_job:
                cell.close_direct(reached)
                raise CellError(f"{url} is {reached}, not {server_job}")
            log.info("linked directly to %s at %s", server_job, url)
            return
        except TargetUnreachableError as exc:
            if time.monotonic() > deadline:
                log.warning("no direct link to %s: %s", server_job, exc)
                return
            time.sleep(0.05)  # its process is still starting
        except CellError as exc:
            log.warning("no direct link to %s (the tree carries the job): %s", server_job, exc)
            return

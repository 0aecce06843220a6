"""The server job process (SJ, cell `server.<job>`): one job's workflow, from start to summary.

`ServerJob` is what the POC and production containers build for the
`server-job` role. It is handed everything it uses: the federation config,
the job, a transport, the workflow and the event hooks. It joins its server
parent, proving the job's secret, takes direct links from its sites' client
jobs, runs the workflow, writes `summary.json` and reports its end.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.cell.proof import AdmissionRefused, KeyLookup
from fl_core.config import JobConfig
from fl_core.config.federation import FederationConfig
from fl_core.errors import CellError, FlCoreError, JobFailedError
from fl_core.model import FLModel, load_params, save_params
from fl_core.roles.protocol.parent import Field, JobState, ParentTopic, direct_token, job_key
from fl_core.roles.protocol.task import Topic
from fl_core.roles.server_job.runner import ServerRunner
from fl_core.roles.server_parent.job_store import KEPT_ROUND_TIMES
from fl_core.spec.events import Events
from fl_core.spec.security import SecurityProvider
from fl_core.spec.transport import Transport
from fl_core.spec.workflow import Workflow, WorkflowEvent

log = logging.getLogger(__name__)

FINAL_MODEL_FILE = "final_model.npz"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True, slots=True)
class ServerJobArgs:
    """What the server parent tells a server job process on its command line."""

    job_id: str
    job_dir: Path
    workspace: Path
    parent_url: str
    sites: tuple[str, ...]


class ServerJob:
    """Runs one job's workflow in its own process; `run()` returns how it ended."""

    def __init__(
        self,
        federation: FederationConfig,
        job: JobConfig,
        args: ServerJobArgs,
        *,
        transport: Transport,
        workflow: Workflow,
        events: Events,
        mode: str,
        security: SecurityProvider | None = None,
    ) -> None:
        self.federation = federation
        self.job = job
        self.args = args
        self.transport = transport
        self.workflow = workflow
        self.events = events
        self.mode = mode
        self.cell = Cell(f"server.{args.job_id}", transport)
        if security is not None:  # who may link here is bound to their certificates
            self.cell.links.check_peers(security.admit)
        self._progress = 0
        self._round_started = time.monotonic()
        self._round_seconds: collections.deque[float] = collections.deque(maxlen=KEPT_ROUND_TIMES)

    # --- reports to the server parent ------------------------------------------

    def _report(self, state: JobState, reason: str = "", *, final: bool = False) -> None:
        payload = {
            Field.JOB_ID: self.args.job_id,
            Field.STATE: state,
            Field.ROUND: self._progress,
            Field.TOTAL_ROUNDS: self.job.rounds,
            Field.REASON: reason,
            Field.ROUND_SECONDS: list(self._round_seconds),
        }
        topic = ParentTopic.JOB_STATUS
        try:
            if final:  # answered, so it is in before this process exits
                self.cell.request("server", Channel.SERVER_PARENT_LISTENER, topic, payload, 10)
            else:
                self.cell.fire("server", Channel.SERVER_PARENT_LISTENER, topic, payload)
        except CellError as exc:
            log.warning("could not report %s to the server parent: %s", state, exc)

    def _on_event(self, event: WorkflowEvent, round_number: int, data: dict[str, object]) -> None:
        if event == WorkflowEvent.ROUND_STARTED:
            self._round_started = time.monotonic()
        if event == WorkflowEvent.ROUND_FINISHED:
            self._progress = round_number + 1
            self._round_seconds.append(round(time.monotonic() - self._round_started, 4))
            self._report(JobState.RUNNING)
        log.info("round %d: %s %s", round_number + 1, event, json.dumps(data, default=str))

    # --- commands from the server parent ---------------------------------------

    def _from_parent(self, message: Message) -> dict[str, object]:
        # Commands to a job process come from its parent, and from no one else.
        if message.origin != "server":
            raise FlCoreError(f"{message.origin} may not command job {self.args.job_id}")
        return message.payload if isinstance(message.payload, dict) else {}

    def run(self, secret: str) -> int:
        """Run the job to its end; 0 when it finished, 1 when it failed or was aborted.

        `secret` is the job's secret from the server parent (never in argv).
        """
        args, job = self.args, self.job
        start = time.monotonic()
        args.workspace.mkdir(parents=True, exist_ok=True)
        sites = list(args.sites)
        runner = ServerRunner(
            self.cell,
            args.job_id,
            args.workspace,
            self.workflow,
            sites,
            on_event=self._on_event,
            fail_on_script_error=job.executor.fail_on_script_error,
        )

        def on_site_lost(message: Message) -> object:
            data = self._from_parent(message)
            runner.site_lost(str(data.get(Field.SITE, "")), str(data.get(Field.REASON, "lost")))
            return None

        def on_abort(message: Message) -> object:
            data = self._from_parent(message)
            runner.abort(str(data.get(Field.REASON) or "aborted"))
            return None

        cell = self.cell
        cell.register_handler(Channel.SERVER_COMMAND, ParentTopic.SITE_LOST, on_site_lost)
        cell.register_handler(Channel.SERVER_COMMAND, ParentTopic.ABORT, on_abort)
        # The job's secret proves this process to its parent. Client jobs link
        # to this process directly, so models do not pass through the parents
        # as relayed frames; only this job's client jobs get in, each proving
        # its site with a token derived from the secret. Nobody joins as a child.
        cell.require_proof(no_children(cell.fqcn))
        if self.federation.mode != "production":
            # Across machines a job opens no port of its own (the server's one
            # port is all a site reaches): the tree carries the job there.
            cell.accept_direct(direct_keys(args.job_id, sites, secret))
            scheme = args.parent_url.split("://", 1)[0]
            direct_url = cell.listen(f"{scheme}://127.0.0.1:0")
            cell.register_handler(Channel.SERVER_MAIN, Topic.DIRECT, lambda m: {"url": direct_url})
        status, reason = JobState.FAILED, ""
        try:
            cell.connect_parent(args.parent_url, reconnect=False, key=job_key(secret))
            self._report(JobState.RUNNING)
            self.events.job_started(job_id=args.job_id, mode=self.mode)
            timeout = self.federation.server.job_start_timeout
            runner.wait_for_sites(len(sites), timeout, of=len(sites))
            initial = FLModel(params=load_params(job.initial_model) if job.initial_model else {})
            final = runner.run(initial)
            save_params(args.workspace / FINAL_MODEL_FILE, final.params)
            status = JobState.FINISHED
        except JobFailedError as exc:
            reason = exc.reason
        except FlCoreError as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("job %s: unexpected error", args.job_id)
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            runner.end()
            self._write_summary(runner, status, reason, time.monotonic() - start)
            self._report(status, reason, final=True)
            time.sleep(0.1)  # let the END answers to the client jobs leave before the link closes
            cell.close()
            self.transport.close()
            self.events.job_finished(
                job_id=args.job_id, mode=self.mode, status=str(status), reason=reason
            )
        log.info("job %s %s%s", args.job_id, status, f": {reason}" if reason else "")
        return 0 if status is JobState.FINISHED else 1

    def _write_summary(
        self, runner: ServerRunner, status: JobState, reason: str, elapsed: float
    ) -> None:
        summary = {
            "job": self.job.name,
            "job_id": self.args.job_id,
            "mode": self.mode,
            "status": str(status),
            "reason": reason,
            "sites": list(self.args.sites),
            "rounds": self.job.rounds,
            "elapsed_s": round(elapsed, 3),
            "final_model": FINAL_MODEL_FILE if status is JobState.FINISHED else None,
            "failures": {
                site: {"round": f.round_number, "reason": f.reason, "traceback": f.detail}
                for site, f in runner.record.failures.items()
            },
            "script_errors": [error.summary() for error in runner.record.script_errors],
        }
        path = self.args.workspace / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2) + "\n")


def no_children(fqcn: str) -> KeyLookup:
    """A key lookup that admits nobody: a job process has no children."""

    def key(name: str) -> bytes:
        raise AdmissionRefused(f"{fqcn} takes no children")

    return key


def direct_keys(job_id: str, sites: list[str], secret: str) -> KeyLookup:
    """Admits `<site>.<job_id>` for a site of the job, if it proves that site's token."""

    def key(name: str) -> bytes:
        site, _, job = name.partition(".")
        if job != job_id or site not in sites:
            raise AdmissionRefused(f"{name} is not a client job of job {job_id}")
        return direct_token(secret, site).encode()

    return key

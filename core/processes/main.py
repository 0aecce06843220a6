"""Entry points of the federation's processes: `python -m fl_core.processes.main ROLE ...`.

    server-parent FEDERATION                      the server parent (cell `server`)
    client-parent FEDERATION SITE                 a client parent (cell SITE)
    server-job FEDERATION JOB_ID JOB_DIR WORKSPACE --parent-url URL --sites A,B
    client-job FEDERATION SITE JOB_ID JOB_DIR WORKSPACE --parent-url URL

Parents run until SIGTERM / SIGINT (or the federation's shutdown) and write
their pid into their workspace. Job processes are started by a launcher and
exit by themselves when their job ends: 0 when it finished, 1 when it failed.
Everything is logged to stderr, which the launcher (or `fl-core poc start`)
sends to the process's log file.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fl_core.errors import FlCoreError

if TYPE_CHECKING:
    from fl_core.cell.proof import KeyLookup

log = logging.getLogger("fl_core.processes.main")

EXIT_FAILED = 1
JOIN_TIMEOUT_DEFAULT = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fl_core.processes.main")
    roles = parser.add_subparsers(dest="role", required=True)
    sp = roles.add_parser("server-parent")
    sp.add_argument("federation")
    cp = roles.add_parser("client-parent")
    cp.add_argument("federation")
    cp.add_argument("site")
    sj = roles.add_parser("server-job")
    cj = roles.add_parser("client-job")
    sj.add_argument("federation")
    cj.add_argument("federation")
    cj.add_argument("site")
    for job in (sj, cj):
        job.add_argument("job_id")
        job.add_argument("job_dir")
        job.add_argument("workspace")
        job.add_argument("--parent-url", required=True)
    sj.add_argument("--sites", required=True)
    return parser


def _logging(name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {name} %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _components(federation: str) -> tuple[object, object, object]:
    """The federation config, its transport and the process launcher."""
    from fl_core.config.federation import load_federation
    from fl_core.plugins import make_plugin_manager
    from fl_core.spec import ComponentKind
    from fl_core.spec.launcher import Launcher
    from fl_core.spec.transport import Transport

    config = load_federation(federation)
    registry = make_plugin_manager().registry()
    transport = registry.create(
        ComponentKind.TRANSPORT,
        config.transport.name,
        config.transport.options,
        expect=Transport,
    )
    launcher = registry.create(ComponentKind.LAUNCHER, "process", {}, expect=Launcher)
    return config, transport, launcher


def _write_pid(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pid"
    tmp = path.with_name("pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)
    return path


def server_parent(args: argparse.Namespace) -> int:
    from fl_core.config.federation import FederationConfig
    from fl_core.roles.server_parent.engine import ServerEngine
    from fl_core.spec.launcher import Launcher
    from fl_core.spec.transport import Transport

    _logging("server")
    config, transport, launcher = _components(args.federation)
    assert isinstance(config, FederationConfig)
    assert isinstance(transport, Transport) and isinstance(launcher, Launcher)
    stop = threading.Event()
    _on_signals(stop)
    pid_file = _write_pid(config.server_dir)
    from fl_core.containers.check import check_job
    from fl_core.plugins import make_plugin_manager

    # Submit runs `fl-core job check`'s checks against the plugins installed here.
    registry = make_plugin_manager().registry()
    engine = ServerEngine(
        config, transport, launcher, check_job=lambda job: check_job(job, "poc", registry)
    )
    try:
        engine.start()
        while not stop.is_set() and not engine.wait(0.2):
            pass
    finally:
        engine.stop()
        transport.close()
        pid_file.unlink(missing_ok=True)
    return 0


def _server_url(config: object, timeout: float) -> str:
    from fl_core.config.federation import FederationConfig

    assert isinstance(config, FederationConfig)
    deadline = time.monotonic() + timeout
    while True:
        try:
            url = config.url_file.read_text().strip()
            if url:
                return url
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise FlCoreError(
                f"the server parent did not come up within {timeout:g} s (no {config.url_file})"
            )
        time.sleep(0.05)


def client_parent(args: argparse.Namespace) -> int:
    from fl_core.config.federation import FederationConfig
    from fl_core.errors import CellError
    from fl_core.roles.client_parent.engine import ClientEngine
    from fl_core.spec.launcher import Launcher
    from fl_core.spec.transport import Transport

    _logging(args.site)
    config, transport, launcher = _components(args.federation)
    assert isinstance(config, FederationConfig)
    assert isinstance(transport, Transport) and isinstance(launcher, Launcher)
    stop = threading.Event()
    _on_signals(stop)
    pid_file = _write_pid(config.site_dir(args.site))
    engine = ClientEngine(config, args.site, transport, launcher)
    try:
        while not stop.is_set():
            deadline = time.monotonic() + JOIN_TIMEOUT_DEFAULT
            while True:  # the server parent may still be starting, or restarting
                try:
                    engine.start(_server_url(config, JOIN_TIMEOUT_DEFAULT))
                    break
                except CellError as exc:
                    if stop.is_set() or time.monotonic() > deadline:
                        raise FlCoreError(f"{args.site} could not join the server: {exc}") from exc
                    engine.cell.close()
                    engine = ClientEngine(config, args.site, transport, launcher)
                    time.sleep(0.2)
            while not stop.is_set() and not engine.wait(0.2):
                pass
            if stop.is_set() or not engine.moved.is_set():
                break
            # A restarted server parent listens on a new URL: its old jobs are gone with
            # it, so this site's are stopped, and a fresh engine joins the new server.
            engine.stop("the server parent restarted")
            engine = ClientEngine(config, args.site, transport, launcher)
    finally:
        engine.stop()
        transport.close()
        pid_file.unlink(missing_ok=True)
    return 0


# --- job processes -------------------------------------------------------------------


def server_job(args: argparse.Namespace) -> int:
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel
    from fl_core.cell.message import Message
    from fl_core.config import load_job
    from fl_core.config.federation import FederationConfig
    from fl_core.containers.base import build_workflow
    from fl_core.errors import CellError, JobFailedError
    from fl_core.model import FLModel, load_params, save_params
    from fl_core.plugins import make_plugin_manager
    from fl_core.roles.protocol.parent import JOB_SECRET_ENV, Field, JobState, ParentTopic, job_key
    from fl_core.roles.protocol.task import Topic
    from fl_core.roles.server_job.runner import ServerRunner
    from fl_core.roles.server_parent.job_store import KEPT_ROUND_TIMES
    from fl_core.spec.transport import Transport
    from fl_core.spec.workflow import WorkflowEvent

    _logging(f"server.{args.job_id}")
    secret = os.environ.pop(JOB_SECRET_ENV, "")
    if not secret:
        raise FlCoreError(f"server job {args.job_id}: no {JOB_SECRET_ENV} from its server parent")
    config, transport, _ = _components(args.federation)
    assert isinstance(config, FederationConfig) and isinstance(transport, Transport)
    workspace = Path(args.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    job = load_job(args.job_dir)
    sites = [s for s in args.sites.split(",") if s]
    registry = make_plugin_manager().registry()
    workflow = build_workflow(
        registry, job.workflow.name, job.workflow.options, job.min_clients, job.rounds
    )
    cell = Cell(f"server.{args.job_id}", transport)
    start = time.monotonic()
    progress: dict[str, object] = {"round": 0}
    round_started = [start]
    round_seconds: collections.deque[float] = collections.deque(maxlen=KEPT_ROUND_TIMES)

    def report(state: JobState, reason: str = "", *, final: bool = False) -> None:
        payload = {
            Field.JOB_ID: args.job_id,
            Field.STATE: state,
            Field.ROUND: progress["round"],
            Field.TOTAL_ROUNDS: job.rounds,
            Field.REASON: reason,
            Field.ROUND_SECONDS: list(round_seconds),
        }
        try:
            if final:  # answered, so it is in before this process exits
                cell.request(
                    "server", Channel.SERVER_PARENT_LISTENER, ParentTopic.JOB_STATUS, payload, 10
                )
            else:
                cell.fire("server", Channel.SERVER_PARENT_LISTENER, ParentTopic.JOB_STATUS, payload)
        except CellError as exc:
            log.warning("could not report %s to the server parent: %s", state, exc)

    def on_event(event: WorkflowEvent, round_number: int, data: dict[str, object]) -> None:
        if event == WorkflowEvent.ROUND_STARTED:
            round_started[0] = time.monotonic()
        if event == WorkflowEvent.ROUND_FINISHED:
            progress["round"] = round_number + 1
            round_seconds.append(round(time.monotonic() - round_started[0], 4))
            report(JobState.RUNNING)
        log.info("round %d: %s %s", round_number + 1, event, json.dumps(data, default=str))

    runner = ServerRunner(
        cell,
        args.job_id,
        workspace,
        workflow,
        sites,
        on_event=on_event,
        fail_on_script_error=job.executor.fail_on_script_error,
    )

    def from_parent(message: Message) -> dict[str, object]:
        # Commands to a job process come from its parent, and from no one else.
        if message.origin != "server":
            raise FlCoreError(f"{message.origin} may not command job {args.job_id}")
        return message.payload if isinstance(message.payload, dict) else {}

    def on_site_lost(message: Message) -> object:
        data = from_parent(message)
        runner.site_lost(str(data.get(Field.SITE, "")), str(data.get(Field.REASON, "lost")))
        return None

    def on_abort(message: Message) -> object:
        data = from_parent(message)
        runner.abort(str(data.get(Field.REASON) or "aborted"))
        return None

    cell.register_handler(Channel.SERVER_COMMAND, ParentTopic.SITE_LOST, on_site_lost)
    cell.register_handler(Channel.SERVER_COMMAND, ParentTopic.ABORT, on_abort)
    # The job's secret, from the server parent and never in argv, proves this
    # process to its parent. Client jobs link to this process directly, so
    # models do not pass through the server parent and their client parents
    # as relayed frames; only this job's client jobs get in, each proving its
    # site with a token derived from the secret. Nobody joins as a child.
    cell.require_proof(_no_children(cell.fqcn))
    cell.accept_direct(_direct_keys(args.job_id, sites, secret))
    scheme = args.parent_url.split("://", 1)[0]
    direct_url = cell.listen(f"{scheme}://127.0.0.1:0")
    cell.register_handler(Channel.SERVER_MAIN, Topic.DIRECT, lambda m: {"url": direct_url})
    status, reason = JobState.FAILED, ""
    try:
        cell.connect_parent(args.parent_url, reconnect=False, key=job_key(secret))
        report(JobState.RUNNING)
        runner.wait_for_sites(len(sites), config.server.job_start_timeout, of=len(sites))
        initial = FLModel(params=load_params(job.initial_model) if job.initial_model else {})
        final = runner.run(initial)
        save_params(workspace / "final_model.npz", final.params)
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
        summary = {
            "job": job.name,
            "job_id": args.job_id,
            "mode": "poc",
            "status": str(status),
            "reason": reason,
            "sites": sites,
            "rounds": job.rounds,
            "elapsed_s": round(time.monotonic() - start, 3),
            "final_model": "final_model.npz" if status is JobState.FINISHED else None,
            "failures": {
                site: {"round": f.round_number, "reason": f.reason, "traceback": f.detail}
                for site, f in runner.record.failures.items()
            },
            "script_errors": [error.summary() for error in runner.record.script_errors],
        }
        (workspace / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report(status, reason, final=True)
        time.sleep(0.1)  # let the END answers to the client jobs leave before the link closes
        cell.close()
        transport.close()
    log.info("job %s %s%s", args.job_id, status, f": {reason}" if reason else "")
    return 0 if status is JobState.FINISHED else EXIT_FAILED


def client_job(args: argparse.Namespace) -> int:
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel
    from fl_core.cell.message import Message
    from fl_core.config import load_job
    from fl_core.config.federation import FederationConfig
    from fl_core.plugins import make_plugin_manager
    from fl_core.roles.client_job.executors import build_executor
    from fl_core.roles.client_job.runner import ClientRunner
    from fl_core.roles.protocol.parent import DIRECT_TOKEN_ENV, Field, ParentTopic
    from fl_core.spec.transport import Transport

    _logging(f"{args.site}.{args.job_id}")
    # One site per process: its task log is short and says where time went.
    logging.getLogger("fl_core.roles.client_job.runner").setLevel(logging.DEBUG)
    config, transport, _ = _components(args.federation)
    assert isinstance(config, FederationConfig) and isinstance(transport, Transport)
    Path(args.workspace).mkdir(parents=True, exist_ok=True)
    job = load_job(args.job_dir)
    # The script sees its job folder on sys.path and its arguments in sys.argv.
    sys.argv = [str(job.executor.script), *job.executor.args]
    sys.path.insert(0, str(job.job_dir))
    cell = Cell(f"{args.site}.{args.job_id}", transport)
    runner: ClientRunner | None = None
    executor = build_executor(
        job,
        registry=make_plugin_manager().registry(),
        job_id=args.job_id,
        workspace=Path(args.workspace),
        logs=lambda site, key, value, step: runner.send_log(key, value, step) if runner else None,
        timer=cell.resources.timer,
        on_script_error=lambda error: runner.report_script_error(error) if runner else None,
    )
    runner = ClientRunner(
        cell,
        args.site,
        f"server.{args.job_id}",
        executor,
        join_timeout=config.server.job_start_timeout,
    )
    stop = threading.Event()
    _on_signals(stop)

    def on_abort(message: Message) -> object:
        if message.origin != args.site:  # only its client parent stops a client job
            raise FlCoreError(f"{message.origin} may not abort {cell.fqcn}")
        data = message.payload if isinstance(message.payload, dict) else {}
        log.info("aborted: %s", data.get(Field.REASON))
        stop.set()
        return None

    cell.register_handler(Channel.CLIENT_COMMAND, ParentTopic.ABORT, on_abort)
    # The job's token, from the client parent and never in argv, proves this
    # process to its parent and to its server job.
    token = os.environ.pop(DIRECT_TOKEN_ENV, "")
    try:
        if not token:
            raise FlCoreError(f"client job {cell.fqcn}: no {DIRECT_TOKEN_ENV} from its parent")
        cell.connect_parent(args.parent_url, reconnect=False, key=token.encode())
        _link_directly(cell, f"server.{args.job_id}", token, config.server.job_start_timeout)
        runner.start()
        while not runner.done.wait(0.2):
            if stop.is_set():
                runner.stop()
                break
    finally:
        executor.stop("the job ended", 5.0)
        cell.close()
        transport.close()
    if runner.error:
        log.error("client job failed: %s", runner.error)
        return EXIT_FAILED
    return 0


def _no_children(fqcn: str) -> KeyLookup:
    """A key lookup that admits nobody: a job process has no children."""
    from fl_core.cell.proof import AdmissionRefused

    def key(name: str) -> bytes:
        raise AdmissionRefused(f"{fqcn} takes no children")

    return key


def _direct_keys(job_id: str, sites: list[str], secret: str) -> KeyLookup:
    """Admits `<site>.<job_id>` for a site of the job, if it proves that site's token."""
    from fl_core.cell.proof import AdmissionRefused
    from fl_core.roles.protocol.parent import direct_token

    def key(name: str) -> bytes:
        site, _, job = name.partition(".")
        if job != job_id or site not in sites:
            raise AdmissionRefused(f"{name} is not a client job of job {job_id}")
        return direct_token(secret, site).encode()

    return key


def _link_directly(cell: object, server_job: str, token: str, timeout: float) -> None:
    """Open a direct link to the server job, waiting for its process to come up.

    Without one everything still works, through the tree of parents.
    """
    from fl_core.cell.cell import Cell
    from fl_core.cell.channels import Channel
    from fl_core.errors import CellError, TargetUnreachableError
    from fl_core.roles.protocol.task import Topic

    assert isinstance(cell, Cell)
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


ROLES = {
    "server-parent": server_parent,
    "client-parent": client_parent,
    "server-job": server_job,
    "client-job": client_job,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one process of the federation; the exit code says how it ended."""
    args = _parser().parse_args(argv)
    try:
        return ROLES[args.role](args)
    except FlCoreError as exc:
        logging.getLogger("fl_core").error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

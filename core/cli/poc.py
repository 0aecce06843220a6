"""The POC and admin commands of `fl-core` (wired in by `fl_core.cli`).

fl-core poc prepare|start|stop|status [--workspace DIR] [--clients N] [--transport T] [--force]
                                      [--secure]
fl-core job submit JOB_DIR | list | status ID | abort ID | logs ID [--site S]
            | download ID [--output DIR]                      [--workspace DIR]
fl-core run --mode poc JOB [--clients N] [--workspace OUT] [--transport T]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final, TextIO

from fl_core.cli import signals as cli_signals
from fl_core.cli.usage import UsageError
from fl_core.errors import ConfigError, FlCoreError, UnknownComponentError

__all__ = ["add_job_parsers", "add_poc_parser", "job_command", "poc_command", "run_poc"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
DEFAULT_POC: Final = Path("fl-poc")
STATUS_POLL: Final = 0.25
"""Seconds between status requests while following a job."""


def add_poc_parser(sub: Any) -> None:
    """Add `fl-core poc ...` to the top-level subparsers."""
    poc = sub.add_parser("poc", help="a federation of real processes on this machine")
    poc_sub = poc.add_subparsers(dest="poc_command", required=True, metavar="ACTION")
    helps = {
        "prepare": "write a POC workspace (federation.yaml, server/, site-N/)",
        "start": "start the server parent and every client parent",
        "stop": "shut the POC down; no process is left",
        "status": "show the processes, the registered sites and the jobs",
    }
    for name, text in helps.items():
        action = poc_sub.add_parser(name, help=text)
        _workspace_option(action)
        if name == "prepare":
            action.add_argument("--clients", type=_positive, default=2, help="sites (default: 2)")
            action.add_argument(
                "--transport",
                default="tcp",
                metavar="NAME",
                help="the federation's transport: any installed one (default: tcp)",
            )
            action.add_argument(
                "--force",
                action="store_true",
                help="empty a --workspace that already holds something (refused if it runs)",
            )
            action.add_argument(
                "--secure",
                action="store_true",
                help="provision a local project and run it from its startup kits, as "
                "production does (mutual TLS, signed jobs, policies)",
            )
        if name in ("start", "stop"):
            action.add_argument(
                "--timeout", type=float, default=60.0, help="seconds to wait (default: 60)"
            )


def add_job_parsers(job_sub: Any) -> None:
    """Add the admin actions to `fl-core job ...` (beside `check`)."""
    submit = job_sub.add_parser("submit", help="submit a job folder to a running POC")
    submit.add_argument("job", type=Path, help="the job folder (holds job.yaml)")
    job_sub.add_parser("list", help="list the jobs")
    for name, text in (("status", "show a job's record"), ("abort", "abort a job")):
        job_sub.add_parser(name, help=text).add_argument("job_id", help="the job's id")
    logs = job_sub.add_parser("logs", help="print the tail of a job's log")
    logs.add_argument("job_id", help="the job's id")
    logs.add_argument("--site", help="a site's client job log (default: the server job's)")
    download = job_sub.add_parser("download", help="download a job's server workspace")
    download.add_argument("job_id", help="the job's id")
    download.add_argument(
        "--output", type=Path, help="where to unpack it (default: ./fl-workspace/<job name>)"
    )
    for action in (submit, *(job_sub.choices[n] for n in ("list", "status", "abort")), logs):
        _workspace_option(action)
    _workspace_option(download)


def _workspace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace", type=Path, default=DEFAULT_POC, help="the POC workspace (default: ./fl-poc)"
    )
    parser.add_argument(
        "--kit",
        type=Path,
        help="production: the admin's startup kit (from fl-core provision); replaces --workspace",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


# --- fl-core poc -------------------------------------------------------------------


def poc_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run `fl-core poc <action>`."""
    from fl_core.cli import poc_federation as poc
    from fl_core.cli import poc_secure as secure
    from fl_core.config.federation import load_federation

    if args.poc_command == "prepare" and args.secure:
        return _secure_command(args, out)
    if args.poc_command != "prepare" and secure.is_secure(args.workspace):
        return _secure_command(args, out)
    if args.poc_command == "prepare":
        if args.force:
            secure.refuse_running(args.workspace)  # a secure POC there has no federation.yaml
        _check_transport(args.transport)
        config = poc.prepare(args.workspace, args.clients, args.transport, args.force)
        out.write(
            f"prepared a POC in {config.root}: server and {len(config.sites)} sites "
            f"({', '.join(config.sites)}) over {config.transport.name}\n"
        )
        return EXIT_OK
    config = load_federation(args.workspace)
    if args.poc_command == "start":
        poc.start(config, args.timeout, on_progress=lambda line: _line(out, line))
        out.write(f"POC in {config.root} is running ({len(config.sites)} sites)\n")
        return EXIT_OK
    if args.poc_command == "stop":
        for note in poc.stop(config, args.timeout):
            _line(out, note)
        out.write(f"POC in {config.root} is stopped\n")
        return EXIT_OK
    return _print_status(poc.status(config), out)


def _secure_command(args: argparse.Namespace, out: TextIO) -> int:
    """`fl-core poc ...` of a secure POC: each participant run from its kit."""
    from fl_core.cli import poc_secure as secure

    if args.poc_command == "prepare":
        if args.transport not in ("grpc", "tcp"):
            raise UsageError(
                f"--transport: a secure POC runs over grpc or tcp, not {args.transport!r}"
            )
        _check_transport(args.transport)
        poc = secure.prepare_secure(args.workspace, args.clients, args.transport, args.force)
        out.write(
            f"prepared a secure POC in {poc.root}: kits for server {secure.SERVER}, "
            f"{len(poc.sites)} sites ({', '.join(poc.sites)}) and admin {secure.ADMIN} "
            f"in {poc.kits} over {args.transport}\n"
        )
        return EXIT_OK
    poc = secure.load_secure(args.workspace)
    if args.poc_command == "start":
        secure.start_secure(poc, args.timeout, on_progress=lambda line: _line(out, line))
        out.write(f"secure POC in {poc.root} is running ({len(poc.sites)} sites)\n")
        return EXIT_OK
    if args.poc_command == "stop":
        for note in secure.stop_secure(poc):
            _line(out, note)
        out.write(f"secure POC in {poc.root} is stopped\n")
        return EXIT_OK
    state = secure.status_secure(poc, out)
    if state["error"]:
        out.write(f"error: {state['error']}\n")
    out.write(f"jobs: {len(state['jobs'])}\n")
    for job in state["jobs"]:
        out.write(f"  {_job_row(job)}\n")
    running = "running" if state["running"] else "not running"
    out.write(f"secure POC in {poc.root} is {running}\n")
    return EXIT_OK if state["running"] else EXIT_FAILED


def _print_status(state: dict[str, Any], out: TextIO) -> int:
    server = state["server"]
    rows = [("server", server, server.get("url") or "-")]
    for site, info in state["sites"].items():
        rows.append((site, info, "registered" if info["registered"] else "not registered"))
    width = max(len(name) for name, _, _ in rows)
    for name, info, extra in rows:
        pid = info["pid"] if info["pid"] is not None else "-"
        alive = "running" if info["alive"] else "not running"
        out.write(f"{name.ljust(width)}  pid {pid}  {alive}  {extra}\n")
    if state["error"]:
        out.write(f"error: {state['error']}\n")
    out.write(f"jobs: {len(state['jobs'])}\n")
    for job in state["jobs"]:
        out.write(f"  {_job_row(job)}\n")
    out.write(f"POC in {state['root']} is {'running' if state['running'] else 'not running'}\n")
    return EXIT_OK if state["running"] else EXIT_FAILED


def _job_row(job: dict[str, Any]) -> str:
    reason = f"  {job['reason']}" if job.get("reason") else ""
    return (
        f"{job.get('job_id')}  {job.get('name')}  {job.get('state')}  "
        f"round {job.get('round', 0)}/{job.get('rounds', '?')}{reason}"
    )


def _record_json(record: dict[str, Any]) -> str:
    """The record as indented JSON, a list of numbers (the round times) on one line."""
    text = json.dumps(record, indent=2)
    return re.sub(r"\[([-+\d.eE,\s]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def _line(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


# --- fl-core job ... (admin) ---------------------------------------------------------


def job_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run an admin action of `fl-core job` against the POC in `--workspace` (or `--kit`)."""
    from fl_core.cli import poc_secure as secure
    from fl_core.config.federation import load_federation
    from fl_core.containers.poc import admin_client

    if args.kit is not None:
        from fl_core.config.kit import load_kit

        kit = load_kit(args.kit)
        if kit.kind != "admin":
            raise UsageError(f"{kit.root} is the kit of {kit.role} {kit.name}, not an admin's")
        config = load_federation(kit.federation_file)
    elif secure.is_secure(args.workspace):
        config = secure.load_secure(args.workspace).admin_federation()
    else:
        config = load_federation(args.workspace)
    with admin_client(config, wait=0.0) as admin:
        action = args.job_command
        if action == "submit":
            out.write(admin.submit(args.job) + "\n")
        elif action == "list":
            for job in admin.list():
                out.write(_job_row(job) + "\n")
        elif action == "status":
            out.write(_record_json(admin.status(args.job_id)) + "\n")
        elif action == "abort":
            record = admin.abort(args.job_id)
            out.write(f"{args.job_id}: {record.get('state')}\n")
            refused = record.get("refused") or []
            for line in refused:  # sites whose own policy kept their part running
                out.write(f"{line}\n")
            if refused:
                return EXIT_FAILED
        elif action == "logs":
            out.write(admin.logs(args.job_id, args.site or "server"))
        else:
            dest = args.output or Path("fl-workspace") / str(admin.status(args.job_id)["name"])
            out.write(f"{admin.download(args.job_id, dest)}\n")
    return EXIT_OK


# --- fl-core run --mode poc ------------------------------------------------------------


def run_poc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run one job in an ephemeral POC: prepare, start, submit, follow, download, stop.

    Nothing of the POC outlives the command, however it ends: Ctrl-C, SIGTERM
    or SIGHUP (see `fl_core.cli.signals`) abort the job, stop the POC and
    remove its temporary folder, and a second signal does not cut that short.
    """
    from fl_core.cli import poc_federation as poc
    from fl_core.cli import poc_secure as secure
    from fl_core.cli.workspace import empty_model_warning, fresh_workspace
    from fl_core.config import load_job

    job = load_job(args.job)
    clients = args.clients if args.clients is not None else job.min_clients
    if clients < job.min_clients:
        # The server would wait for sites that never come: refuse, as the simulator does.
        raise ConfigError(
            "--clients", "", f"{clients} sites is fewer than min_clients {job.min_clients}"
        )
    # The federation made for this run speaks the job's transport, if it names one.
    named = job.components.get("transport")
    transport = args.transport or (named.name if named is not None else "tcp")
    _check_transport(transport)
    output = args.workspace or Path("fl-workspace") / job.name
    aside = fresh_workspace(output)
    if aside is not None:
        _line(out, f"moved the earlier run in {output} to {aside}")
    started = time.monotonic()
    cli_signals.teardown_only()
    # --secure (when the `run` parser offers it): the same job from a provisioned project's kits.
    kits = secure.prepare_secure if getattr(args, "secure", False) else None
    if kits is not None and transport not in ("grpc", "tcp"):
        raise UsageError(f"--transport: a secure POC runs over grpc or tcp, not {transport!r}")
    tmp = Path(tempfile.mkdtemp(prefix="fl-poc-"))
    try:
        project = kits(tmp / "poc", clients, transport) if kits is not None else None
        config = (
            project.admin_federation() if project else poc.prepare(tmp / "poc", clients, transport)
        )
        try:
            out.write(
                f"fl-core poc: job {job.name}, {clients} sites, {job.rounds} rounds, "
                f"over {transport} (workspace {tmp / 'poc'})\n"
            )
            out.flush()
            progress = None if args.quiet else lambda s: _line(out, s)
            if project is not None:
                secure.start_secure(project, on_progress=progress)
            else:
                poc.start(config, on_progress=progress)
            record, missing = _submit_and_follow(config, job, output, out, err, quiet=args.quiet)
        finally:
            with cli_signals.held():
                if project is not None:
                    secure.stop_secure(project)
                else:
                    poc.stop(config)
    finally:
        with cli_signals.held():
            # Whatever a signal cut short (a process spawned but not yet recorded), none of
            # it may outlive the run: every process of this POC names its private folder.
            poc.sweep(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    _warn_script_errors(output, err)
    state = record.get("state")
    if state == "finished":
        out.write(
            f"finished in {time.monotonic() - started:.2f} s: final model "
            f"{output / 'final_model.npz'}, metrics {output / 'metrics.json'}\n"
        )
        if warning := empty_model_warning(output / "final_model.npz"):
            _line(err, warning)
        return EXIT_OK
    err.write(f"\nerror: job {job.name} {state}: {record.get('reason') or 'no reason given'}\n")
    if missing:
        err.write(f"(its server workspace could not be downloaded: {missing})\n")
    else:
        err.write(f"logs: {output / 'log.txt'}\n")
    return EXIT_FAILED


def _submit_and_follow(
    config: Any, job: Any, output: Path, out: TextIO, err: TextIO, *, quiet: bool
) -> tuple[dict[str, Any], str]:
    """Submit the job, follow it to its end and download it; returns (record, why not)."""
    from fl_core.containers.poc import admin_client

    with admin_client(config) as admin:
        job_id = admin.submit(job.job_dir)
        _line(out, f"submitted job {job.name} (id {job_id})")
        try:
            record = _follow(admin, job_id, out, quiet=quiet)
        except cli_signals.Interrupted as exc:
            _say(err, f"{exc.reason}: aborting job {job.name} and stopping the POC")
            try:
                admin.abort(job_id)
            except FlCoreError as abort_error:
                # Stopping the POC next ends the job's processes anyway.
                _say(err, f"the abort failed ({abort_error}); stopping the POC")
            raise
        return record, _download(admin, job_id, output, record)


def _say(err: TextIO, text: str) -> None:
    """Best effort: after SIGHUP the terminal may be gone, and teardown must go on."""
    try:
        _line(err, text)
    except (OSError, ValueError):
        pass


def _warn_script_errors(output: Path, err: TextIO) -> None:
    """A WARNING per training script that ended badly after its result (summary.json)."""
    try:
        summary = json.loads((output / "summary.json").read_text())
    except (OSError, ValueError):
        return  # not downloaded: the job's own failure is reported instead
    from fl_core.roles.protocol.script_errors import ScriptError

    for entry in summary.get("script_errors") or []:
        try:
            error = ScriptError.from_payload(str(entry.get("site")), entry)
        except (AttributeError, FlCoreError):
            continue  # a summary written by another version; the file is there to read
        _line(err, f"WARNING: {error.describe()}")


def _download(admin: Any, job_id: str, output: Path, record: dict[str, Any]) -> str:
    """Fetch the job's server workspace; returns why not, for a failed job, or ''."""
    try:
        admin.download(job_id, output)
    except FlCoreError as exc:
        if record.get("state") == "finished":
            raise  # the results are the point of a finished run
        return str(exc)  # the job's own failure is the error to report
    return ""


def _follow(admin: Any, job_id: str, out: TextIO, *, quiet: bool) -> dict[str, Any]:
    """Poll the job until it is final, printing its state changes and rounds as they pass.

    Each round's line carries how long that round took, as the server job
    measured it (the record keeps the last rounds' durations), since several
    rounds may pass between two polls.
    """
    from fl_core.roles.protocol.parent import JobState

    state = ""
    shown = 0
    while True:
        record: dict[str, Any] = admin.status(job_id)
        rounds = int(record.get("rounds") or 0)
        new_state = str(record.get("state"))
        final = JobState(new_state).final
        if new_state != state and not final:
            state = new_state
            if not quiet:
                _line(out, f"job {job_id}: {state}")
        # `round` counts up as rounds pass; a line per round done, as the simulator prints.
        done = min(int(record.get("round") or 0), rounds)
        if new_state == JobState.FINISHED:
            done = rounds
        times = [float(t) for t in record.get("round_seconds") or []]
        while shown < done:
            shown += 1
            if not quiet:
                index = shown - (done - len(times)) - 1
                took = f"  ({times[index]:.2f} s)" if 0 <= index < len(times) else ""
                _line(out, f"round {shown}/{rounds}: done{took}")
        if final:
            # After the rounds' lines, so the end is the last thing said.
            if not quiet:
                _line(out, f"job {job_id}: {new_state}")
            return record
        time.sleep(STATUS_POLL)


def _check_transport(name: str) -> None:
    """`--transport` names an installed transport that links processes, or it is a usage error."""
    from fl_core.cli.poc_federation import PocError, check_poc_transport

    try:
        check_poc_transport(name)
    except (UnknownComponentError, PocError) as exc:
        raise UsageError(f"--transport: {exc}") from exc

"""The `fl-core` command line.

fl-core run [--mode simulator] JOB [--clients N] [--threads T] [--workspace DIR]
fl-core run --mode poc JOB [--clients N] [--workspace DIR] [--transport tcp|grpc]
fl-core poc prepare|start|stop|status [--workspace DIR] ...
fl-core job check JOB
fl-core job submit|list|status|abort|logs|download ... [--workspace DIR]
fl-core start|stop|status KIT
fl-core job ... --kit ADMIN_KIT
fl-core provision PROJECT.yml --out DIR [--add NAME | --revoke NAME | --new-ca]
fl-core plugins
fl-core version

The POC and admin commands live in `fl_core.cli.poc`, provisioning in
`fl_core.cli.provision`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from fl_core import __version__
from fl_core.cli import signals as cli_signals
from fl_core.cli.kits import add_kit_parsers, kit_command
from fl_core.cli.poc import add_job_parsers, add_poc_parser, job_command, poc_command, run_poc
from fl_core.cli.policy import add_policy_parser, policy_command
from fl_core.cli.provision import add_provision_parser, provision_command
from fl_core.cli.usage import UsageError
from fl_core.errors import FlCoreError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-core", description="Federated learning runtime.")
    parser.add_argument(
        "--version", action="version", version=f"fl-core {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a job (simulator by default)")
    run.add_argument("job", type=Path, help="the job folder (holds job.yaml)")
    run.add_argument(
        "--mode",
        choices=("simulator", "poc", "production"),
        default="simulator",
        help="simulator: one process (default); poc: real processes on this machine",
    )
    run.add_argument("--clients", type=int, help="number of sites (default: min_clients)")
    run.add_argument(
        "--threads",
        type=int,
        help="worker threads for training scripts (default: min(clients, CPUs))",
    )
    run.add_argument(
        "--workspace", type=Path, help="where results go (default: ./fl-workspace/<job name>)"
    )
    run.add_argument(
        "--transport",
        metavar="NAME",
        help="--mode poc: the federation's transport, any installed one "
        "(default: the job's, else tcp)",
    )
    run.add_argument(
        "--secure",
        action="store_true",
        help="--mode poc: run from provisioned kits (mutual TLS, signed jobs), as production does",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no per-round progress")

    job = sub.add_parser("job", help="job commands")
    job_sub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    check = job_sub.add_parser("check", help="validate a job folder without running it")
    check.add_argument("job", type=Path, help="the job folder (holds job.yaml)")
    check.add_argument(
        "--mode",
        choices=("simulator", "poc", "production"),
        default="simulator",
        help="check against this mode's plugins (default: simulator)",
    )
    check.add_argument(
        "--federation",
        type=Path,
        metavar="PATH",
        help="--mode poc/production: the federation (its federation.yaml, or the POC "
        "workspace holding it) whose transport and security the job must leave alone",
    )
    add_job_parsers(job_sub)
    add_poc_parser(sub)
    add_kit_parsers(sub)
    add_provision_parser(sub)
    add_policy_parser(sub)

    sub.add_parser("plugins", help="list installed plugins and their components")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fl-core` console script."""
    args = _parser().parse_args(argv)
    # The console shows warnings and up; the run's log file gets INFO too,
    # so the level sits on the console handler, not on the root logger.
    level = os.environ.get("FL_CORE_LOG_LEVEL", "WARNING").upper()
    if level not in logging.getLevelNamesMapping():
        print(
            f"error: FL_CORE_LOG_LEVEL={level!r} is not a log level; "
            "use DEBUG, INFO, WARNING, ERROR or CRITICAL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    console = logging.StreamHandler()
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    # Ctrl-C, SIGTERM and SIGHUP all unwind through the same teardown (exit 130, 143, 129).
    with cli_signals.handled():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return _run(args, sys.stdout)
        if args.command == "job":
            if args.job_command != "check":
                return job_command(args, sys.stdout)
            return _job_check(args, sys.stdout)
        if args.command == "poc":
            return poc_command(args, sys.stdout)
        if args.command in ("start", "stop", "status"):
            code: int = kit_command(args, sys.stdout)
            return code
        if args.command == "provision":
            return provision_command(args, sys.stdout)
        if args.command == "policy":
            return policy_command(args, sys.stdout)
        if args.command == "plugins":
            return _plugins(sys.stdout)
        print(f"fl-core {__version__}")
        return EXIT_OK
    except UsageError as exc:
        print(f"fl-core: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FlCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        stopped = exc if isinstance(exc, cli_signals.Interrupted) else None
        try:
            print(stopped.reason if stopped else "interrupted", file=sys.stderr)
        except (OSError, ValueError):
            pass  # after SIGHUP the terminal may be gone; the exit code still says why
        return stopped.exit_code if stopped else EXIT_INTERRUPTED


def _plugins(out: TextIO) -> int:
    from fl_core.plugins import make_plugin_manager

    pm = make_plugin_manager()
    registry = pm.registry()
    by_plugin: dict[str, list[str]] = {}
    for component in registry.components():
        by_plugin.setdefault(component.plugin, []).append(f"{component.kind}:{component.name}")
    rows = [
        (name, info.distribution, info.version, ", ".join(by_plugin.get(name, [])) or "-")
        for name, info in sorted(pm.infos.items())
    ]
    header = ("PLUGIN", "DISTRIBUTION", "VERSION", "COMPONENTS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)))
        out.write(f"  {row[3]}\n")
    return EXIT_OK


def _job_check(args: argparse.Namespace, out: TextIO) -> int:
    from fl_core.config import load_job
    from fl_core.config._checks import ConfigErrors
    from fl_core.config.federation import load_federation
    from fl_core.containers.check import JobCheckErrors, check_job

    try:
        job = load_job(args.job)
        federation = None
        if args.federation is not None:
            if args.mode == "simulator":
                raise UsageError("--federation applies to --mode poc and production")
            federation = load_federation(args.federation)
        check_job(job, args.mode, federation=federation)
    except (ConfigErrors, JobCheckErrors) as exc:
        for error in exc.errors:  # every problem, each naming its file and key
            print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    out.write(
        f"{args.job}: ok (job {job.name!r}, {job.rounds} rounds, min_clients {job.min_clients}, "
        f"workflow {job.workflow.name}, script {job.executor.script.name})\n"
    )
    return EXIT_OK


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from fl_core.config import load_job
    from fl_core.roles.protocol.parent import JobState
    from fl_core.roles.simulator import run_with_interrupt

    if args.mode == "poc":
        if args.threads is not None:
            raise UsageError("--threads applies to --mode simulator only")
        return run_poc(args, out, sys.stderr)
    if args.transport is not None or args.secure:
        raise UsageError("--transport and --secure apply to --mode poc only")
    if args.mode == "production":
        raise UsageError(
            "production runs from startup kits, not from `run`: `fl-core provision PROJECT.yml "
            "--out DIR`, `fl-core start KIT` on each machine, then "
            "`fl-core job submit JOB --kit ADMIN_KIT` (see docs/production.md)"
        )
    job = load_job(args.job)
    clients = args.clients if args.clients is not None else job.min_clients
    threads = (
        args.threads if args.threads is not None else max(1, min(clients, os.cpu_count() or 1))
    )
    workspace = args.workspace or Path("fl-workspace") / job.name
    from fl_core.containers.simulator import simulator_container

    factory = simulator_container
    progress = _Progress(out, job.rounds, quiet=args.quiet)
    container = factory(job, clients=clients, threads=threads, workspace=workspace)
    container.on_event.override(progress)
    simulator = container.runner()
    _start_clean(workspace, out)
    out.write(
        f"fl-core simulator: job {job.name} (id {simulator.job_id}), {clients} sites, "
        f"{job.rounds} rounds, {threads} threads\n"
    )
    out.flush()
    result = run_with_interrupt(simulator)
    progress.close()
    if result.status == JobState.FINISHED:
        out.write(
            f"finished in {result.elapsed:.2f} s: final model {workspace / 'final_model.npz'}, "
            f"metrics {workspace / 'metrics.json'}\n"
        )
        _warn_if_empty(workspace / "final_model.npz")
        return EXIT_OK
    err = sys.stderr
    for site, failure in sorted(result.failures.items()):
        err.write(f"\n--- {site} failed in round {failure.round_number + 1}: {failure.reason}\n")
        if failure.detail:
            err.write(failure.detail.rstrip() + "\n")
    err.write(f"\nerror: job {job.name} {result.status}: {result.reason}\n")
    err.write(f"logs: {workspace / 'log.txt'}\n")
    if result.status == JobState.ABORTED:
        signum = cli_signals.received()
        return 128 + signum if signum is not None else EXIT_INTERRUPTED
    return EXIT_FAILED


def _warn_if_empty(final_model: Path) -> None:
    from fl_core.cli.workspace import empty_model_warning

    if warning := empty_model_warning(final_model):
        print(warning, file=sys.stderr)


def _start_clean(workspace: Path, out: TextIO) -> None:
    """Give the run an empty workspace; an earlier run there is moved aside, and said so."""
    from fl_core.cli.workspace import fresh_workspace

    aside = fresh_workspace(workspace)
    if aside is not None:
        out.write(f"moved the earlier run in {workspace} to {aside}\n")


class _Progress:
    """Prints round progress: one line per round; live counts on a terminal."""

    def __init__(self, out: TextIO, rounds: int, quiet: bool) -> None:
        self.out = out
        self.rounds = rounds
        self.quiet = quiet
        self.live = out.isatty()
        # Only a terminal redraws the live count in place; in a log, `\r` would hide
        # each line from `grep '^round'`.
        self.cr = "\r" if self.live else ""
        self.started = time.monotonic()
        self.received = 0
        self.failed = 0
        self.sites = 0

    def __call__(self, event: str, round_number: int, data: dict[str, object]) -> None:
        if self.quiet:
            return
        label = f"round {round_number + 1}/{self.rounds}"
        if event == "round_started":
            self.started = time.monotonic()
            self.received = self.failed = 0
            sites = data.get("sites", 0)
            self.sites = sites if isinstance(sites, int) else 0
        elif event in ("result_received", "result_failed"):
            if event == "result_received":
                self.received += 1
            else:
                self.failed += 1
                self.out.write(
                    f"{self.cr}{label}: {data.get('site')} failed: {data.get('reason')}\n"
                )
            if self.live:
                self.out.write(f"\r{label}: {self.received}/{self.sites} results")
                self.out.flush()
        elif event == "round_finished":
            metrics = data.get("metrics") or {}
            shown = ""
            if isinstance(metrics, dict):
                shown = "  ".join(
                    f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, int | float)
                )
            elapsed = time.monotonic() - self.started
            self.out.write(
                f"{self.cr}{label}: {self.received}/{self.sites} results  {shown}  "
                f"({elapsed:.2f} s)\n"
            )
            self.out.flush()

    def close(self) -> None:
        self.out.flush()


if __name__ == "__main__":
    sys.exit(main())

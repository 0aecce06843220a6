"""The composition root of each process role: configs -> container -> runner -> run.

Only this package and the CLI build containers; the roles themselves are
handed their collaborators.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from fl_core.config import load_job
from fl_core.config.federation import load_federation
from fl_core.containers.production import federation_container
from fl_core.roles.client_job.process import ClientJob, ClientJobArgs
from fl_core.roles.client_parent.process import ClientParent
from fl_core.roles.protocol.parent import DIRECT_TOKEN_ENV, JOB_SECRET_ENV
from fl_core.roles.server_job.process import ServerJob, ServerJobArgs
from fl_core.roles.server_parent.process import ServerParent


def _logging(name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {name} %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def server_parent(args: argparse.Namespace) -> int:
    """The server parent: cell `server`."""
    _logging("server")
    federation = load_federation(args.federation)
    container = federation_container(federation, identity="server")
    runner = container.server_parent()
    assert isinstance(runner, ServerParent)
    return runner.run(_stop_on_signals())


def client_parent(args: argparse.Namespace) -> int:
    """A client parent: cell `<site>`."""
    _logging(args.site)
    federation = load_federation(args.federation)
    container = federation_container(federation, identity=args.site, site=args.site)
    runner = container.client_parent()
    assert isinstance(runner, ClientParent)
    return runner.run(_stop_on_signals())


def server_job(args: argparse.Namespace) -> int:
    """A server job: cell `server.<job>`; its secret comes in the environment, never argv."""
    _logging(f"server.{args.job_id}")
    secret = os.environ.pop(JOB_SECRET_ENV, "")
    if not secret:
        raise_missing(f"server job {args.job_id}", JOB_SECRET_ENV, "server parent")
    federation = load_federation(args.federation)
    job = load_job(args.job_dir)
    container = federation_container(federation, job, identity="server")
    job_args = ServerJobArgs(
        args.job_id,
        Path(args.job_dir),
        Path(args.workspace),
        args.parent_url,
        tuple(s for s in args.sites.split(",") if s),
    )
    runner = container.server_job(args=job_args)
    assert isinstance(runner, ServerJob)
    return runner.run(secret)


def client_job(args: argparse.Namespace) -> int:
    """A client job: cell `<site>.<job>`; its token comes in the environment, never argv."""
    _logging(f"{args.site}.{args.job_id}")
    # One site per process: its task log is short and says where time went.
    logging.getLogger("fl_core.roles.client_job.runner").setLevel(logging.DEBUG)
    token = os.environ.pop(DIRECT_TOKEN_ENV, "")
    if not token:
        raise_missing(f"client job {args.site}.{args.job_id}", DIRECT_TOKEN_ENV, "parent")
    federation = load_federation(args.federation)
    job = load_job(args.job_dir)
    container = federation_container(federation, job, identity=args.site, site=args.site)
    job_args = ClientJobArgs(
        args.site, args.job_id, Path(args.job_dir), Path(args.workspace), args.parent_url
    )
    stop = _stop_on_signals()
    runner = container.client_job(args=job_args)
    assert isinstance(runner, ClientJob)
    return runner.run(token, stop)


def raise_missing(who: str, variable: str, parent: str) -> None:
    """A job process started without the secret its parent gives it."""
    from fl_core.errors import FlCoreError

    raise FlCoreError(f"{who}: no {variable} from its {parent}")


ROLES = {
    "server-parent": server_parent,
    "client-parent": client_parent,
    "server-job": server_job,
    "client-job": client_job,
}

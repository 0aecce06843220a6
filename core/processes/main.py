"""Entry points of the federation's processes: `python -m fl_core.processes.main ROLE ...`.

    server-parent FEDERATION                      the server parent (cell `server`)
    client-parent FEDERATION SITE                 a client parent (cell SITE)
    server-job FEDERATION JOB_ID JOB_DIR WORKSPACE --parent-url URL --sites A,B
    client-job FEDERATION SITE JOB_ID JOB_DIR WORKSPACE --parent-url URL

Each role starts the same way (see `fl_core.processes.roles`): load the
configs, build the mode's container, ask it for the role's runner, run it.
Parents run until SIGTERM / SIGINT (or the federation's shutdown) and write
their pid into their workspace. Job processes are started by a launcher and
exit by themselves when their job ends: 0 when it finished, 1 when it failed.
Everything is logged to stderr, which the launcher (or `fl-core poc start`)
sends to the process's log file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fl_core.errors import FlCoreError

EXIT_FAILED = 1


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one process of the federation; the exit code says how it ended."""
    from fl_core.processes import roles

    args = _parser().parse_args(argv)
    try:
        return roles.ROLES[args.role](args)
    except FlCoreError as exc:
        logging.getLogger("fl_core").error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

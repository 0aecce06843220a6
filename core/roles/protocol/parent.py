"""What the parent processes say to each other, to their job processes and to admins.

The process model (see `docs/architecture.md`):

    server parent (SP, cell `server`)        client parent (CP, cell `<site>`)
        |  launches                               |  launches
    server job (SJ, cell `server.<job>`)     client job (CJ, cell `<site>.<job>`)

    admin (the `fl-core job ...` CLI, cell `admin-<hex>`): a child of SP.

Who may join whom (each proves a secret at hello, by challenge/response,
see `fl_core.cell.proof`; the listener proves it back):
- SP admits `admin-<hex>` holding the admin secret, `<site>` holding that
  site's secret, and `server.<job>` of a running job holding `job_key` of
  that job's secret (given to the SJ in `FL_CORE_JOB_SECRET`). No one else.
- A CP admits `<site>.<job>` for a job it started, holding the job token SP
  gave it for that job (the CJ gets it in `FL_CORE_DIRECT_TOKEN`).
- A SJ admits no children; it takes direct links from `<site>.<job>` of
  its own sites holding the same token.
Each handler below also checks who sent the message: commands to a CP come
from `server` only, to a job process from its own parent only, and the SJ
serves tasks to its own sites' client jobs only.

Every message below is a cell request on the channel and topic named here;
payloads are JSON objects (or job packages as bytes), never pickles. Field
names are the `Field` members. A handler answers with a JSON object; a
refusal raises `FlCoreError` with the reason, which the requester receives
as `RemoteError`.

SP cell `server`:
- `SERVER_MAIN / register` from a CP: `{site, url, pid}` -> `{heartbeat_interval}`.
  `url` is where the CP listens for its client jobs.
- `SERVER_MAIN / heartbeat` from a CP: `{site, jobs: [job_id...]}` -> `{}`.
- `SERVER_MAIN / client_job_exited` from a CP: `{site, job_id, exit_code, reason}` -> `{}`.
- `SERVER_PARENT_LISTENER / job_status` from a SJ (fire-and-forget):
  `{job_id, state, round, total_rounds, reason}`; `state` is a `JobState`.
- `ADMIN / <AdminTopic>` from an admin: see `AdminTopic`.

CP cell `<site>`:
- `CLIENT_MAIN / deploy` from SP: bytes (the job package, a zip), header
  `job_id` -> `{}` once unpacked into the site's job folder.
- `CLIENT_MAIN / start_job` from SP: `{job_id, server_job, token}` -> `{pid}` once
  launched. `token` is the site's token for this job (`direct_token`),
  with which its client job proves itself to this CP and to the SJ; the
  client job gets it in `FL_CORE_DIRECT_TOKEN`.
- `CLIENT_MAIN / abort_job` from SP: `{job_id, reason}` -> `{}` once the CJ is gone.
- `CLIENT_MAIN / shutdown` from SP: `{}` -> `{}`; the CP stops its jobs and exits.

SJ cell `server.<job>`:
- `SERVER_COMMAND / site_lost` from SP: `{site, reason}`: the site's client
  job or parent is gone; the open task of that site fails with `reason`.
- `SERVER_COMMAND / abort` from SP: `{reason}`.

CJ cell `<site>.<job>`:
- `CLIENT_COMMAND / abort` from its CP: `{reason}`.
"""

from __future__ import annotations

import enum
from typing import Final

JOB_SECRET_ENV: Final = "FL_CORE_JOB_SECRET"
"""The server job's per-job secret (from its server parent, never in argv)."""
DIRECT_TOKEN_ENV: Final = "FL_CORE_DIRECT_TOKEN"
"""A client job's token: it proves the client job to its parent and its server job."""


def direct_token(secret: str, site: str) -> str:
    """The token with which `site`'s client job proves itself to its parent and server job.

    Derived from the job's secret, so the server job checks it without a
    table, and one site's token says nothing about another's.
    """
    import hashlib
    import hmac

    return hmac.new(secret.encode(), site.encode(), hashlib.sha256).hexdigest()


def job_key(secret: str) -> bytes:
    """What a server job proves, joining its server parent, with the job's secret."""
    from fl_core.credentials import derive_key

    return derive_key(secret, "server job")


class ParentTopic(enum.StrEnum):
    """Topics served by the parents and job processes (channels in the module doc)."""

    REGISTER = "register"
    HEARTBEAT = "heartbeat"
    CLIENT_JOB_EXITED = "client_job_exited"
    JOB_STATUS = "job_status"
    DEPLOY = "deploy"
    START_JOB = "start_job"
    ABORT_JOB = "abort_job"
    SHUTDOWN = "shutdown"
    SITE_LOST = "site_lost"
    ABORT = "abort"
    SITE_LOGS = "site_logs"
    """Server parent -> client parent: the tail of a job's log there, asked with the
    admin's signed `read_results` request (see `fl_core.roles.protocol.signed_request`)."""


class AdminTopic(enum.StrEnum):
    """Requests an admin sends to SP on `Channel.ADMIN`.

    - `submit`: bytes, the job package (zip of the job folder) -> `{job_id}`;
      a package that is not a valid job is refused with the reason.
    - `list`: `{}` -> `{jobs: [job record...]}`, oldest first.
    - `status`: `{job_id}` -> the job record (`JobRecord.to_json`).
    - `abort`: `{job_id}` -> the job record, once every job process is gone.
    - `logs`: `{job_id, which}` -> bytes, the tail of the server job's log
      (`which` = "server") or of a site's client job log (a site name).
    - `download`: `{job_id}` -> `{files: [{path, size}...]}`, the regular files
      of the job's server workspace (POSIX paths relative to it, sorted).
    - `read`: `{job_id, path, offset}` -> bytes: at most `DOWNLOAD_CHUNK` of
      one of those files from `offset`. A download is a `download` and then
      `read`s, so neither end ever holds more than a chunk of a result that
      may be many GiB.
    - `sites`: `{}` -> `{sites: [{site, url, last_seen, jobs}...]}`.
    - `shutdown`: `{}` -> `{}`: SP stops every job, tells every CP to exit,
      and exits.
    """

    SUBMIT = "submit"
    LIST = "list"
    STATUS = "status"
    ABORT = "abort"
    LOGS = "logs"
    DOWNLOAD = "download"
    READ = "read"
    SITES = "sites"
    SHUTDOWN = "shutdown"


class JobState(enum.StrEnum):
    """Where a job is in its life; the last three are final."""

    SUBMITTED = "submitted"
    """Stored, waiting for its sites and for a free slot."""
    DEPLOYING = "deploying"
    """Sent to its sites; its processes are being started."""
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        """True for a job that has ended."""
        return self in (JobState.FINISHED, JobState.FAILED, JobState.ABORTED)


class Field(enum.StrEnum):
    """Keys of the JSON payloads above."""

    SITE = "site"
    URL = "url"
    PID = "pid"
    JOBS = "jobs"
    JOB_ID = "job_id"
    EXIT_CODE = "exit_code"
    REASON = "reason"
    STATE = "state"
    ROUND = "round"
    TOTAL_ROUNDS = "total_rounds"
    ROUND_SECONDS = "round_seconds"
    SERVER_JOB = "server_job"
    HEARTBEAT_INTERVAL = "heartbeat_interval"
    WHICH = "which"
    SITES = "sites"
    LAST_SEEN = "last_seen"
    FILES = "files"
    PATH = "path"
    SIZE = "size"
    OFFSET = "offset"
    TOKEN = "token"


MAX_JOB_PACKAGE: Final = 256 * 1024 * 1024
"""The largest job package (zip) SP accepts, and the most it unpacks."""
MAX_JOB_FILES: Final = 10_000
"""The most files a job package may hold."""
DOWNLOAD_CHUNK: Final = 8 * 1024 * 1024
"""The most one `read` returns."""
ADMIN_PREFIX: Final = "admin-"
"""Admin cells are named `admin-<hex>`; SP serves ADMIN only to them."""


ABORT_GRACE: Final = 5.0
"""Seconds a job process gets to stop after an abort before it is killed."""


def json_object(payload: object, what: str) -> dict[str, object]:
    """`payload` as a JSON object; `FlCoreError` naming `what` otherwise."""
    from fl_core.errors import FlCoreError

    if not isinstance(payload, dict):
        raise FlCoreError(f"a {what} must be a JSON object, got {type(payload).__name__}")
    return payload


def json_int(value: object) -> int:
    """A whole number from a peer's JSON; anything else counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

"""The admin side of the ADMIN channel: what `fl-core job ...` and `fl-core poc ...` use.

An `AdminClient` is a short-lived cell `admin-<8 hex>` connected as a child
of the server parent (SP) of one federation. It finds SP through the URL
file SP writes once it listens, proves it holds the federation's admin
secret as it joins (SP proves the same back; the secret never travels),
sends `AdminTopic` requests (see `fl_core.roles.protocol.parent`) and turns SP's
refusals into `AdminRequestError` carrying SP's reason:

    with AdminClient(load_federation("fl-poc")) as admin:
        job_id = admin.submit(Path("examples/hello-numpy"))
        print(admin.status(job_id)["state"])
"""

from __future__ import annotations

import builtins
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Final

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.config.federation import FederationConfig
from fl_core.config.job import load_job
from fl_core.credentials import read_secret
from fl_core.errors import CellError, FlCoreError, RemoteError, TargetUnreachableError
from fl_core.roles.protocol.job_package import unpack_job
from fl_core.roles.protocol.parent import (
    ADMIN_PREFIX,
    AdminTopic,
    Field,
)
from fl_core.roles.protocol.signed_job import sign_job
from fl_core.roles.protocol.signed_request import REFUSED, sign_request
from fl_core.spec.security import SecurityProvider, admin_cell_prefix
from fl_core.spec.transport import Transport

__all__ = [
    "AdminClient",
    "AdminRefusedError",
    "AdminRequestError",
    "ServerNotRunningError",
    "UnsafeArchiveError",
]

REQUEST_TIMEOUT: Final = 30.0
"""Seconds an ordinary admin request may take."""
TRANSFER_TIMEOUT: Final = 300.0
"""Seconds a request that moves a job package or a workspace may take."""
ABORT_TIMEOUT: Final = 120.0
"""Seconds SP may take to stop every process of an aborted job before it answers."""
_POLL: Final = 0.05


class ServerNotRunningError(FlCoreError):
    """No server parent answers for the federation at `root`."""

    def __init__(self, root: Path, url_file: Path, detail: str = "") -> None:
        self.root = root
        self.url_file = url_file
        self.detail = detail
        super().__init__(
            f"the server parent of {root} is not running ("
            + (detail or f"no {url_file}")
            + "); start it with `fl-core poc start`"
        )


class AdminRefusedError(FlCoreError):
    """SP did not admit this admin (no or a wrong credential), or SP did not prove itself."""

    def __init__(self, root: Path, key_file: Path, detail: str) -> None:
        self.root = root
        self.key_file = key_file
        self.detail = detail
        super().__init__(
            f"the server parent of {root} did not accept this admin: {detail}. "
            f"An admin proves the federation's admin credential, read from {key_file}"
        )


class AdminRequestError(FlCoreError):
    """SP refused or did not answer an admin request; `reason` is SP's text (or the cause)."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"{topic}: {reason}")


class UnsafeArchiveError(FlCoreError):
    """A zip from SP would write outside its destination, or is too big."""

    def __init__(self, dest: Path, member: str, problem: str) -> None:
        self.dest = dest
        self.member = member
        self.problem = problem
        super().__init__(f"refused to unpack {member!r} into {dest}: {problem}")


class AdminClient:
    """A connection to one federation's server parent for admin requests.

    `wait` is how long to wait for SP's URL file to appear (SP may be
    starting); `transports` makes the federation's transport when the client
    connects (its container hands it over; the client closes what it made);
    `key_file` the admin credential (default: the federation's
    `admin_key_file`).
    Use it as a context manager; `close()` releases the cell and transport.
    """

    def __init__(
        self,
        config: FederationConfig,
        *,
        wait: float = 10.0,
        timeout: float = REQUEST_TIMEOUT,
        transports: Callable[[], Transport],
        key_file: Path | None = None,
        security: SecurityProvider | None = None,
    ) -> None:
        self.config = config
        self.security = security
        """Proves who this admin is (a certificate in production) and signs its jobs."""
        self.key_file = key_file or config.admin_key_file
        self.wait = wait
        self.timeout = timeout
        me = security.identity() if security is not None else None
        # With a certificate the name is bound to it: the server admits only cells
        # under the certificate's own admin prefix.
        prefix = admin_cell_prefix(me.name) if me is not None else ADMIN_PREFIX.rstrip("-")
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self._transports = transports
        self._transport: Transport | None = None
        self._cell: Cell | None = None

    # --- connection --------------------------------------------------------------

    def connect(self) -> AdminClient:
        """Find SP's URL (waiting up to `wait`) and join SP as a child cell.

        Raises `CredentialError` if the admin credential cannot be read,
        `ServerNotRunningError` if SP does not answer, and `AdminRefusedError`
        if SP refuses this admin or cannot prove it is the federation's SP.
        """
        if self._cell is not None:
            return self
        proved = self.security is not None and self.security.proves_names
        key = None if proved else read_secret(self.key_file)
        url = self._server_url()
        transport = self._transport or self._transports()
        self._transport = transport
        cell = Cell(self.name, transport)
        try:
            # No reconnect: an admin's request fails fast when SP goes away.
            cell.connect_parent(url, timeout=min(self.timeout, 10.0), reconnect=False, key=key)
        except TargetUnreachableError as exc:
            cell.close()
            self._close_transport()
            raise ServerNotRunningError(
                self.config.root, self.config.url_file, f"nothing answers at {url}: {exc}"
            ) from exc
        except CellError as exc:
            cell.close()
            self._close_transport()
            raise AdminRefusedError(self.config.root, self.key_file, str(exc)) from exc
        self._cell = cell
        return self

    def _server_url(self) -> str:
        if self.config.server.url:
            return self.config.server.url
        url_file = self.config.url_file
        deadline = time.monotonic() + self.wait
        while True:
            try:
                url = url_file.read_text().strip()
            except FileNotFoundError:
                url = ""
            if url:
                return url
            if time.monotonic() >= deadline:
                raise ServerNotRunningError(self.config.root, url_file)
            time.sleep(_POLL)

    def close(self) -> None:
        """Leave SP and release the transport; safe to call twice."""
        cell, self._cell = self._cell, None
        if cell is not None:
            cell.close()
        self._close_transport()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def __enter__(self) -> AdminClient:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------

    def _request(
        self,
        topic: AdminTopic,
        payload: object,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> object:
        if self._cell is None:
            self.connect()
        assert self._cell is not None
        try:
            reply = self._cell.request(
                "server", Channel.ADMIN, topic, payload, timeout or self.timeout, headers
            )
        except RemoteError as exc:
            raise AdminRequestError(topic, exc.detail) from exc
        except CellError as exc:
            raise AdminRequestError(topic, f"the server parent did not answer: {exc}") from exc
        return reply.payload

    def _json(
        self,
        topic: AdminTopic,
        payload: object,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        reply = self._request(topic, payload, timeout, headers)
        if not isinstance(reply, dict):
            raise AdminRequestError(
                topic, f"expected a JSON object from the server parent, got {type(reply).__name__}"
            )
        return reply

    def _bytes(
        self,
        topic: AdminTopic,
        payload: object,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        reply = self._request(topic, payload, timeout, headers)
        if isinstance(reply, bytes | bytearray | memoryview):
            return bytes(reply)
        if reply is None:
            return b""
        if isinstance(reply, dict) and isinstance(reply.get(REFUSED), str):
            raise AdminRequestError(topic, reply[REFUSED])  # a site's own refusal
        raise AdminRequestError(
            topic, f"expected bytes from the server parent, got {type(reply).__name__}"
        )

    def submit(self, job_dir: Path) -> str:
        """Pack `job_dir` and submit it; returns the job id SP gave it."""
        from fl_core.roles.server_parent.job_store import pack_job

        package = pack_job(Path(job_dir))
        headers = self._signed(package) if self.security is not None else {}
        reply = self._json(AdminTopic.SUBMIT, package, TRANSFER_TIMEOUT, headers)
        job_id = reply.get(Field.JOB_ID)
        if not isinstance(job_id, str) or not job_id:
            raise AdminRequestError(AdminTopic.SUBMIT, f"no job id in the reply {reply!r}")
        return job_id

    def _signed(self, package: bytes) -> dict[str, str]:
        """This admin's signature of the job as every site will unpack it."""
        assert self.security is not None
        if self.security.identity() is None:
            return {}  # nothing to sign with (a POC)
        with tempfile.TemporaryDirectory(prefix="fl-sign-") as tmp:
            folder = Path(tmp) / "job"
            unpack_job(package, folder)
            return sign_job(self.security, folder, load_job(folder).name)

    def list(self) -> list[dict[str, Any]]:
        """Every job SP knows, oldest first (job records)."""
        jobs = self._json(AdminTopic.LIST, {}).get(Field.JOBS, [])
        return [job for job in jobs if isinstance(job, dict)] if isinstance(jobs, list) else []

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's record: state, round, rounds, reason, sites, times."""
        return self._json(AdminTopic.STATUS, {Field.JOB_ID: job_id})

    def abort(self, job_id: str) -> dict[str, Any]:
        """Abort the job; returns its record once every process of it is gone.

        With a certificate the request is signed, and each site decides with
        its own policy whether its part stops: the record's `refused` lists
        what each site that refused said (see `fl_core.roles.protocol.signed_request`).
        """
        headers = self._signed_request("abort_job", job_id)
        return self._json(AdminTopic.ABORT, {Field.JOB_ID: job_id}, ABORT_TIMEOUT, headers)

    def _signed_request(self, action: str, job_id: str) -> dict[str, str]:
        """This admin's signature of `action` on `job_id`, as headers ({} without a certificate)."""
        if self.security is None or self.security.identity() is None:
            return {}
        return sign_request(self.security, action, job_id)

    def logs(self, job_id: str, which: str = "server") -> str:
        """The tail of the server job's log, or of a site's client job log (`which` = site)."""
        # A site's log is the site's to show: it checks this admin's signed request itself.
        headers = self._signed_request("read_results", job_id) if which != "server" else {}
        data = self._bytes(
            AdminTopic.LOGS, {Field.JOB_ID: job_id, Field.WHICH: which}, headers=headers
        )
        return data.decode("utf-8", errors="replace")

    def download(self, job_id: str, dest: Path) -> Path:
        """Copy the job's server workspace into `dest` (created); returns `dest`.

        File by file, a chunk at a time: a result of many GiB never sits
        whole in memory here or in the server parent.
        """
        dest = Path(dest)
        listing = self._json(AdminTopic.DOWNLOAD, {Field.JOB_ID: job_id}).get(Field.FILES, [])
        if not isinstance(listing, list):
            raise AdminRequestError(AdminTopic.DOWNLOAD, "the server sent no file list")
        dest.mkdir(parents=True, exist_ok=True)
        for entry in listing:
            name = entry.get(Field.PATH) if isinstance(entry, dict) else None
            size = entry.get(Field.SIZE) if isinstance(entry, dict) else None
            if not isinstance(name, str) or not isinstance(size, int) or size < 0:
                raise AdminRequestError(AdminTopic.DOWNLOAD, f"a bad file entry: {entry!r}")
            target = _safe_target(dest, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                offset = 0
                while offset < size:
                    chunk = self._bytes(
                        AdminTopic.READ,
                        {Field.JOB_ID: job_id, Field.PATH: name, Field.OFFSET: offset},
                        TRANSFER_TIMEOUT,
                    )
                    if not chunk:
                        raise AdminRequestError(
                            AdminTopic.READ, f"{name} ended at {offset} of {size} bytes"
                        )
                    out.write(chunk)
                    offset += len(chunk)
        return dest

    # `builtins.list`: inside the class body `list` is the method above.
    def sites(self) -> builtins.list[dict[str, Any]]:
        """The registered sites: `{site, url, last_seen, jobs}` each."""
        sites = self._json(AdminTopic.SITES, {}).get(Field.SITES, [])
        return [site for site in sites if isinstance(site, dict)] if isinstance(sites, list) else []

    def shutdown(self) -> None:
        """Ask SP to stop every job, tell every client parent to exit, and exit."""
        try:
            self._request(AdminTopic.SHUTDOWN, {}, ABORT_TIMEOUT)
        except AdminRequestError as exc:
            # SP may close its links as it exits, before its reply reaches us;
            # only a refusal (SP's own reason) is an error here.
            if isinstance(exc.__cause__, RemoteError):
                raise


def _safe_target(dest: Path, name: str) -> Path:
    """Where a downloaded file `name` goes under `dest`; refuses a path that escapes it."""
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or ".." in path.parts or not path.parts:
        raise UnsafeArchiveError(dest, name, "path escapes the destination")
    return dest.joinpath(*path.parts)

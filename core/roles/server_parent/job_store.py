"""The server parent's job store, and safe job packages.

Every submitted job lives in its own folder under `<server workspace>/jobs`:

    <job_id>/package.zip   the package exactly as submitted (deployed to sites)
    <job_id>/job/          the package unpacked; `load_job` works on it
    <job_id>/workspace/    where the server job writes its results
    <job_id>/job.json      the `JobRecord`, rewritten atomically on every change

Packages are packed and unpacked safely by `fl_core.roles.protocol.job_package`
(its names are re-exported here).
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Final

from fl_core.config._checks import ConfigErrors, is_seconds
from fl_core.config.job import DEFAULT_SCHEDULE_TIMEOUT, JobConfig, load_job
from fl_core.errors import ConfigError, FlCoreError
from fl_core.roles.protocol.job_package import JobPackageError, pack_job, unpack_job
from fl_core.roles.protocol.parent import JobState

log = logging.getLogger(__name__)

_RECORD = "job.json"
_PACKAGE = "package.zip"
_SIGNED = "signed.json"  # the admin's signature headers, passed on to every site
_STAGING = ".incoming-"
_JOB_ID = re.compile(r"[0-9a-f]{12}")
_ACTIVE = (JobState.DEPLOYING, JobState.RUNNING)
_MAX_RETRY = 30.0  # seconds between two tries to write a job's end, at most


class UnknownJobError(FlCoreError):
    """A job id that is not in the store."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"unknown job {job_id!r}")


class CorruptJobRecordError(FlCoreError):
    """A `job.json` that cannot be read back into a `JobRecord`; `source` names it."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: corrupt job record: {problem}")


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)  # bool is an int, but wrong


_Check = tuple[Callable[[object], bool], str]
KEPT_ROUND_TIMES: Final = 256
"""Round durations a record keeps: enough for a follower that polls a few times a second."""
_STR: Final[_Check] = (lambda v: isinstance(v, str), "a string")
_TIME: Final[_Check] = (lambda v: v is None or _number(v), "a time in seconds or null")
_COUNT: Final[_Check] = (lambda v: _number(v) and isinstance(v, int) and v >= 1, "an integer >= 1")
# How from_json checks each key, and what the error says was expected.
_CHECKS: Final[dict[str, _Check]] = {
    "job_id": _STR,
    "name": _STR,
    "state": (lambda v: isinstance(v, str) and v in set(JobState), "one of " + ", ".join(JobState)),
    "submitted": (_number, "a time in seconds"),
    "started": _TIME,
    "ended": _TIME,
    "reason": _STR,
    "submitter": _STR,
    "submitter_org": _STR,
    "min_clients": _COUNT,
    "rounds": _COUNT,
    "sites": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "site names"),
    "round": (lambda v: _number(v) and isinstance(v, int) and v >= 0, "an integer >= 0"),
    "schedule_timeout": (is_seconds, "a number of seconds > 0"),
    "round_seconds": (
        lambda v: isinstance(v, list) and len(v) <= KEPT_ROUND_TIMES and all(map(_number, v)),
        f"a list of at most {KEPT_ROUND_TIMES} durations in seconds",
    ),
}

CORRUPT: Final = "corrupt"
"""The state `job list` shows for a job whose record cannot be read."""


@dataclass
class JobRecord:
    """What the server parent knows about one job; persisted as `job.json`."""

    job_id: str
    name: str
    state: JobState
    submitted: float
    started: float | None = None
    ended: float | None = None
    reason: str = ""
    min_clients: int = 1
    rounds: int = 1
    sites: list[str] = field(default_factory=list)
    round: int = 0
    schedule_timeout: float = DEFAULT_SCHEDULE_TIMEOUT
    """Seconds the job may wait for its sites before it fails (the job config's option)."""
    round_seconds: list[float] = field(default_factory=list)
    """How long each of the last rounds took, oldest first; the last is round `round`."""
    submitter: str = ""
    """Who submitted the job: the admin's certificate name (its cell name without one)."""
    submitter_org: str = ""
    """The submitter's organisation ("" without certificates)."""

    def to_json(self) -> dict[str, object]:
        """The record as plain JSON types; `state` as its string value."""
        data = asdict(self)
        data["state"] = str(self.state)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, source: str = "job record") -> JobRecord:
        """Validate `data` (as written by `to_json`) into a record.

        Raises `CorruptJobRecordError` naming `source` on the first bad value.
        Unknown keys are ignored so that a newer server's records still load.
        """
        if not isinstance(data, Mapping):
            raise CorruptJobRecordError(source, f"expected a JSON object, got {data!r}")
        missing = [k for k in ("job_id", "name", "state", "submitted") if k not in data]
        if missing:
            raise CorruptJobRecordError(source, f"missing {', '.join(map(repr, missing))}")
        values: dict[str, object] = {}
        for key, (valid, expected) in _CHECKS.items():
            if key in data:
                if not valid(data[key]):
                    raise CorruptJobRecordError(
                        source, f"{key!r}: expected {expected}, got {data[key]!r}"
                    )
                values[key] = data[key]
        values["state"] = JobState(str(values["state"]))
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CorruptJob:
    """A job folder whose `job.json` cannot be read: listed, so the job does not vanish."""

    job_id: str
    reason: str
    submitted: float
    """When the folder last changed; only to sort it among the others."""

    def to_json(self) -> dict[str, object]:
        """The shape of a record's JSON, with state `corrupt` and the problem as reason."""
        return {
            "job_id": self.job_id,
            "name": "?",
            "state": CORRUPT,
            "submitted": self.submitted,
            "reason": self.reason,
        }


JobCheck = Callable[[JobConfig], None]
JobVerify = Callable[[Path, JobConfig], dict[str, str]]
"""`verify(unpacked job folder, its config) -> signature headers to keep`; raises to refuse."""
"""What a store runs on a job's config before it accepts the job; raises to refuse it."""


class JobStore:
    """Every submitted job, on disk under `root`, so a restarted server knows them all."""

    def __init__(self, root: Path) -> None:
        """Open (or create) the store at `root`, i.e. `<server workspace>/jobs`."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # One lock serialises every read-modify-write of a record.
        self._lock = threading.Lock()
        # The problem last logged per corrupt record: the scheduler lists every second,
        # and a warning is worth one line per record (again only if the problem changes).
        self._warned: dict[str, str] = {}
        self._warn_lock = threading.Lock()
        # A submit interrupted by a crash leaves only its staging folder; no job refers to it.
        for stale in self.root.glob(_STAGING + "*"):
            shutil.rmtree(stale, ignore_errors=True)

    def submit(
        self,
        package: bytes,
        check: JobCheck | None = None,
        *,
        submitter: str = "",
        submitter_org: str = "",
        verify: JobVerify | None = None,
    ) -> JobRecord:
        """Validate, unpack and store a job package; return its record (SUBMITTED).

        `check` runs on the job's config (the checks of `fl-core job check`
        against what the server has installed). Raises `JobPackageError`
        ("job package: <problem>") and leaves nothing on disk if the package is
        unsafe, its `job.yaml` is invalid or `check` refuses it.
        """
        job_id = uuid.uuid4().hex[:12]
        # Built in a hidden staging folder and renamed into place in one step, so a
        # failure (or a crash) never leaves a half-stored job that list() would see.
        staging = self.root / f"{_STAGING}{job_id}"
        try:
            unpack_job(package, staging / "job")
            job_dir = (staging / "job").resolve()
            try:
                config = load_job(job_dir)
                signed = verify(job_dir, config) if verify is not None else {}
                if check is not None:
                    check(config)
            except ConfigError as exc:
                raise JobPackageError(f"job package: {_relative(exc, job_dir)}") from exc
            except FlCoreError as exc:
                raise JobPackageError(f"job package: {exc}") from exc
            (staging / "workspace").mkdir()
            (staging / _PACKAGE).write_bytes(package)
            (staging / _SIGNED).write_text(json.dumps(signed))
            record = JobRecord(
                job_id=job_id,
                name=config.name,
                state=JobState.SUBMITTED,
                submitted=time.time(),
                min_clients=config.min_clients,
                rounds=config.rounds,
                schedule_timeout=config.schedule_timeout,
                submitter=submitter,
                submitter_org=submitter_org,
            )
            _write_record(staging / _RECORD, record)
            os.replace(staging, self.root / job_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def get(self, job_id: str) -> JobRecord:
        """The record of `job_id`; `UnknownJobError` if there is none.

        A record that cannot be read, or that names another job, is a
        `CorruptJobRecordError`.
        """
        path = self._dir(job_id) / _RECORD
        record = _read_record(path)
        if record.job_id != job_id:
            raise CorruptJobRecordError(
                str(path), f"its job_id {record.job_id!r} is not its folder's"
            )
        return record

    def list(self) -> list[JobRecord]:
        """Every readable record, oldest submitted first; corrupt ones are skipped."""
        return [r for r in self.entries() if isinstance(r, JobRecord)]

    def entries(self) -> builtins.list[JobRecord | CorruptJob]:
        """Every job folder's record, or a `CorruptJob` saying why it cannot be read.

        Oldest first. Each corrupt record is logged once (again if its problem changes).
        """
        found: builtins.list[JobRecord | CorruptJob] = []
        for folder in self._job_dirs():
            try:
                record = _read_record(folder / _RECORD)
                if record.job_id != folder.name:
                    raise CorruptJobRecordError(
                        str(folder / _RECORD), f"its job_id {record.job_id!r} is not its folder's"
                    )
                found.append(record)
                with self._warn_lock:
                    self._warned.pop(folder.name, None)
            except CorruptJobRecordError as exc:
                try:
                    changed = folder.stat().st_mtime
                except OSError:
                    changed = 0.0
                found.append(CorruptJob(folder.name, str(exc), changed))
                # The scheduler and admins list at once: one of them warns.
                with self._warn_lock:
                    first = self._warned.get(folder.name) != str(exc)
                    self._warned[folder.name] = str(exc)
                if first:
                    log.warning("job %s is listed as corrupt: %s", folder.name, exc)
        return sorted(found, key=lambda r: (r.submitted, r.job_id))

    def update(self, job_id: str, /, **changes: object) -> JobRecord:
        """Change fields of a record, atomically and under the store's lock; return it.

        `job_id` cannot change; an unknown field name is a `TypeError`, a bad value a
        `CorruptJobRecordError` (and nothing is written).
        """
        return self._update(job_id, None, changes)

    def update_if(
        self, job_id: str, states: Collection[JobState], /, **changes: object
    ) -> JobRecord:
        """`update`, but only while the record's state is in `states` (checked under the lock).

        Otherwise the record is returned as it is: its job moved on meanwhile.
        """
        return self._update(job_id, states, changes)

    def _update(
        self, job_id: str, only_if: Collection[JobState] | None, changes: Mapping[str, object]
    ) -> JobRecord:
        allowed = {f.name for f in fields(JobRecord)} - {"job_id"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise TypeError(f"JobRecord has no field(s) {', '.join(unknown)} to update")
        path = self._dir(job_id) / _RECORD
        with self._lock:
            current = _read_record(path)
            if only_if is not None and current.state not in only_if:
                return current
            # Through JSON and back, so an update is validated exactly like a stored record.
            data = {**current.to_json(), **changes}
            record = JobRecord.from_json(data, source=f"update of job {job_id}")
            _write_record(path, record)
        return record

    def write_end(self, job_id: str, changes: Mapping[str, object], stop: threading.Event) -> bool:
        """Write a job's end; while the disk refuses (ENOSPC...), retry with backoff.

        Gives up only when `stop` is set (the server parent stops; at its next
        start `recover` fails the job). True once written.
        """
        delay = 0.5
        while True:
            try:
                self._update(job_id, None, changes)
                return True
            except OSError as exc:
                log.warning(
                    "job %s: could not record its end (%s); retrying in %g s", job_id, exc, delay
                )
            if stop.wait(delay):
                log.error("job %s: its end was never recorded: %s", job_id, dict(changes))
                return False
            delay = min(delay * 2, _MAX_RETRY)

    def settle(self, record: JobRecord, reason: str) -> JobRecord:
        """Fail a deploying/running `record` whose processes are gone, with `reason`.

        Only if it is still active on disk (its end may have been written since
        it was read). If the disk refuses, the failed record is returned
        anyway, saying so, so that nothing is shown as running that is not.
        """
        try:
            return self.update_if(
                record.job_id, _ACTIVE, state=JobState.FAILED, reason=reason, ended=time.time()
            )
        except OSError as exc:
            return replace(
                record,
                state=JobState.FAILED,
                reason=f"{reason} (not written yet: {exc.strerror or exc})",
            )

    def job_dir(self, job_id: str) -> Path:
        """The unpacked job folder of `job_id`."""
        return self._dir(job_id) / "job"

    def workspace(self, job_id: str) -> Path:
        """The folder where the server job of `job_id` writes its results."""
        return self._dir(job_id) / "workspace"

    def package(self, job_id: str) -> bytes:
        """The package of `job_id` exactly as submitted, to deploy to sites."""
        return (self._dir(job_id) / _PACKAGE).read_bytes()

    def signed(self, job_id: str) -> dict[str, str]:
        """The headers with the admin's signature of `job_id` ({} if it was not signed)."""
        try:
            data = json.loads((self._dir(job_id) / _SIGNED).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def recover(self) -> builtins.list[JobRecord]:
        """Fail every job that was deploying or running when the server parent stopped.

        Called once at server-parent start, before any job process exists, so
        no such job can still be alive. SUBMITTED jobs stay queued. Returns the
        records it changed.
        """
        why = "the server parent stopped while the job was {}"
        changed = []
        for r in self.list():
            if r.state in _ACTIVE:
                reason = why.format(r.state)
                try:
                    changed.append(
                        self.update_if(
                            r.job_id,
                            _ACTIVE,
                            state=JobState.FAILED,
                            reason=reason,
                            ended=time.time(),
                        )
                    )
                except OSError as exc:
                    # A full disk must not keep the server from starting; the record
                    # is shown as failed anyway and written at its next status query.
                    log.warning(
                        "job %s: could not record its failure (%s): %s", r.job_id, exc, reason
                    )
        return changed

    def _dir(self, job_id: str) -> Path:
        # Ids come from admins over the network: only our own id shape may touch the disk.
        folder = self.root / job_id
        if not _JOB_ID.fullmatch(job_id) or not folder.is_dir():
            raise UnknownJobError(job_id)
        return folder

    def _job_dirs(self) -> Iterator[Path]:
        for folder in self.root.iterdir():
            if _JOB_ID.fullmatch(folder.name) and folder.is_dir():
                yield folder


def _relative(exc: ConfigError, job_dir: Path) -> str:
    """The ConfigError text with the server's staging path cut to a path inside the package."""
    if isinstance(exc, ConfigErrors):
        return "\n".join(_relative(one, job_dir) for one in exc.errors)
    try:
        rel = Path(exc.source).relative_to(job_dir).as_posix()
    except ValueError:
        rel = exc.source
    where = ": ".join(part for part in (rel if rel != "." else "", exc.key) if part)
    return f"{where}: {exc.problem}" if where else exc.problem


def _read_record(path: Path) -> JobRecord:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CorruptJobRecordError(str(path), "the file is missing") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptJobRecordError(str(path), str(exc)) from exc
    return JobRecord.from_json(data, source=str(path))


def _write_record(path: Path, record: JobRecord) -> None:
    # Write-then-rename: a reader (or a crash) sees the old record or the new one, never half.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(record.to_json(), out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


__all__ = [
    "CorruptJob",
    "CorruptJobRecordError",
    "JobPackageError",
    "JobRecord",
    "JobStore",
    "UnknownJobError",
    "pack_job",
    "unpack_job",
]

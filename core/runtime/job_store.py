"""The server parent's job store, and safe job packages.

Every submitted job lives in its own folder under `<server workspace>/jobs`:

    <job_id>/package.zip   the package exactly as submitted (deployed to sites)
    <job_id>/job/          the package unpacked; `load_job` works on it
    <job_id>/workspace/    where the server job writes its results
    <job_id>/job.json      the `JobRecord`, rewritten atomically on every change

A package is a zip that a remote admin sent, so `unpack_job` trusts nothing
in it: not its names, not its declared sizes, not its entry types.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Final

from fl_core.config.job import load_job
from fl_core.errors import ConfigError, FlCoreError
from fl_core.runtime.parents import MAX_JOB_FILES, MAX_JOB_PACKAGE, JobState

log = logging.getLogger(__name__)

_RECORD = "job.json"
_PACKAGE = "package.zip"
_STAGING = ".incoming-"
_JOB_ID = re.compile(r"[0-9a-f]{12}")
_DRIVE = re.compile(r"[A-Za-z]:")
_CHUNK = 1024 * 1024
# Fixed timestamps make a package's bytes depend only on the folder's content.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_ACTIVE = (JobState.DEPLOYING, JobState.RUNNING)


class JobPackageError(FlCoreError):
    """A package that is not a valid job; the message says what and where."""


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
    "min_clients": _COUNT,
    "rounds": _COUNT,
    "sites": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "site names"),
    "round": (lambda v: _number(v) and isinstance(v, int) and v >= 0, "an integer >= 0"),
    "round_seconds": (
        lambda v: isinstance(v, list) and len(v) <= KEPT_ROUND_TIMES and all(map(_number, v)),
        f"a list of at most {KEPT_ROUND_TIMES} durations in seconds",
    ),
}


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
    round_seconds: list[float] = field(default_factory=list)
    """How long each of the last rounds took, oldest first; the last is round `round`."""

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


class JobStore:
    """Every submitted job, on disk under `root`, so a restarted server knows them all."""

    def __init__(self, root: Path) -> None:
        """Open (or create) the store at `root`, i.e. `<server workspace>/jobs`."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # One lock serialises every read-modify-write of a record.
        self._lock = threading.Lock()
        # A submit interrupted by a crash leaves only its staging folder; no job refers to it.
        for stale in self.root.glob(_STAGING + "*"):
            shutil.rmtree(stale, ignore_errors=True)

    def submit(self, package: bytes) -> JobRecord:
        """Validate, unpack and store a job package; return its record (SUBMITTED).

        Raises `JobPackageError` ("job package: <problem>") and leaves nothing on
        disk if the package is unsafe or its `job.yaml` is invalid.
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
            except ConfigError as exc:
                raise JobPackageError(f"job package: {_relative(exc, job_dir)}") from exc
            (staging / "workspace").mkdir()
            (staging / _PACKAGE).write_bytes(package)
            record = JobRecord(
                job_id=job_id,
                name=config.name,
                state=JobState.SUBMITTED,
                submitted=time.time(),
                min_clients=config.min_clients,
                rounds=config.rounds,
            )
            _write_record(staging / _RECORD, record)
            os.replace(staging, self.root / job_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def get(self, job_id: str) -> JobRecord:
        """The record of `job_id`; `UnknownJobError` if there is none."""
        return _read_record(self._dir(job_id) / _RECORD)

    def list(self) -> list[JobRecord]:
        """Every readable record, oldest submitted first; corrupt ones are logged and skipped."""
        records = []
        for folder in self._job_dirs():
            try:
                records.append(_read_record(folder / _RECORD))
            except CorruptJobRecordError as exc:
                log.warning("skipping job %s: %s", folder.name, exc)
        return sorted(records, key=lambda r: (r.submitted, r.job_id))

    def update(self, job_id: str, **changes: object) -> JobRecord:
        """Change fields of a record, atomically and under the store's lock; return it.

        `job_id` cannot change; an unknown field name is a `TypeError`, a bad
        value a `CorruptJobRecordError` (and nothing is written).
        """
        allowed = {f.name for f in fields(JobRecord)} - {"job_id"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise TypeError(f"JobRecord has no field(s) {', '.join(unknown)} to update")
        path = self._dir(job_id) / _RECORD
        with self._lock:
            current = _read_record(path)
            # Through JSON and back, so an update is validated exactly like a stored record.
            data = {**current.to_json(), **changes}
            record = JobRecord.from_json(data, source=f"update of job {job_id}")
            _write_record(path, record)
        return record

    def job_dir(self, job_id: str) -> Path:
        """The unpacked job folder of `job_id`."""
        return self._dir(job_id) / "job"

    def workspace(self, job_id: str) -> Path:
        """The folder where the server job of `job_id` writes its results."""
        return self._dir(job_id) / "workspace"

    def package(self, job_id: str) -> bytes:
        """The package of `job_id` exactly as submitted, to deploy to sites."""
        return (self._dir(job_id) / _PACKAGE).read_bytes()

    def recover(self) -> builtins.list[JobRecord]:
        """Fail every job that was deploying or running when the server parent stopped.

        Called once at server-parent start, before any job process exists, so
        no such job can still be alive. SUBMITTED jobs stay queued. Returns the
        records it changed.
        """
        why = "the server parent stopped while the job was {}"
        return [
            self.update(
                r.job_id, state=JobState.FAILED, reason=why.format(r.state), ended=time.time()
            )
            for r in self.list()
            if r.state in _ACTIVE
        ]

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


# --- packages ----------------------------------------------------------------


def pack_job(job_dir: Path) -> bytes:
    """Zip a job folder for submission.

    Skips `__pycache__`, `.pyc` files and hidden folders such as `.git`.
    Symlinks inside the folder are stored as the files they point to. Raises
    `JobPackageError` for a folder without `job.yaml`, a symlink that points
    outside the folder (or nowhere, or round in a loop), or a package over
    `MAX_JOB_PACKAGE` bytes or `MAX_JOB_FILES` files.
    """
    top = Path(job_dir).resolve()
    if not (top / "job.yaml").is_file():
        raise JobPackageError(f"job package: no job.yaml in {top}")
    entries: list[tuple[str, Path]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = Path(dirpath)
        for name in list(dirnames):
            link = here / name
            if name == "__pycache__" or name.startswith("."):
                dirnames.remove(name)
            elif link.is_symlink():
                target = _inside(top, link)
                # A link back to a folder already on the walk's path would go round forever.
                rel = here.relative_to(top).parts
                if target in {top.joinpath(*rel[:i]).resolve() for i in range(len(rel) + 1)}:
                    raise JobPackageError(f"job package: symlink {link} makes a loop")
        for name in sorted(filenames):
            path = here / name
            if name.endswith(".pyc"):
                continue
            target = _inside(top, path) if path.is_symlink() else path
            if not target.is_file():
                raise JobPackageError(f"job package: {path} is not a regular file")
            entries.append((path.relative_to(top).as_posix(), target))
            total += target.stat().st_size
            if len(entries) > MAX_JOB_FILES:
                raise JobPackageError(f"job package: more than {MAX_JOB_FILES} files in {top}")
            if total > MAX_JOB_PACKAGE:
                raise JobPackageError(
                    f"job package: the files in {top} exceed {MAX_JOB_PACKAGE} bytes"
                )
    package = _zip(sorted(entries))
    if len(package) > MAX_JOB_PACKAGE:
        raise JobPackageError(f"job package: the zip exceeds {MAX_JOB_PACKAGE} bytes")
    return package


def _inside(top: Path, link: Path) -> Path:
    target = link.resolve()
    if not target.is_relative_to(top):
        raise JobPackageError(f"job package: symlink {link} points outside {top}, to {target}")
    if not target.exists():
        raise JobPackageError(f"job package: symlink {link} points to nothing")
    return target


def _zip(entries: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in entries:
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            # Streamed, so a large file is never held twice in memory.
            with open(path, "rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return buffer.getvalue()


def unpack_job(package: bytes, dest: Path) -> None:
    """Unzip a job package into `dest`, which must not exist yet, refusing anything unsafe.

    Refused with `JobPackageError` (naming the problem and the entry): a
    package or content over `MAX_JOB_PACKAGE` bytes (by the declared sizes
    and by the bytes actually inflated), over `MAX_JOB_FILES` entries,
    absolute or drive-letter paths, `..` components, backslashes or NULs in
    names, symlink entries, duplicate names, encrypted entries, and anything
    that is not a zip. On failure `dest` is removed. An existing `dest` is a
    `FileExistsError` (and is left alone).
    """
    dest = Path(dest)
    if len(package) > MAX_JOB_PACKAGE:
        raise JobPackageError(
            f"job package: {len(package)} bytes, over the limit of {MAX_JOB_PACKAGE}"
        )
    dest.mkdir(parents=True)
    try:
        _extract(package, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract(package: bytes, dest: Path) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(package))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise JobPackageError(f"job package: not a zip file ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_JOB_FILES:
            raise JobPackageError(
                f"job package: {len(infos)} entries, over the limit of {MAX_JOB_FILES}"
            )
        members = _check_entries(infos)
        declared = sum(info.file_size for info, _ in members)
        if declared > MAX_JOB_PACKAGE:
            raise JobPackageError(
                f"job package: {declared} bytes unpacked, over the limit of {MAX_JOB_PACKAGE}"
            )
        inflated = 0
        for info, parts in members:
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                # "xb": dest is fresh and holds only what we made, so nothing may pre-exist.
                with archive.open(info) as src, open(target, "xb") as out:
                    # Count what actually inflates: the declared sizes are the attacker's word.
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        inflated += len(chunk)
                        if written > info.file_size or inflated > MAX_JOB_PACKAGE:
                            raise JobPackageError(
                                f"job package: entry {info.filename!r} inflates past its "
                                f"declared {info.file_size} bytes or the {MAX_JOB_PACKAGE} limit"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                raise JobPackageError(
                    f"job package: entry {info.filename!r} cannot be unpacked: {exc}"
                ) from None


def _check_entries(infos: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Each entry with its safe relative path parts; the first unsafe entry raises."""
    members = []
    seen: set[tuple[str, ...]] = set()
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for info in infos:
        name = info.filename

        def bad(problem: str, name: str = info.orig_filename) -> JobPackageError:
            return JobPackageError(f"job package: entry {name!r}: {problem}")

        # zipfile cuts names at a NUL; orig_filename still has it.
        if "\x00" in info.orig_filename or "\\" in name:
            raise bad("NUL or backslash in the name")
        if name.startswith("/") or _DRIVE.match(name):
            raise bad("absolute path")
        raw = PurePosixPath(name).parts
        if ".." in raw:
            raise bad("'..' in the path")
        parts = tuple(p for p in raw if p != ".")
        if not parts:
            raise bad("empty name")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise bad("symlink entries are not allowed")
        if info.flag_bits & 0x1:
            raise bad("encrypted entries are not allowed")
        if parts in seen:
            raise bad("duplicate name")
        seen.add(parts)
        if any(parts[:i] in files for i in range(1, len(parts))) or (
            parts in dirs and not info.is_dir()
        ):
            raise bad("a file of the package is also used as a folder")
        (dirs if info.is_dir() else files).add(parts)
        dirs.update(parts[:i] for i in range(1, len(parts)))
        members.append((info, parts))
    return members

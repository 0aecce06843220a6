"""Job packages: the zip an admin submits, packed and unpacked safely.

A package is a zip that a remote admin sent, so `unpack_job` trusts nothing
in it: not its names, not its declared sizes, not its entry types.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from fl_core.errors import FlCoreError
from fl_core.roles.protocol.parent import MAX_JOB_FILES, MAX_JOB_PACKAGE

_DRIVE = re.compile(r"[A-Za-z]:")
_CHUNK = 1024 * 1024
# Fixed timestamps make a package's bytes depend only on the folder's content.
_EPOCH = (1980, 1, 1, 0, 0, 0)

__all__ = ["MAX_JOB_FILES", "MAX_JOB_PACKAGE", "JobPackageError", "pack_job", "unpack_job"]


class JobPackageError(FlCoreError):
    """A package that is not a valid job; the message says what and where."""


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

"""The server parent's job store: jobs survive restarts, hostile packages leave no trace."""

from __future__ import annotations

import io
import json
import logging
import stat
import struct
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from fl_core.config.job import load_job
from fl_core.errors import ConfigError, FlCoreError
from fl_core.roles.protocol import job_package
from fl_core.roles.protocol.parent import JobState
from fl_core.roles.server_parent.job_store import (
    CorruptJobRecordError,
    JobPackageError,
    JobRecord,
    JobStore,
    UnknownJobError,
    pack_job,
    unpack_job,
)

HELLO = Path(__file__).resolve().parents[3] / "examples" / "hello-numpy"
JOB_YAML = (HELLO / "job.yaml").read_bytes()
TRAIN_PY = (HELLO / "train.py").read_bytes()


def make_zip(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def valid_entries() -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    model = (HELLO / "initial_model.npz").read_bytes()
    return [("job.yaml", JOB_YAML), ("train.py", TRAIN_PY), ("initial_model.npz", model)]


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs")


def contents(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# --- round trip and restart ---------------------------------------------------


def test_a_packed_example_submits_and_its_job_folder_loads(store: JobStore) -> None:
    package = pack_job(HELLO)
    record = store.submit(package)

    assert record.state is JobState.SUBMITTED
    assert (record.name, record.min_clients, record.rounds) == ("hello-numpy", 2, 5)
    assert len(record.job_id) == 12
    config = load_job(store.job_dir(record.job_id))
    assert config.name == "hello-numpy"
    assert config.initial_model is not None and config.initial_model.is_file()
    assert store.package(record.job_id) == package
    assert store.workspace(record.job_id).is_dir()
    assert store.get(record.job_id) == record


def test_records_survive_a_new_store_on_the_same_root(tmp_path: Path) -> None:
    first = JobStore(tmp_path / "jobs")
    a = first.submit(pack_job(HELLO))
    b = first.submit(pack_job(HELLO))
    b = first.update(b.job_id, state=JobState.RUNNING, started=123.0, sites=["site-1"], round=2)

    again = JobStore(tmp_path / "jobs")
    assert again.list() == [a, b]
    assert again.get(b.job_id).state is JobState.RUNNING
    assert again.get(b.job_id).sites == ["site-1"]


def test_recover_fails_running_and_deploying_jobs_and_keeps_the_queue(tmp_path: Path) -> None:
    first = JobStore(tmp_path / "jobs")
    ids = {}
    for state in (JobState.SUBMITTED, JobState.DEPLOYING, JobState.RUNNING, JobState.FINISHED):
        ids[state] = first.update(first.submit(pack_job(HELLO)).job_id, state=state).job_id

    again = JobStore(tmp_path / "jobs")
    changed = again.recover()

    assert sorted(r.job_id for r in changed) == sorted([ids["deploying"], ids["running"]])
    for state in (JobState.DEPLOYING, JobState.RUNNING):
        record = again.get(ids[state])
        assert record.state is JobState.FAILED
        assert record.reason == f"the server parent stopped while the job was {state}"
        assert record.ended is not None
    assert again.get(ids[JobState.SUBMITTED]).state is JobState.SUBMITTED
    assert again.get(ids[JobState.FINISHED]).state is JobState.FINISHED
    assert again.recover() == []


def test_list_is_oldest_first(store: JobStore) -> None:
    ids = [store.submit(pack_job(HELLO)).job_id for _ in range(3)]
    store.update(ids[0], submitted=3e9)
    assert [r.job_id for r in store.list()] == [ids[1], ids[2], ids[0]]


# --- unknown and corrupt records ----------------------------------------------


@pytest.mark.parametrize("job_id", ["0123456789ab", "nope", "../../etc", ""])
def test_an_unknown_job_is_named_and_nothing_else(store: JobStore, job_id: str) -> None:
    store.submit(pack_job(HELLO))
    for call in (store.get, store.job_dir, store.workspace, store.package):
        with pytest.raises(UnknownJobError) as info:
            call(job_id)
        assert str(info.value) == f"unknown job {job_id!r}"


def test_a_corrupt_record_is_skipped_by_list_and_named_by_get(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    good = store.submit(pack_job(HELLO))
    bad = store.submit(pack_job(HELLO))
    broken = store.root / bad.job_id / "job.json"
    broken.write_text('{"job_id": "x", "name": ')

    with caplog.at_level(logging.WARNING, logger="fl_core.roles.server_parent.job_store"):
        assert store.list() == [good]
    assert bad.job_id in caplog.text
    with pytest.raises(CorruptJobRecordError, match="corrupt job record") as info:
        store.get(bad.job_id)
    assert str(broken) in str(info.value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"state": "exploded"}, "'state'"),
        ({"state": []}, "'state'"),
        ({"started": "now"}, "'started'"),
        ({"submitted": "yesterday"}, "'submitted'"),
        ({"round": -1}, "'round'"),
        ({"sites": "site-1"}, "'sites'"),
        ({"min_clients": True}, "'min_clients'"),
    ],
)
def test_from_json_names_the_file_and_the_bad_key(change: dict[str, object], problem: str) -> None:
    data = {**JobRecord("a" * 12, "j", JobState.SUBMITTED, 1.0).to_json(), **change}
    with pytest.raises(FlCoreError, match=f"^/x/job.json: corrupt job record: {problem}"):
        JobRecord.from_json(data, source="/x/job.json")


def test_to_json_is_plain_json_and_round_trips() -> None:
    record = JobRecord("a" * 12, "j", JobState.RUNNING, 1.5, started=2.0, sites=["s1", "s2"])
    data = json.loads(json.dumps(record.to_json()))
    assert data["state"] == "running"
    assert JobRecord.from_json(data) == record


def test_update_refuses_unknown_fields_and_bad_values_without_writing(store: JobStore) -> None:
    record = store.submit(pack_job(HELLO))
    with pytest.raises(TypeError, match="colour"):
        store.update(record.job_id, colour="red")
    with pytest.raises(TypeError, match="job_id"):
        store.update(record.job_id, job_id="b" * 12)
    with pytest.raises(FlCoreError, match="'round'"):
        store.update(record.job_id, round="three")
    assert store.get(record.job_id) == record


def test_concurrent_updates_leave_a_valid_record(store: JobStore) -> None:
    job_id = store.submit(pack_job(HELLO)).job_id
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                store.update(job_id, round=n * 100 + i, sites=[f"site-{n}"] * (i % 5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    record = store.get(job_id)
    assert record.round % 100 == 39
    assert contents(store.root / job_id).count("job.json") == 1
    assert not list((store.root / job_id).glob("*.tmp"))


# --- bad packages -------------------------------------------------------------


def test_a_bad_job_yaml_is_refused_with_the_config_error_text(
    store: JobStore, tmp_path: Path
) -> None:
    bad_yaml = JOB_YAML.replace(b"rounds: 5", b"rounds: 0")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.yaml").write_bytes(bad_yaml)
    (folder / "train.py").write_bytes(TRAIN_PY)
    (folder / "initial_model.npz").write_bytes((HELLO / "initial_model.npz").read_bytes())
    with pytest.raises(ConfigError) as config_error:
        load_job(folder)

    with pytest.raises(JobPackageError) as info:
        store.submit(pack_job(folder))
    assert str(info.value) == f"job package: job.yaml: rounds: {config_error.value.problem}"
    assert contents(store.root) == []


def test_a_package_without_job_yaml_is_refused(store: JobStore) -> None:
    with pytest.raises(JobPackageError, match=r"^job package: no job\.yaml in the job folder"):
        store.submit(make_zip(("train.py", TRAIN_PY)))
    assert contents(store.root) == []


def symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("job.yaml")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def patched_sizes(package: bytes, name: str, size: int) -> bytes:
    """Make the headers of entry `name` claim `size` uncompressed bytes (a lying zip bomb)."""
    data = bytearray(package)
    local = zipfile.ZipFile(io.BytesIO(package)).getinfo(name).header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, local + 22, size)
    # Walk the central directory to the entry's record there.
    offset = struct.unpack_from("<I", data, len(data) - 22 + 16)[0]
    while data[offset : offset + 4] == b"PK\x01\x02":
        lengths = struct.unpack_from("<HHH", data, offset + 28)
        if data[offset + 46 : offset + 46 + lengths[0]] == name.encode():
            struct.pack_into("<I", data, offset + 24, size)
            return bytes(data)
        offset += 46 + sum(lengths)
    raise AssertionError(f"no central directory record for {name}")


def zeros_bomb(mib: int) -> bytes:
    # Streamed, so neither the test nor the zip ever holds the 300 MiB.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("job.yaml", JOB_YAML)
        with archive.open("zeros.bin", "w", force_zip64=True) as out:
            chunk = bytes(1 << 20)
            for _ in range(mib):
                out.write(chunk)
    return buffer.getvalue()


def nul_name() -> bytes:
    package = make_zip(*valid_entries(), ("aXb.py", b"x"))
    return package.replace(b"aXb.py", b"a\x00b.py")


HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "not a zip": (lambda: b"this is not a zip at all", "not a zip file"),
    "truncated zip": (lambda: make_zip(*valid_entries())[:-30], "not a zip file"),
    "dotdot": (lambda: make_zip(*valid_entries(), ("../evil.py", b"x")), "'../evil.py': '..'"),
    "nested dotdot": (lambda: make_zip(("a/../../evil", b"x")), "'a/../../evil': '..'"),
    "absolute": (lambda: make_zip(*valid_entries(), ("/tmp/evil.py", b"x")), "absolute path"),
    "drive letter": (lambda: make_zip(("C:/evil.py", b"x")), "'C:/evil.py': absolute path"),
    "backslash": (lambda: make_zip(("..\\evil.py", b"x")), "backslash"),
    "nul": (nul_name, "NUL"),
    "symlink": (lambda: make_zip((symlink_entry(), b"/etc/passwd")), "'job.yaml': symlink"),
    "duplicate": (
        lambda: make_zip(*valid_entries(), ("job.yaml", b"name: other")),
        "'job.yaml': duplicate name",
    ),
    "file as folder": (
        lambda: make_zip(*valid_entries(), ("train.py/x", b"x")),
        "'train.py/x': a file of the package is also used as a folder",
    ),
    "declared bomb": (lambda: zeros_bomb(300), "unpacked, over the limit"),
    "lying bomb": (
        lambda: patched_sizes(
            make_zip(*valid_entries(), ("zeros.bin", bytes(8 << 20))), "zeros.bin", 1000
        ),
        "'zeros.bin' cannot be unpacked",
    ),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_package_is_refused_and_leaves_nothing(store: JobStore, case: str) -> None:
    build, problem = HOSTILE[case]
    package = build()
    with pytest.raises(JobPackageError, match=r"^job package: ") as info:
        store.submit(package)
    assert problem in str(info.value)
    assert contents(store.root) == []


def test_unpack_removes_its_destination_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    # The bad entry comes last, so good files were already written when it is found.
    package = patched_sizes(
        make_zip(*valid_entries(), ("zeros.bin", bytes(1 << 20))), "zeros.bin", 10
    )
    with pytest.raises(JobPackageError, match=r"'zeros\.bin' cannot be unpacked"):
        unpack_job(package, dest)
    assert not dest.exists()


def test_unpack_refuses_an_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        unpack_job(make_zip(*valid_entries()), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_limits_on_package_size_and_entry_count(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = make_zip(*valid_entries())
    monkeypatch.setattr(job_package, "MAX_JOB_FILES", 2)
    with pytest.raises(JobPackageError, match="3 entries, over the limit of 2"):
        store.submit(package)
    monkeypatch.setattr(job_package, "MAX_JOB_PACKAGE", 100)
    with pytest.raises(JobPackageError, match=f"{len(package)} bytes, over the limit of 100"):
        store.submit(package)
    assert contents(store.root) == []


# --- packing ------------------------------------------------------------------


def job_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    (folder / "pkg" / "__pycache__").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "job.yaml").write_bytes(JOB_YAML)
    (folder / "train.py").write_bytes(TRAIN_PY)
    (folder / "initial_model.npz").write_bytes((HELLO / "initial_model.npz").read_bytes())
    (folder / "pkg" / "util.py").write_text("X = 1\n")
    (folder / "pkg" / "util.pyc").write_bytes(b"\0")
    (folder / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    (folder / ".git" / "HEAD").write_text("ref: main\n")
    return folder


def names(package: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(io.BytesIO(package)).namelist())


def test_pack_skips_caches_and_hidden_folders(tmp_path: Path) -> None:
    package = pack_job(job_folder(tmp_path))
    assert names(package) == ["initial_model.npz", "job.yaml", "pkg/util.py", "train.py"]
    assert pack_job(tmp_path / "job") == package  # same folder, same bytes


def test_pack_stores_a_symlink_inside_as_its_file(tmp_path: Path) -> None:
    folder = job_folder(tmp_path)
    (folder / "alias.py").symlink_to("pkg/util.py")
    (folder / "lib").symlink_to("pkg", target_is_directory=True)
    package = pack_job(folder)
    assert {"alias.py", "lib/util.py"} <= set(names(package))
    assert zipfile.ZipFile(io.BytesIO(package)).read("alias.py") == b"X = 1\n"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda f, out: (f / "secret").symlink_to(out), "points outside"),
        (lambda f, out: (f / "gone").symlink_to(f / "missing"), "points to nothing"),
        (lambda f, out: (f / "pkg" / "up").symlink_to(f), "makes a loop"),
        (lambda f, out: (f / "job.yaml").unlink(), "no job.yaml"),
    ],
)
def test_pack_refuses(tmp_path: Path, make: Callable[[Path, Path], None], problem: str) -> None:
    folder = job_folder(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    make(folder, outside)
    with pytest.raises(JobPackageError, match=problem):
        pack_job(folder)


def test_pack_refuses_too_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_package, "MAX_JOB_FILES", 3)
    with pytest.raises(JobPackageError, match="more than 3 files"):
        pack_job(job_folder(tmp_path))


def test_a_crashed_submit_leaves_nothing_a_new_store_keeps(tmp_path: Path) -> None:
    (tmp_path / "jobs" / ".incoming-0123456789ab" / "job").mkdir(parents=True)
    store = JobStore(tmp_path / "jobs")
    assert contents(store.root) == []
    assert store.list() == []

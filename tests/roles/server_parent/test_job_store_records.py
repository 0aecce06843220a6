"""Job records that cannot be read or written: listed as corrupt, never lost; a full disk."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_core.errors import ConfigError
from fl_core.roles.protocol.parent import JobState
from fl_core.roles.server_parent.job_store import (
    CorruptJob,
    CorruptJobRecordError,
    JobPackageError,
    JobRecord,
    JobStore,
    pack_job,
)

HELLO = Path(__file__).resolve().parents[3] / "examples" / "hello-numpy"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"job_id": "x", "name": ', "Expecting value"),
        ('{"job_id": "ID", "name": "n", "state": "exploded", "submitted": 1}', "'state'"),
        (
            '{"job_id": "000000000000", "name": "n", "state": "finished", "submitted": 1}',
            "its job_id '000000000000' is not its folder's",
        ),
    ],
    ids=["truncated", "bad state", "other id"],
)
def test_a_corrupt_record_is_listed_as_corrupt_once_and_the_others_stay_usable(
    store: JobStore, caplog: pytest.LogCaptureFixture, content: str, problem: str
) -> None:
    good = store.submit(pack_job(HELLO))
    bad = store.submit(pack_job(HELLO))
    path = store.root / bad.job_id / "job.json"
    path.write_text(content.replace("ID", bad.job_id))
    with caplog.at_level(logging.WARNING, logger="fl_core.roles.server_parent.job_store"):
        for _ in range(5):  # as the scheduler does, every second
            entries = store.entries()
            assert store.list() == [good]
    corrupt = [e for e in entries if isinstance(e, CorruptJob)]
    assert [c.job_id for c in corrupt] == [bad.job_id]
    assert problem in corrupt[0].reason and str(path) in corrupt[0].reason
    assert corrupt[0].to_json()["state"] == "corrupt"
    assert caplog.text.count(f"job {bad.job_id} is listed as corrupt") == 1
    with pytest.raises(CorruptJobRecordError):
        store.get(bad.job_id)
    # Every other job reads and changes as before.
    assert store.update(good.job_id, state=JobState.RUNNING).state is JobState.RUNNING
    assert store.get(good.job_id).state is JobState.RUNNING


def test_update_if_changes_only_a_record_in_one_of_the_states(store: JobStore) -> None:
    record = store.submit(pack_job(HELLO))
    store.update(record.job_id, state=JobState.FINISHED)
    kept = store.update_if(record.job_id, (JobState.RUNNING,), state=JobState.FAILED)
    assert kept.state is JobState.FINISHED
    assert store.get(record.job_id).state is JobState.FINISHED
    assert store.update_if(record.job_id, (JobState.FINISHED,), reason="x").reason == "x"


def test_a_check_that_refuses_a_job_leaves_nothing(store: JobStore) -> None:
    def refuse(job: object) -> None:
        raise ConfigError("job.yaml", "workflow", "no such workflow here")

    with pytest.raises(JobPackageError, match=r"^job package: job\.yaml: workflow: no such"):
        store.submit(pack_job(HELLO), refuse)
    assert store.entries() == []


def test_schedule_timeout_goes_into_the_record(store: JobStore, tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    for name in ("train.py", "initial_model.npz"):
        (job / name).write_bytes((HELLO / name).read_bytes())
    text = (HELLO / "job.yaml").read_text() + "schedule_timeout: 30\n"
    (job / "job.yaml").write_text(text)
    record = store.submit(pack_job(job))
    assert record.schedule_timeout == 30.0
    assert store.get(record.job_id).schedule_timeout == 30.0
    assert JobRecord.from_json(record.to_json()) == record


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (the tests run as root); unmounted at the end."""
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    try:
        with open(filler, "ab", buffering=0) as out:
            while True:
                out.write(b"\0" * 4096)
    except OSError:
        pass
    try:
        with open(filler, "ab", buffering=0) as out:
            while True:
                out.write(b"\0")
    except OSError:
        pass
    return filler


def test_recover_on_a_full_disk_does_not_stop_the_server_and_succeeds_later(
    small_disk: Path,
) -> None:
    store = JobStore(small_disk / "jobs")
    record = store.submit(pack_job(HELLO))
    store.update(record.job_id, state=JobState.RUNNING)
    filler = _fill(small_disk)
    with pytest.raises(OSError):  # really full: a record cannot be written
        store.update(record.job_id, round=1)
    assert JobStore(small_disk / "jobs").recover() == []  # logged, not raised
    assert store.get(record.job_id).state is JobState.RUNNING
    filler.unlink()
    changed = JobStore(small_disk / "jobs").recover()
    assert [r.job_id for r in changed] == [record.job_id]
    on_disk = json.loads((small_disk / "jobs" / record.job_id / "job.json").read_text())
    assert on_disk["state"] == "failed" and on_disk["ended"] is not None

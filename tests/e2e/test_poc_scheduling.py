"""Scheduling and job records in a POC federation of real processes.

A job that cannot start says why and does not hold up the jobs behind it; a
job that can never run is refused at submit; a corrupt record is listed, not
lost; an end the disk refused is written once there is room again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fl_core.roles.admin.client import AdminRequestError

pytestmark = pytest.mark.e2e


def _faults() -> ModuleType:
    # The federation harness of the fault tests, loaded by path (tests are not a package).
    path = Path(__file__).with_name("test_poc_faults.py")
    spec = importlib.util.spec_from_file_location("_poc_faults_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _faults()
Federation = harness.Federation
make_job = harness.make_job
wait_for = harness.wait_for


@pytest.fixture
def poc(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`poc(sites=3, start=2, ...)`: a federation of `sites`, the first `start` of them up."""
    made: list[Any] = []

    def start(sites: int = 3, up: int | None = None, **server: Any) -> Any:
        federation = Federation(tmp_path, sites, server)
        made.append(federation)
        federation.start_server()
        for site in federation.sites[: sites if up is None else up]:
            federation.start_client(site)
        federation.wait_sites(set(federation.sites[: sites if up is None else up]))
        return federation

    yield start
    left = [line for federation in made for line in federation.shutdown()]
    assert not left, "processes left behind:\n" + "\n".join(left)


def _with_option(job: Path, line: str) -> Path:
    text = (job / "job.yaml").read_text()
    (job / "job.yaml").write_text(text + line + "\n")
    return job


def test_a_job_lacking_sites_says_why_and_does_not_block_the_queue(
    poc: Callable[..., Any], tmp_path: Path
) -> None:
    fed = poc(sites=3, up=2, max_jobs=1)
    big = fed.admin.submit(make_job(tmp_path, "big", rounds=1, min_clients=3))
    doomed = fed.admin.submit(
        _with_option(make_job(tmp_path, "doomed", rounds=1, min_clients=3), "schedule_timeout: 2")
    )
    small = fed.admin.submit(make_job(tmp_path, "small", rounds=5, min_clients=2, sleep=0.3))
    queued = fed.admin.submit(make_job(tmp_path, "queued", rounds=1, min_clients=2))
    # The jobs behind the two that lack a site run; the second waits for the only slot.
    slot = "waiting for a free slot: 1 of 1 jobs running (max_jobs)"
    wait_for("the queued job's reason", lambda: fed.admin.status(queued)["reason"] == slot)
    assert fed.wait_state(small)["state"] == "finished"
    assert fed.wait_state(queued)["state"] == "finished"
    waiting = "waiting for 3 sites; 2 alive: site-1, site-2"
    wait_for("the big job's reason", lambda: fed.admin.status(big)["reason"] == waiting)
    listed = {r["job_id"]: r for r in fed.admin.list()}
    assert listed[big]["state"] == "submitted" and listed[big]["reason"] == waiting
    # Past its schedule_timeout a waiting job fails, with what it waited for.
    record = fed.wait_state(doomed)
    assert record["state"] == "failed", record
    assert record["reason"] == f"not started within its schedule_timeout of 2 s: {waiting}"
    # Once its sites are there, the big job runs.
    fed.start_client("site-3")
    record = fed.wait_state(big)
    assert record["state"] == "finished", record
    assert record["reason"] == ""


def test_a_job_that_can_never_run_is_refused_at_submit(
    poc: Callable[..., Any], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    with pytest.raises(AdminRequestError) as info:
        fed.admin.submit(make_job(tmp_path, "huge", min_clients=1000000))
    assert "min_clients: the job needs 1000000 sites, but federation poc has only 2" in str(
        info.value
    )
    unknown = make_job(tmp_path, "unknown")
    text = (unknown / "job.yaml").read_text().replace("name: sag", "name: fedsomething")
    (unknown / "job.yaml").write_text(text)
    with pytest.raises(AdminRequestError) as info:
        fed.admin.submit(unknown)
    assert "unknown workflow 'fedsomething'" in str(info.value)
    assert fed.admin.list() == []  # nothing was stored
    fed.run_ok("after")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".test")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_corrupt_record_is_listed_once_and_the_others_work(
    poc: Callable[..., Any], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    ok = fed.admin.submit(make_job(tmp_path, "ok", rounds=1))
    bad = fed.admin.submit(make_job(tmp_path, "bad", rounds=1))
    other = fed.admin.submit(make_job(tmp_path, "other", rounds=1))
    for job_id in (ok, bad, other):
        assert fed.wait_state(job_id)["state"] == "finished"
    jobs = fed.config.server_dir / "jobs"
    record = json.loads((jobs / other / "job.json").read_text())
    # Swapped in whole: the server must not catch a file half written by the test.
    _replace(jobs / bad / "job.json", '{"job_id": "' + bad + '", "name": "b')  # truncated
    _replace(jobs / other / "job.json", json.dumps({**record, "job_id": ok}))
    listed = {r["job_id"]: r for r in fed.admin.list()}
    assert [listed[j]["state"] for j in (ok, bad, other)] == ["finished", "corrupt", "corrupt"]
    assert "corrupt job record" in listed[bad]["reason"]
    assert f"its job_id {ok!r} is not its folder's" in listed[other]["reason"]
    # The good job is still usable, and the scheduler goes on past the corrupt ones.
    assert fed.admin.status(ok)["state"] == "finished"
    assert (fed.model(ok)["w"] == 1.5).all()
    fed.run_ok("after")
    log = (fed.config.server_dir / "log.txt").read_text()
    assert log.count(f"job {bad} is listed as corrupt") == 1, log
    assert log.count(f"job {other} is listed as corrupt") == 1, log
    # A stopped POC still lists its jobs from the disk.
    fed.admin.shutdown()
    assert fed.server is not None
    fed.server.wait(30)
    fed.drop_admin()
    out = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "poc", "status", "--workspace", str(fed.root)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "jobs: 4" in out, out
    assert f"{bad}  ?  corrupt" in out, out


def test_abort_of_an_ended_job_says_so_and_fails(poc: Callable[..., Any], tmp_path: Path) -> None:
    fed = poc(sites=2)
    job_id = fed.admin.submit(make_job(tmp_path, "done", rounds=1))
    assert fed.wait_state(job_id)["state"] == "finished"
    done = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "job", "abort", job_id, "--workspace", str(fed.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert f"job {job_id} has already ended: finished" in done.stderr


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def _fill(folder: Path) -> Path:
    """Write into `folder` until its file system is full; the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    # Fill what is left byte by byte, so not even a small record fits.
    try:
        with open(filler, "ab", buffering=0) as out:
            while True:
                out.write(b"\0" * 512)
    except OSError:
        pass
    return filler


def test_an_end_the_full_disk_refused_is_written_once_there_is_room(
    poc: Callable[..., Any], tmp_path: Path
) -> None:
    jobs = tmp_path / "server" / "jobs"
    _mount_tmpfs(jobs, "8m")
    try:
        fed = poc(sites=2)
        job = make_job(tmp_path, "full", rounds=30, sleep=0.1)
        job_id = fed.admin.submit(job)
        harness.wait_mark(job, "site-1-r1")
        filler = _fill(jobs)
        record_file = jobs / job_id / "job.json"
        # The job's processes end (its server job cannot write either); nothing is
        # shown as running once they are gone, though the record on disk cannot change.
        shown = fed.wait_state(job_id)
        assert shown["state"] in ("failed", "finished"), shown
        wait_for("the job's processes gone", lambda: not fed.job_processes(job_id))
        on_disk = json.loads(record_file.read_text())
        assert on_disk["state"] == "running" and on_disk["ended"] is None, on_disk
        assert fed.admin.status(job_id)["state"] == shown["state"]
        # Room again: the end is written by the retries, with its reason.
        filler.unlink()
        wait_for(
            "the end written to disk",
            lambda: json.loads(record_file.read_text())["state"] == shown["state"],
        )
        on_disk = json.loads(record_file.read_text())
        assert on_disk["ended"] is not None and on_disk["reason"] == shown["reason"]
        fed.run_ok("after")
        assert not fed.shutdown()  # before the unmount: nothing may keep the mount busy
    finally:
        subprocess.run(["umount", "-l", str(jobs)], check=False)


def test_a_running_record_whose_processes_are_gone_is_failed_at_the_next_status(
    poc: Callable[..., Any], tmp_path: Path
) -> None:
    jobs = tmp_path / "server" / "jobs"
    _mount_tmpfs(jobs, "8m")
    try:
        fed = poc(sites=2)
        job = make_job(tmp_path, "cut", rounds=50, sleep=0.2)
        job_id = fed.admin.submit(job)
        harness.wait_mark(job, "site-1-r1")
        filler = _fill(jobs)
        assert fed.server is not None
        fed.server.kill()  # the server parent dies; its jobs die with it
        fed.server.wait(30)
        fed.drop_admin()
        wait_for("the job's processes gone", lambda: not fed.job_processes(job_id))
        fed.start_server()  # its recovery cannot write to the full disk, and it starts anyway
        record_file = jobs / job_id / "job.json"
        assert json.loads(record_file.read_text())["state"] == "running"
        shown = fed.admin.status(job_id)
        assert shown["state"] == "failed", shown
        assert "not written yet: No space left on device" in shown["reason"], shown
        assert [r["state"] for r in fed.admin.list()] == ["failed"]
        filler.unlink()
        shown = fed.admin.status(job_id)  # this status query writes it
        on_disk = json.loads(record_file.read_text())
        assert on_disk["state"] == "failed" and on_disk["ended"] is not None, on_disk
        assert on_disk["reason"] == shown["reason"]
        assert "its processes ended while it was running" in on_disk["reason"]
        assert not fed.shutdown()
    finally:
        subprocess.run(["umount", "-l", str(jobs)], check=False)

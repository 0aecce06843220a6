"""POC processes assembled by their container: events, the federation's fixed parts, site rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_poc_cli import wait_final

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"
FL_CORE = [sys.executable, "-m", "fl_core.cli"]
EVENTS_ENV = "FLCORE_EVALUATE_EVENTS"  # the test plugin's event log (tests/thirdparty_plugin)

pytestmark = pytest.mark.e2e


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FL_CORE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def hello_job(folder: Path, rounds: int = 2, extra: str = "") -> Path:
    folder.mkdir(parents=True)
    for name in ("train.py", "initial_model.npz"):
        (folder / name).write_bytes((HELLO / name).read_bytes())
    text = (HELLO / "job.yaml").read_text().replace("rounds: 5", f"rounds: {rounds}")
    (folder / "job.yaml").write_text(text + extra)
    return folder


@pytest.fixture
def running_poc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    ws = tmp_path / "poc"
    prepared = run_cli("poc", "prepare", "--workspace", str(ws), "--clients", "2")
    assert prepared.returncode == 0, prepared.stderr
    for site, text in getattr(request, "param", {}).items():
        (ws / site / "site.yaml").write_text(text)
    started = run_cli("poc", "start", "--workspace", str(ws))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield ws
    finally:
        stopped = run_cli("poc", "stop", "--workspace", str(ws))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_event_hooks_fire_in_the_server_job_of_a_poc(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    job = hello_job(tmp_path / "job")
    proc = run_cli(
        "run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"),
        env={EVENTS_ENV: str(events)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["started", "finished"]
    started, finished = lines
    assert started["mode"] == finished["mode"] == "poc"
    assert started["job_id"] == finished["job_id"]
    assert finished["status"] == "finished" and finished["reason"] == ""
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["job_id"] == started["job_id"]
    # Fired in the server job's own process, not in the CLI or a parent.
    assert started["pid"] == finished["pid"] != os.getpid()


def test_a_job_naming_another_transport_is_refused_at_submit(
    running_poc: Path, tmp_path: Path
) -> None:
    job = hello_job(tmp_path / "job", extra="components:\n  transport: grpc\n")
    proc = run_cli("job", "submit", str(job), "--workspace", str(running_poc))
    assert proc.returncode == 1
    assert "components.transport: the federation fixes the transport ('tcp'" in proc.stderr
    listed = run_cli("job", "list", "--workspace", str(running_poc))
    assert listed.returncode == 0 and listed.stdout.count("\n") <= 1, listed.stdout  # none kept
    checked = run_cli("job", "check", str(job), "--mode", "poc", "--federation", str(running_poc))
    assert checked.returncode == 1
    assert "the federation fixes the transport" in checked.stderr
    # The same job, leaving the transport to the federation, runs.
    plain = hello_job(tmp_path / "plain")
    submitted = run_cli("job", "submit", str(plain), "--workspace", str(running_poc))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    assert wait_final(running_poc, job_id)["state"] == "finished"


# site-2 runs training processes only in docker, by its own rule.
@pytest.mark.parametrize("running_poc", [{"site-2": "launchers: [docker]\n"}], indirect=True)
def test_a_site_refuses_a_launcher_its_config_does_not_allow(
    running_poc: Path, tmp_path: Path
) -> None:
    job = hello_job(tmp_path / "job", extra="components:\n  pipe: file\n")
    submitted = run_cli("job", "submit", str(job), "--workspace", str(running_poc))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    record = wait_final(running_poc, job_id)
    assert record["state"] == "failed"
    reason = str(record["reason"])
    assert f"site-2 refused job {job_id}: launcher 'process' is not allowed" in reason
    assert str(running_poc / "site-2" / "site.yaml") in reason
    # The site's parent is still there, and so is the other site's.
    status = run_cli("poc", "status", "--workspace", str(running_poc))
    assert status.stdout.count("registered") >= 2, status.stdout


def test_run_mode_poc_speaks_the_transport_the_job_names(tmp_path: Path) -> None:
    job = hello_job(tmp_path / "job", extra="components:\n  transport: grpc\n")
    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "over grpc" in proc.stdout

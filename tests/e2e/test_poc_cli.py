"""POC mode end to end: real server parent, client parents and job processes via `fl-core`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fl_core.cli.poc_federation import PocStartError, pid_running, prepare, start
from fl_core.config.federation import load_federation
from fl_core.model import load_params
from fl_core.testing import write_job

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"
FL_CORE = [sys.executable, "-m", "fl_core.cli"]

# `fl-core` as a terminal starts it: with the stop signals at their defaults. A
# test runner started in the background (a CI job, `nohup`) may hand its children
# SIGINT or SIGHUP ignored, and fl-core rightly leaves an ignored signal ignored.
FL_CORE_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    "import runpy, signal\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "for s in (signal.SIGTERM, signal.SIGHUP):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "runpy.run_module('fl_core.cli', run_name='__main__', alter_sys=True)\n",
]

pytestmark = pytest.mark.e2e


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FL_CORE, *args], capture_output=True, text=True, timeout=timeout)


def hello_job(folder: Path, rounds: int) -> Path:
    folder.mkdir(parents=True)
    for name in ("train.py", "initial_model.npz"):
        (folder / name).write_bytes((HELLO / name).read_bytes())
    text = (HELLO / "job.yaml").read_text().replace("rounds: 5", f"rounds: {rounds}")
    (folder / "job.yaml").write_text(text)
    return folder


def assert_exact(ws: Path, rounds: int, clients: int) -> None:
    """The hello-numpy model after `rounds` FedAvg rounds over `clients` sites, to the bit."""
    final = load_params(ws / "final_model.npz")
    initial = load_params(HELLO / "initial_model.npz")
    expected = rounds * (clients + 1) / 2  # site k adds k; equal weights
    assert set(final) == set(initial)
    for name, array in final.items():
        assert np.array_equal(array, initial[name] + expected), name
    metrics = json.loads((ws / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == list(range(rounds))
    assert all(m["results"] == clients for m in metrics)
    assert json.loads((ws / "summary.json").read_text())["status"] == "finished"


def processes_under(root: Path) -> list[tuple[int, str]]:
    """Live processes whose command line names a path under `root` (SP, CPs, SJs, CJs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(root) in cmdline and pid_running(int(entry.name)):
            found.append((int(entry.name), cmdline))
    return found


def wait_gone(root: Path, timeout: float = 15.0) -> list[tuple[int, str]]:
    # Job processes may take a moment after their parents to notice and exit.
    deadline = time.monotonic() + timeout
    while (left := processes_under(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def poc_root(stdout: str) -> Path:
    match = re.search(r"\(workspace (\S+)\)", stdout)
    assert match, stdout
    return Path(match.group(1))


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_run_mode_poc_hello_numpy_is_exact(tmp_path: Path, transport: str) -> None:
    job = hello_job(tmp_path / "job", rounds=5)
    ws = tmp_path / "ws"

    proc = run_cli(
        "run", "--mode", "poc", str(job), "--clients", "2", "--workspace", str(ws),
        "--transport", transport,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exact(ws, rounds=5, clients=2)
    assert (ws / "log.txt").stat().st_size > 0
    for line in ("site-2 registered", "round 1/5: done", "round 5/5: done", "finished in"):
        assert line in proc.stdout
    root = poc_root(proc.stdout)
    assert not root.exists()  # the ephemeral POC is cleaned away ...
    assert wait_gone(root) == []  # ... and nothing of it still runs


def test_run_mode_poc_defaults_to_the_jobs_min_clients(tmp_path: Path) -> None:
    job = hello_job(tmp_path / "job", rounds=1)
    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 sites, 1 rounds" in proc.stdout
    assert_exact(tmp_path / "ws", rounds=1, clients=2)


def test_a_failing_job_exits_1_with_the_reason(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "raise RuntimeError('the data is gone')\n"
    )
    job = write_job(tmp_path / "job", script=script, initial_params={"w": np.zeros(2)})

    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    match = re.search(r"error: job test-job failed: (.+)", proc.stderr)
    assert match, proc.stderr
    # The root cause travels from the training script through CJ, SJ and SP to the user.
    assert "site-1: RuntimeError: the data is gone" in match.group(1), match.group(1)
    assert "logs: " in proc.stderr
    assert wait_gone(poc_root(proc.stdout)) == []


def test_two_pocs_run_at_once(tmp_path: Path) -> None:
    job = hello_job(tmp_path / "job", rounds=2)
    pocs = {2: tmp_path / "poc-a", 3: tmp_path / "poc-b"}
    try:
        for clients, ws in pocs.items():
            prepared = run_cli("poc", "prepare", "--workspace", str(ws), "--clients", str(clients))
            assert prepared.returncode == 0, prepared.stderr
            started = run_cli("poc", "start", "--workspace", str(ws))
            assert started.returncode == 0, started.stdout + started.stderr
        urls = {load_federation(ws).url_file.read_text().strip() for ws in pocs.values()}
        assert len(urls) == 2  # each on its own free port

        ids = {}
        for clients, ws in pocs.items():
            submitted = run_cli("job", "submit", str(job), "--workspace", str(ws))
            assert submitted.returncode == 0, submitted.stderr
            ids[clients] = submitted.stdout.strip()
        for clients, ws in pocs.items():
            record = wait_final(ws, ids[clients])
            assert record["state"] == "finished", record
            assert record["sites"] == [f"site-{i}" for i in range(1, clients + 1)]
            # The server job's own time for each round, shown on one line by `job status`.
            assert len(record["round_seconds"]) == 2, record
            shown = run_cli("job", "status", ids[clients], "--workspace", str(ws)).stdout
            assert re.search(r'"round_seconds": \[[\d.e-]+, [\d.e-]+\]', shown), shown
            out = tmp_path / f"out-{clients}"
            got = run_cli(
                "job", "download", ids[clients], "--output", str(out), "--workspace", str(ws)
            )
            assert got.returncode == 0, got.stderr
            assert_exact(out, rounds=2, clients=clients)
            listed = run_cli("job", "list", "--workspace", str(ws))
            assert listed.stdout.split()[:3] == [ids[clients], "hello-numpy", "finished"]
    finally:
        for ws in pocs.values():
            run_cli("poc", "stop", "--workspace", str(ws))
    for ws in pocs.values():
        assert wait_gone(ws) == []


def wait_final(ws: Path, job_id: str, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        proc = run_cli("job", "status", job_id, "--workspace", str(ws))
        assert proc.returncode == 0, proc.stderr
        record: dict[str, object] = json.loads(proc.stdout)
        if record["state"] in ("finished", "failed", "aborted") or time.monotonic() > deadline:
            return record
        time.sleep(0.3)


def test_poc_start_status_stop_leaves_no_process(tmp_path: Path) -> None:
    ws = tmp_path / "poc"
    assert run_cli("poc", "prepare", "--workspace", str(ws), "--clients", "2").returncode == 0
    started = run_cli("poc", "start", "--workspace", str(ws))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        config = load_federation(ws)
        pid_files = [config.server_dir / "pid", *(config.site_dir(s) / "pid" for s in config.sites)]
        pids = [int(path.read_text()) for path in pid_files]
        assert all(pid_running(pid) for pid in pids)

        status = run_cli("poc", "status", "--workspace", str(ws))
        assert status.returncode == 0, status.stdout + status.stderr
        assert re.search(r"site-2  pid \d+  running  registered", status.stdout), status.stdout
        assert f"POC in {config.root} is running" in status.stdout
    finally:
        stopped = run_cli("poc", "stop", "--workspace", str(ws))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "terminating" not in stopped.stdout  # SP's own shutdown took everything down
    assert not any(pid_running(pid) for pid in pids)
    assert not any(path.exists() for path in pid_files)
    assert wait_gone(ws) == []
    after = run_cli("poc", "status", "--workspace", str(ws))
    assert after.returncode == 1
    assert "is not running" in after.stdout


def test_a_server_that_cannot_start_fails_start_with_its_log(tmp_path: Path) -> None:
    config = prepare(tmp_path / "poc", 2)
    source = config.source
    source.write_text(source.read_text().replace("transport: tcp", "transport: carrier-pigeon"))
    config = load_federation(source)

    with pytest.raises(PocStartError) as info:
        start(config, timeout=30)

    text = str(info.value)
    # Every process reads the same bad file: whichever exits first is named.
    assert re.search(r"(server|site-1|site-2) exited with code", text), text
    assert "carrier-pigeon" in text  # the tail of the log says why
    assert wait_gone(config.root) == []
    assert not (config.server_dir / "pid").exists()


def test_each_round_line_says_how_long_that_round_took(tmp_path: Path) -> None:
    # Round 2 is slow, round 3 fast: lines stamped with one poll's time could not show that.
    script = (
        "import time\n"
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "while flare.is_running():\n"
        "    m = flare.receive()\n"
        "    if m is None:\n"
        "        break\n"
        "    if m.current_round == 1:\n"
        "        time.sleep(2.0)\n"
        "    flare.send(flare.FLModel(params=m.params, meta={'num_samples': 1}))\n"
    )
    job = write_job(tmp_path / "job", script=script, rounds=3, initial_params={"w": np.zeros(1)})

    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    took = {}
    for line in lines:
        if match := re.fullmatch(r"round (\d)/3: done  \((\d+\.\d+) s\)", line):
            took[int(match.group(1))] = float(match.group(2))
    assert sorted(took) == [1, 2, 3], proc.stdout
    assert took[2] >= 2.0  # it slept that long
    assert took[3] < took[2], proc.stdout
    # The end is said after the last round, not before it.
    finished = next(i for i, line in enumerate(lines) if re.fullmatch(r"job \w+: finished", line))
    assert finished > lines.index(f"round 3/3: done  ({took[3]:.2f} s)")


def test_run_mode_poc_in_a_reused_workspace_moves_the_earlier_run_aside(tmp_path: Path) -> None:
    job = hello_job(tmp_path / "job", rounds=1)
    ws = tmp_path / "ws"
    (ws / "trainers").mkdir(parents=True)
    (ws / "log.txt").write_text("the earlier run\n")

    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(ws))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"moved the earlier run in {ws} to {tmp_path / 'ws.1'}" in proc.stdout
    assert "the earlier run" not in (ws / "log.txt").read_text()
    assert not (ws / "trainers").exists()
    assert (tmp_path / "ws.1" / "log.txt").read_text() == "the earlier run\n"
    assert_exact(ws, rounds=1, clients=2)


def test_run_mode_poc_warns_when_the_final_model_is_empty(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", script=(HELLO / "train.py").read_text(), rounds=1)
    ws = tmp_path / "ws"
    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(ws))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"warning: the final model {ws / 'final_model.npz'} is empty" in proc.stderr

"""How a simulator run starts, aborts and ends: nothing leaks, nothing hangs, nothing is lost."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fl_core.spec import hookimpl
from fl_core.testing import simulator_for, write_job

from .test_poc_cli import FL_CORE_FROM_A_TERMINAL

pytestmark = pytest.mark.e2e

SLOW = (
    "import threading, pathlib\n"
    "import fl_core.client as flare\n"
    "flare.init()\n"
    "site = flare.get_site_name()\n"
    "m = flare.receive()\n"
    "pathlib.Path(MARKS, site + '-' + str(m.current_round)).touch()\n"
    "threading.Event().wait(DELAY)\n"
    "flare.send(flare.FLModel(params=m.params))\n"
)


def slow_job(tmp_path: Path, delay: float, **kwargs: object) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = f"MARKS = {str(marks)!r}\nDELAY = {delay}\n" + SLOW
    return write_job(tmp_path / "job", script=script, initial_params={"w": np.zeros(1)}, **kwargs)  # type: ignore[arg-type]


def fl_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith(("fl-", "fl_"))}


def test_ctrl_c_aborts_the_run_and_exits_130(tmp_path: Path) -> None:
    job = slow_job(tmp_path, 0.3, rounds=50)
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [*FL_CORE_FROM_A_TERMINAL, "run", str(job), "--workspace", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    while "round 1/50" not in proc.stdout.readline():
        pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "error: job test-job aborted: interrupted (Ctrl-C)" in err
    summary = json.loads((ws / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("aborted", "interrupted (Ctrl-C)")


def test_abort_fails_queued_scripts_instead_of_running_them(tmp_path: Path) -> None:
    job = slow_job(tmp_path, 0.5, min_clients=2, rounds=1)
    simulator = simulator_for(job, clients=8, threads=1, workspace=tmp_path / "ws")
    marks = tmp_path / "marks"
    threading.Thread(
        target=lambda: (_wait_for_file(marks), simulator.abort("stop now")), daemon=True
    ).start()
    result = simulator.run()
    assert (result.status, result.reason) == ("aborted", "stop now")
    assert len(list(marks.iterdir())) < 8  # the queued sites never started


def _wait_for_file(folder: Path) -> None:
    event = threading.Event()
    while not any(folder.iterdir()):
        event.wait(0.02)


def test_a_hung_script_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    script = (
        "import threading\n"
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "if flare.get_site_name() == 'site-2':\n"
        "    threading.Event().wait(600)\n"
        "flare.send(flare.FLModel(params=m.params))\n"
    )
    job = write_job(
        tmp_path / "job",
        script=script,
        rounds=1,
        workflow={"name": "sag", "options": {"min_responses": 1}},
        initial_params={"w": np.zeros(1)},
        extra={"executor": {"script": "train.py", "task_timeout": 0.5}},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "run", str(job), "--workspace", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,  # the script waits 600 s: only a process that does not wait for it ends
    )
    assert proc.returncode == 0, proc.stderr
    assert "finished" in proc.stdout


class RaisingHooks:
    @hookimpl
    def fl_core_job_started(self, job_id: str, mode: str) -> None:
        raise ValueError("metrics backend is down")


def test_a_failing_start_hook_fails_the_job_and_leaks_nothing(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", script="pass\n", initial_params={"w": np.zeros(1)})
    argv, path, before = list(sys.argv), list(sys.path), fl_threads()
    simulator = simulator_for(
        job, workspace=tmp_path / "ws", extra_plugins=[("raising", RaisingHooks())]
    )
    result = simulator.run()
    assert result.status == "failed"
    assert result.reason == "ValueError: metrics backend is down"
    assert (sys.argv, sys.path) == (argv, path)
    assert fl_threads() <= before
    assert json.loads((tmp_path / "ws" / "summary.json").read_text())["reason"] == result.reason


def test_once_scripts_end_when_the_job_fails(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "while (m := flare.receive()) is not None:\n"
        "    flare.send(flare.FLModel(params={'w': m.params['w'].astype('U1')}))\n"
    )
    job = write_job(
        tmp_path / "job", script=script, launch="once", initial_params={"w": np.zeros(1)}
    )
    before = fl_threads()
    result = simulator_for(job, clients=3, threads=1, workspace=tmp_path / "ws").run()
    assert result.status == "failed"
    assert fl_threads() <= before  # once threads (3 > --threads 1) all ended


def test_a_failure_after_send_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "flare.send(flare.FLModel(params=m.params))\n"
        "raise RuntimeError('cleanup failed')\n"
    )
    job = write_job(tmp_path / "job", script=script, rounds=1, initial_params={"w": np.zeros(1)})
    with caplog.at_level(logging.WARNING):
        result = simulator_for(job, workspace=tmp_path / "ws").run()
    assert result.status == "finished"
    failed = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "after sending its result" in r.getMessage()
    ]
    assert len(failed) == 2
    assert "RuntimeError: cleanup failed" in failed[0]
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert sorted(e["site"] for e in summary["script_errors"]) == ["site-1", "site-2"]
    assert summary["script_errors"][0]["last_line"] == "RuntimeError: cleanup failed"


def test_the_task_timeout_counts_from_the_start_of_the_script(tmp_path: Path) -> None:
    job = slow_job(
        tmp_path,
        0.2,
        min_clients=6,
        rounds=1,
        extra={"executor": {"script": "train.py", "task_timeout": 0.8}},
    )
    # One worker: the sixth site waits about 1 s in the queue before it starts.
    result = simulator_for(job, clients=6, threads=1, workspace=tmp_path / "ws").run()
    assert result.status == "finished", result.reason


def test_each_job_imports_its_own_helper_modules(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "import helper\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "flare.send(flare.FLModel(params={'w': m.params['w'] + helper.DELTA}))\n"
    )
    finals = []
    for delta in (1, 2):
        job = write_job(
            tmp_path / f"job{delta}", script=script, rounds=1, initial_params={"w": np.zeros(1)}
        )
        (job / "helper.py").write_text(f"DELTA = {delta}\n")
        result = simulator_for(job, workspace=tmp_path / f"ws{delta}").run()
        assert result.final_model is not None, result.reason
        finals.append(result.final_model.params["w"].tolist())
    assert finals == [[1.0], [2.0]]
    assert "helper" not in sys.modules


def test_abort_while_sites_join_is_reported_as_aborted(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", script="pass\n", initial_params={"w": np.zeros(1)})
    simulator = simulator_for(job, clients=2, workspace=tmp_path / "ws")
    simulator.abort("changed my mind")
    result = simulator.run()
    assert (result.status, result.reason) == ("aborted", "changed my mind")

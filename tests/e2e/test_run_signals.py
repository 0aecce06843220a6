"""`fl-core run` stopped by a signal leaves nothing behind.

Ctrl-C, SIGTERM (`kill`, `timeout`) and SIGHUP (a closed terminal) each abort
the job and exit 130, 143 or 129. In POC mode they also stop the whole POC
(server parent, client parents, job processes, their supervisors and the
training processes) and remove its temporary folder. Checked in /proc, as a
user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fl_core.testing import write_job
from fl_core.testing.stream_contract import wait_until

from .test_poc_cli import FL_CORE_FROM_A_TERMINAL, poc_root, processes_under, run_cli, wait_gone

pytestmark = pytest.mark.e2e

WAIT = 120.0

# Slow enough that a signal lands mid-job, with the script in a process of its own.
SCRIPT = """\
import time
import fl_core.client as flare

flare.init()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    time.sleep(0.2)
    flare.send(flare.FLModel(params=model.params, meta={"num_samples": 1}))
"""


class Run:
    """`fl-core run --mode MODE` as a real subprocess, its output in files to poll."""

    def __init__(self, tmp_path: Path, mode: str = "poc") -> None:
        job = write_job(
            tmp_path / "job",
            script=SCRIPT,
            rounds=500,
            launch="once",
            initial_params={"w": np.zeros(1)},
            components={"pipe": "file"},
        )
        self.out = tmp_path / "stdout.txt"
        self.err = tmp_path / "stderr.txt"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    *FL_CORE_FROM_A_TERMINAL,
                    "run",
                    "--mode",
                    mode,
                    str(job),
                    "--workspace",
                    str(tmp_path / "ws"),
                ],
                stdout=out,
                stderr=err,
            )

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_training(self) -> Path:
        """Wait until rounds pass and every site's training process runs; return the POC root."""
        wait_until(
            lambda: "round 1/500" in self.stdout() or self.proc.poll() is not None,
            WAIT,
            "the first round",
        )
        assert self.proc.poll() is None, self.stdout() + self.stderr()
        root = poc_root(self.stdout())

        def trainers() -> int:
            return sum(
                "train.py" in cmdline and "supervise.py" not in cmdline
                for _, cmdline in processes_under(root)
            )

        wait_until(lambda: trainers() == 2, WAIT, "both training processes")
        return root

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


STOPS = pytest.mark.parametrize(
    ("sig", "code", "reason"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "terminated (SIGTERM)"),
        (signal.SIGHUP, 129, "hung up (SIGHUP)"),
    ],
)


@STOPS
def test_a_stop_signal_aborts_the_job_and_leaves_nothing_running(
    tmp_path: Path, sig: signal.Signals, code: int, reason: str
) -> None:
    run = Run(tmp_path)
    root = run.wait_training()

    run.proc.send_signal(sig)

    assert run.finish() == code, run.stderr()
    assert f"{reason}: aborting job test-job and stopping the POC" in run.stderr()
    # Server and client parents, jobs, supervisors and train.py: none of this run survives.
    assert wait_gone(root) == []
    assert not root.parent.exists()  # the temporary fl-poc-* folder


def test_more_signals_during_the_teardown_do_not_cut_it_short(tmp_path: Path) -> None:
    run = Run(tmp_path)
    root = run.wait_training()

    run.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "aborting job" in run.stderr(), WAIT, "the teardown to begin")
    for again in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if run.proc.poll() is None:
            run.proc.send_signal(again)

    assert run.finish() == 143, run.stderr()
    assert wait_gone(root) == []
    assert not root.parent.exists()


def test_a_signal_while_the_poc_starts_leaves_nothing_running(tmp_path: Path) -> None:
    run = Run(tmp_path)
    wait_until(
        lambda: "registered" in run.stdout() or run.proc.poll() is not None,
        WAIT,
        "a site to register",
    )
    root = poc_root(run.stdout())

    run.proc.send_signal(signal.SIGTERM)

    assert run.finish() == 143, run.stderr()
    assert wait_gone(root) == []
    assert not root.parent.exists()


@STOPS
def test_a_stop_signal_aborts_a_simulator_run_and_its_training_processes(
    tmp_path: Path, sig: signal.Signals, code: int, reason: str
) -> None:
    run = Run(tmp_path, mode="simulator")
    wait_until(
        lambda: "round 1/500" in run.stdout() or run.proc.poll() is not None,
        WAIT,
        "the first round",
    )
    assert run.proc.poll() is None, run.stdout() + run.stderr()

    run.proc.send_signal(sig)

    assert run.finish() == code, run.stderr()
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert wait_gone(tmp_path) == []  # the training processes of the run


def test_a_started_poc_outlives_the_terminal_that_started_it(tmp_path: Path) -> None:
    # `poc start` is meant to leave a federation running: the hang-up of its terminal
    # (SIGHUP to the terminal's process group) must not reach the POC's processes.
    ws = tmp_path / "poc"
    assert run_cli("poc", "prepare", "--workspace", str(ws)).returncode == 0
    start = subprocess.Popen(
        [*FL_CORE_FROM_A_TERMINAL, "poc", "start", "--workspace", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # stands for the terminal's session and process group
    )
    try:
        out, _ = start.communicate(timeout=WAIT)
        assert start.returncode == 0, out
        try:
            os.killpg(start.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass  # nothing of the POC is in that group: the expected case
        status = run_cli("poc", "status", "--workspace", str(ws))
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        stopped = run_cli("poc", "stop", "--workspace", str(ws))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert wait_gone(ws) == []

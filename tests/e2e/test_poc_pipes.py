"""POC jobs whose training scripts run as processes of their own, over each pipe.

The whole `fl-core run --mode poc` command: server parent, client parents,
server job, client jobs and one training process per site, all real. Each
script records its pid in a marks folder, so a test can see that no training
process outlives the job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.model import load_params
from fl_core.pids import pid_alive
from fl_core.testing import write_job
from fl_core.testing.stream_contract import wait_until

from .test_poc_cli import FL_CORE, hello_job, poc_root, run_cli, wait_gone

pytestmark = pytest.mark.e2e

WAIT = 120.0

SCRIPT = """\
import os, sys, time
from pathlib import Path
import fl_core.client as flare

marks = Path(sys.argv[1])
flare.init()
site = flare.get_site_name()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    r = model.current_round
    (marks / f"{site}-r{r}-{os.getpid()}").touch()
    if sys.argv[2] == f"{site}-r{r}-raise":
        print("the data went missing", file=sys.stderr, flush=True)
        raise RuntimeError("the data is gone")
    if sys.argv[2] == f"{site}-r{r}-hang":
        time.sleep(600)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()},
                             meta={"num_samples": 1}))
"""


def _job(tmp_path: Path, pipe: Any, *, fault: str = "-", **executor: Any) -> tuple[Path, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    folder = write_job(
        tmp_path / "job",
        script=SCRIPT,
        rounds=3,
        initial_params={"w": np.zeros(3, np.float32)},
        components={"pipe": pipe},
        extra={
            "executor": {
                "script": "train.py",
                "args": [str(marks), fault],
                "launch": "once",
                **executor,
            }
        },
    )
    return folder, marks


def _trainer_pids(marks: Path) -> set[int]:
    return {int(p.name.rsplit("-", 1)[1]) for p in marks.iterdir()}


def _none_alive(pids: set[int], what: str = "the training processes to end") -> None:
    wait_until(lambda: not any(pid_alive(p) for p in pids), 15.0, what)


def _kill_during_a_hang(
    tmp_path: Path,
    pipe: str,
    victim: Callable[[int], int],
    then: Callable[[int], None] = lambda trainer: None,
) -> tuple[int, str, str, Path]:
    """Run a POC job whose site-1 script hangs in round 1; SIGKILL `victim(trainer_pid)` then.

    `then(trainer_pid)` runs right after the kill, while the job still runs.
    Returns the command's exit code, stdout, stderr and the marks folder.
    """
    job, marks = _job(tmp_path, pipe, fault="site-1-r0-hang")
    run = subprocess.Popen(
        [*FL_CORE, "run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: any(marks.glob("site-1-r0-*")), WAIT, "site-1 to hang in round 1")
        trainer = int(next(iter(marks.glob("site-1-r0-*"))).name.rsplit("-", 1)[1])
        os.kill(victim(trainer), signal.SIGKILL)
        then(trainer)
        stdout, stderr = run.communicate(timeout=WAIT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return run.returncode, stdout, stderr, marks


@pytest.mark.parametrize(
    ("pipe", "launch"),
    [("file", "once"), ("file", "per_task"), ("cell", "once"), ("cell", "per_task")],
)
def test_hello_numpy_runs_exactly_with_its_script_in_a_process_of_its_own(
    tmp_path: Path, pipe: str, launch: str
) -> None:
    job = hello_job(tmp_path / "job", rounds=3)
    text = (job / "job.yaml").read_text()
    text = text.replace("  script: train.py\n", f"  script: train.py\n  launch: {launch}\n")
    (job / "job.yaml").write_text(text + f"components:\n  pipe: {pipe}\n")
    ws = tmp_path / "ws"

    proc = run_cli("run", "--mode", "poc", str(job), "--clients", "2", "--workspace", str(ws))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = load_params(ws / "final_model.npz")
    initial = load_params(job / "initial_model.npz")
    for name, array in final.items():  # site k adds k each round; equal weights
        assert np.array_equal(array, initial[name] + 3 * 1.5), name
    assert wait_gone(poc_root(proc.stdout)) == []


def test_the_cell_pipe_runs_over_grpc(tmp_path: Path) -> None:
    job, marks = _job(tmp_path, {"name": "cell", "options": {"transport": "grpc"}})
    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = load_params(tmp_path / "ws" / "final_model.npz")
    np.testing.assert_array_equal(final["w"], np.full(3, 3.0, np.float32))
    pids = _trainer_pids(marks)
    assert len(pids) == 2  # launch: once, one process per site for all three rounds
    _none_alive(pids)


@pytest.mark.parametrize("pipe", ["file", "cell"])
def test_a_crashed_script_fails_the_job_with_its_exit_code_and_error(
    tmp_path: Path, pipe: str
) -> None:
    job, marks = _job(tmp_path, pipe, fault="site-2-r1-raise")

    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    match = re.search(r"error: job test-job failed: (.+)", proc.stderr)
    assert match, proc.stderr
    reason = match.group(1)
    assert "site-2" in reason and "exited with code 1" in reason, reason
    assert "RuntimeError: the data is gone" in reason, reason
    _none_alive(_trainer_pids(marks))
    assert wait_gone(poc_root(proc.stdout)) == []


def test_a_hanging_script_is_stopped_after_the_task_timeout(tmp_path: Path) -> None:
    job, marks = _job(tmp_path, "file", fault="site-1-r0-hang", task_timeout=3)

    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not send a result within 3 s; it was stopped" in proc.stderr, proc.stderr
    hung = {p for p in _trainer_pids(marks) if any(marks.glob(f"site-1-r0-{p}"))}
    assert hung
    _none_alive(hung)
    assert wait_gone(poc_root(proc.stdout)) == []


def test_a_killed_script_fails_the_task_naming_the_signal(tmp_path: Path) -> None:
    code, stdout, stderr, marks = _kill_during_a_hang(tmp_path, "cell", lambda trainer: trainer)
    assert code == 1, stdout + stderr
    assert "site-1" in stderr and "was killed by SIGKILL" in stderr, stderr
    _none_alive(_trainer_pids(marks))
    assert wait_gone(poc_root(stdout)) == []


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def test_a_killed_client_job_takes_its_training_process_with_it(tmp_path: Path) -> None:
    def client_job(trainer: int) -> int:
        found = _parent(_parent(trainer))  # trainer <- its supervisor <- the client job
        with open(f"/proc/{found}/cmdline", "rb") as f:
            assert b"client-job" in f.read()
        return found

    def ends_with_it(trainer: int) -> None:
        _none_alive({trainer}, "the training process to end with its client job")

    code, stdout, stderr, _ = _kill_during_a_hang(tmp_path, "file", client_job, ends_with_it)
    assert code == 1, stdout + stderr
    assert wait_gone(poc_root(stdout)) == []


def test_a_client_job_that_cannot_start_fails_the_job_at_once_with_its_reason(
    tmp_path: Path,
) -> None:
    # A bad pipe option is the reason the job fails, not a wait for sites that never
    # join: the server refuses it at submit, with the checks of `fl-core job check`.
    job, _ = _job(tmp_path, {"name": "file", "options": {"colour": "red"}})
    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: submit: JobPackageError" in proc.stderr, proc.stderr
    assert "components.pipe.options.colour: `file` has no such option" in proc.stderr
    assert "joined within" not in proc.stderr
    assert wait_gone(poc_root(proc.stdout)) == []


FLARE_STYLE = """\
import sys
import fl_core.client as flare

flare.init()
while flare.is_running():
    m = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in m.params.items()},
                             meta={"num_samples": 1}))
if sys.argv[1] == "fail":
    raise SystemExit("cleanup went wrong")
"""


@pytest.mark.parametrize(
    ("pipe", "launch", "end"),
    [("file", "per_task", "ok"), ("cell", "once", "ok"), ("cell", "per_task", "fail"),
     ("file", "once", "fail")],
)  # fmt: skip
def test_a_flare_style_script_ends_cleanly_and_a_bad_end_is_reported(
    tmp_path: Path, pipe: str, launch: str, end: str
) -> None:
    job = write_job(
        tmp_path / "job",
        script=FLARE_STYLE,
        rounds=2,
        initial_params={"w": np.zeros(2)},
        components={"pipe": pipe},
        extra={"executor": {"script": "train.py", "launch": launch, "args": [end]}},
    )
    ws = tmp_path / "ws"
    proc = run_cli("run", "--mode", "poc", str(job), "--workspace", str(ws))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    np.testing.assert_array_equal(load_params(ws / "final_model.npz")["w"], np.full(2, 2.0))
    errors = json.loads((ws / "summary.json").read_text())["script_errors"]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    if end == "ok":  # a crash at the end (AttributeError on None) would be listed here
        assert (errors, warnings) == ([], []), proc.stderr
    else:
        # per_task: after each task; once: at the end, after the last result.
        count = 4 if launch == "per_task" else 2
        assert len(errors) == count and len(warnings) == count, proc.stderr
        assert {(e["exit_code"], e["last_line"]) for e in errors} == {(1, "cleanup went wrong")}
        assert (
            "WARNING: site-2: the training script exited with code 1 after sending its result "
            "of round 2: cleanup went wrong"
        ) in warnings
    assert wait_gone(poc_root(proc.stdout)) == []

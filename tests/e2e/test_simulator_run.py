"""The simulator end to end through the real `fl-core` command and the real container."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_core.model import load_params
from fl_core.testing import simulator_for, write_job

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello-numpy"
FL_CORE = [sys.executable, "-m", "fl_core.cli"]

pytestmark = pytest.mark.e2e


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FL_CORE, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(("clients", "rounds"), [(2, 5), (3, 2), (7, 1)])
def test_hello_numpy_final_model_is_exact(tmp_path: Path, clients: int, rounds: int) -> None:
    job = tmp_path / "job"
    job.mkdir()
    for name in ("train.py", "initial_model.npz"):
        (job / name).write_bytes((HELLO / name).read_bytes())
    text = (HELLO / "job.yaml").read_text().replace("rounds: 5", f"rounds: {rounds}")
    (job / "job.yaml").write_text(text)
    ws = tmp_path / "ws"

    proc = run_cli("run", str(job), "--clients", str(clients), "--workspace", str(ws))

    assert proc.returncode == 0, proc.stderr
    final = load_params(ws / "final_model.npz")
    initial = load_params(HELLO / "initial_model.npz")
    expected = rounds * (clients + 1) / 2  # site k adds k; equal weights
    assert set(final) == set(initial)
    for name, array in final.items():
        assert array.shape == initial[name].shape
        assert np.array_equal(array, initial[name] + expected), name
    metrics = json.loads((ws / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == list(range(rounds))
    assert all(m["results"] == clients for m in metrics)
    summary = json.loads((ws / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert f"round {rounds}/{rounds}: {clients}/{clients} results" in proc.stdout
    logged = [json.loads(line) for line in (ws / "site_metrics.jsonl").read_text().splitlines()]
    assert {entry["site"] for entry in logged} == {f"site-{i}" for i in range(1, clients + 1)}
    assert (ws / "log.txt").stat().st_size > 0


@pytest.mark.parametrize("pipe", ["file", "cell"])
def test_hello_numpy_with_its_script_in_processes_of_their_own_is_exact(
    tmp_path: Path, pipe: str
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    for name in ("train.py", "initial_model.npz"):
        (job / name).write_bytes((HELLO / name).read_bytes())
    text = (HELLO / "job.yaml").read_text().replace("rounds: 5", "rounds: 2")
    (job / "job.yaml").write_text(text + f"components:\n  pipe: {pipe}\n")
    ws = tmp_path / "ws"

    proc = run_cli("run", str(job), "--clients", "3", "--workspace", str(ws))

    assert proc.returncode == 0, proc.stderr
    final = load_params(ws / "final_model.npz")
    initial = load_params(HELLO / "initial_model.npz")
    for name, array in final.items():
        assert np.array_equal(array, initial[name] + 2 * 2.0), name  # sites add 1, 2, 3
    # Each site's script ran in its own process, in its own folder.
    assert sorted(p.name for p in (ws / "trainers").iterdir()) == ["site-1", "site-2", "site-3"]
    logged = [json.loads(line) for line in (ws / "site_metrics.jsonl").read_text().splitlines()]
    assert {entry["site"] for entry in logged} == {"site-1", "site-2", "site-3"}


def test_crashing_script_fails_with_traceback_and_site(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "def train(model):\n"
        "    if flare.get_site_name() == 'site-2':\n"
        "        return 1 / 0\n"
        "    return model.params\n"
        "while flare.is_running():\n"
        "    m = flare.receive()\n"
        "    flare.send(flare.FLModel(params=train(m)))\n"
    )
    job = write_job(tmp_path / "job", script=script, initial_params={"w": np.zeros(3)})

    proc = run_cli("run", str(job), "--workspace", str(tmp_path / "ws"))

    assert proc.returncode == 1
    assert "site-2 failed in round 1: ZeroDivisionError: division by zero" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert 'train.py", line 5, in train' in proc.stderr
    assert "error: job test-job failed" in proc.stderr


def test_once_mode_keeps_script_state_across_rounds(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "calls = 0\n"
        "while flare.is_running():\n"
        "    m = flare.receive()\n"
        "    if m is None:\n"
        "        break\n"
        "    calls += 1\n"
        "    flare.send(flare.FLModel(params={'w': m.params['w'] + calls}))\n"
    )
    job = write_job(
        tmp_path / "job",
        script=script,
        rounds=3,
        launch="once",
        initial_params={"w": np.zeros(2)},
    )
    result = simulator_for(job, clients=2, threads=2, workspace=tmp_path / "ws").run()
    assert result.status == "finished", result.reason
    assert result.final_model is not None
    # The script lives for the whole job, so round r adds r (1 + 2 + 3).
    assert np.array_equal(result.final_model.params["w"], np.full(2, 6.0))


def test_per_task_mode_with_more_sites_than_threads(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "flare.send(flare.FLModel(params={'w': m.params['w'] + 1}))\n"
        "assert not flare.is_running()\n"
        "assert flare.receive() is None\n"
    )
    job = write_job(tmp_path / "job", script=script, rounds=2, initial_params={"w": np.zeros(1)})
    result = simulator_for(job, clients=40, threads=3, workspace=tmp_path / "ws").run()
    assert result.status == "finished", result.reason
    assert result.final_model is not None
    assert result.final_model.params["w"].tolist() == [2.0]


def test_received_arrays_are_read_only_in_the_simulator(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\nflare.init()\nm = flare.receive()\nm.params['w'] += 1\n"
    )
    job = write_job(tmp_path / "job", script=script, rounds=1, initial_params={"w": np.zeros(1)})
    result = simulator_for(job, clients=2, workspace=tmp_path / "ws").run()
    assert result.status == "failed"
    assert "read-only" in result.failures["site-1"].reason


def test_script_that_never_sends_fails_the_task(tmp_path: Path) -> None:
    script = "import fl_core.client as flare\nflare.init()\nflare.receive()\n"
    job = write_job(tmp_path / "job", script=script, rounds=1, initial_params={"w": np.zeros(1)})
    result = simulator_for(job, clients=2, workspace=tmp_path / "ws").run()
    assert result.status == "failed"
    assert result.failures["site-1"].reason == "the script ended without calling flare.send()"


def test_hanging_script_is_failed_after_the_task_timeout(tmp_path: Path) -> None:
    script = (
        "import threading\n"
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "if flare.get_site_name() == 'site-2':\n"
        "    threading.Event().wait(3)\n"
        "flare.send(flare.FLModel(params=m.params))\n"
    )
    job = write_job(
        tmp_path / "job",
        script=script,
        rounds=1,
        min_clients=2,
        initial_params={"w": np.zeros(1)},
        extra={"executor": {"script": "train.py", "task_timeout": 0.5}},
    )
    result = simulator_for(job, clients=2, workspace=tmp_path / "ws").run()
    assert result.status == "failed"
    assert "within 0.5 s" in result.failures["site-2"].reason


def test_sag_round_survives_a_failed_site_when_enough_remain(tmp_path: Path) -> None:
    script = (
        "import fl_core.client as flare\n"
        "flare.init()\n"
        "m = flare.receive()\n"
        "if flare.get_site_name() == 'site-3':\n"
        "    raise RuntimeError('disk full')\n"
        "flare.send(flare.FLModel(params={'w': m.params['w'] + 2}))\n"
    )
    job = write_job(
        tmp_path / "job",
        script=script,
        rounds=2,
        min_clients=2,
        initial_params={"w": np.zeros(1)},
    )
    result = simulator_for(job, clients=3, workspace=tmp_path / "ws").run()
    assert result.status == "finished", result.reason
    assert result.final_model is not None
    assert result.final_model.params["w"].tolist() == [4.0]
    assert result.failures["site-3"].reason == "RuntimeError: disk full"


def test_fewer_clients_than_min_clients_is_refused(tmp_path: Path) -> None:
    proc = run_cli("run", str(HELLO), "--clients", "1", "--workspace", str(tmp_path / "ws"))
    assert proc.returncode == 1
    assert "1 sites is fewer than min_clients 2" in proc.stderr

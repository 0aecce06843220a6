"""examples/hello-pytorch through the real `fl-core` command: federated training learns."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fl_core.model import load_params

pytest.importorskip("torch")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hello-pytorch"
CHANCE = 0.1  # ten digits

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("mode", "pipe"),
    [("simulator", None), ("simulator", "cell"), ("poc", "file")],
)
def test_hello_pytorch_accuracy_rises_well_above_chance(
    tmp_path: Path, mode: str, pipe: str | None
) -> None:
    job = tmp_path / "hello-pytorch"
    shutil.copytree(EXAMPLE, job, ignore=shutil.ignore_patterns("__pycache__"))
    if pipe is not None:  # the same script, each site's in a process of its own
        with open(job / "job.yaml", "a") as f:
            f.write(f"components:\n  pipe: {pipe}\n")
    ws = tmp_path / "ws"

    command = ["run", "--mode", mode, str(job), "--clients", "2", "--workspace", str(ws)]
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = json.loads((ws / "metrics.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert all(r["results"] == 2 for r in rounds)
    accuracy = [r["metrics"]["accuracy"] for r in rounds]
    global_accuracy = [r["metrics"]["global_accuracy"] for r in rounds]
    assert accuracy[-1] > 0.8, accuracy
    assert accuracy[-1] > accuracy[0] + 0.05, accuracy
    # The global model starts near chance and is clearly better at the end.
    assert global_accuracy[0] < 2 * CHANCE, global_accuracy
    assert global_accuracy[-1] > 0.8, global_accuracy

    logged = [json.loads(line) for line in (ws / "site_metrics.jsonl").read_text().splitlines()]
    steps = {(e["site"], e["step"]) for e in logged if e["key"] == "accuracy"}
    assert steps == {(site, step) for site in ("site-1", "site-2") for step in range(5)}

    initial = load_params(EXAMPLE / "initial_model.npz")
    final = load_params(ws / "final_model.npz")
    assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in initial.items()}


@pytest.mark.parametrize("pipe", [None, "file"])
def test_three_sites_on_a_two_site_split_say_what_happened_to_site_3(
    tmp_path: Path, pipe: str | None
) -> None:
    # job.yaml splits the data for 2 sites: site-3's script exits at its start.
    job = tmp_path / "hello-pytorch"
    shutil.copytree(EXAMPLE, job, ignore=shutil.ignore_patterns("__pycache__"))
    text = (job / "job.yaml").read_text().replace("rounds: 5", "rounds: 2")
    if pipe is not None:
        text += f"components:\n  pipe: {pipe}\n"
    (job / "job.yaml").write_text(text)
    ws = tmp_path / "ws"

    command = ["run", str(job), "--clients", "3", "--workspace", str(ws)]
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "after sending its result" not in output, output
    # In-process the runtime sees the task untaken; over a file pipe the task was
    # published, and the script exited before it opened the pipe or sent a result.
    when = (
        "before it took its first task"
        if pipe is None
        else "(?:without sending a result|before it opened its end of the pipe)"
    )
    said = (
        rf"^round 1/2: site-3 failed: the training script exited with code 1 {when}: "
        r"site-3: the data is split for 2 sites; set HELLO_PYTORCH_SITES"
    )
    assert re.search(said, proc.stdout, re.MULTILINE), output
    assert json.loads((ws / "summary.json").read_text())["script_errors"] == []

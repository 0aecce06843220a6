"""examples/hello-pytorch through the real `fl-core` command: federated training learns."""

from __future__ import annotations

import json
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

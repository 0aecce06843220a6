"""Scripts written the FLARE way end cleanly in every mode, and how a script's end is reported.

`while flare.is_running(): m = flare.receive(); ... m.params` never checks
for None: `is_running()` must wait for the next task or the end. Each mode
runs for real: in-process threads, and training processes over each pipe,
with both launch modes.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_core.testing import simulator_for, write_job

pytestmark = pytest.mark.e2e

FLARE_STYLE = """\
import fl_core.client as flare

flare.init()
while flare.is_running():
    m = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in m.params.items()},
                             meta={"num_samples": 1}))
"""

MODES = [(pipe, launch) for pipe in (None, "file", "cell") for launch in ("once", "per_task")]

IDS = [f"{p or 'inprocess'}-{m}" for p, m in MODES]


def _components(pipe: str | None) -> dict[str, object] | None:
    return (
        None if pipe is None else {"pipe": {"name": pipe, "options": {"heartbeat_interval": 0.2}}}
    )


@pytest.mark.parametrize(("pipe", "launch"), MODES, ids=IDS)
def test_a_flare_style_loop_ends_cleanly(
    tmp_path: Path, pipe: str | None, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = write_job(
        tmp_path / "job",
        script=FLARE_STYLE,
        rounds=3,
        launch=launch,
        initial_params={"w": np.zeros(2)},
        components=_components(pipe),
    )
    ws = tmp_path / "ws"
    with caplog.at_level(logging.INFO):
        result = simulator_for(job, clients=2, workspace=ws).run()
    assert result.status == "finished", result.reason
    assert result.final_model is not None
    np.testing.assert_array_equal(result.final_model.params["w"], np.full(2, 3.0))
    assert "AttributeError" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    if pipe is not None:
        for site in ("site-1", "site-2"):
            assert (ws / "trainers" / site / "stderr.log").read_text() == ""
        ended = [r.getMessage() for r in caplog.records if "training process" in r.getMessage()]
        ended = [line for line in ended if " ended (" in line]
        assert ended and all("exited with code 0" in line for line in ended), ended
    summary = json.loads((ws / "summary.json").read_text())
    assert summary["status"] == "finished"


# Sends every result, then fails on its way out: after each task (per_task),
# or at the end of the job (once).
FAILS_AFTER = """\
import fl_core.client as flare

flare.init()
while flare.is_running():
    m = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in m.params.items()},
                             meta={"num_samples": 1}))
    if flare.get_site_name() == "site-2" and m.current_round == 1:
        break
raise SystemExit("cleanup went wrong")
"""


@pytest.mark.parametrize(("pipe", "launch"), MODES, ids=IDS)
def test_a_script_failing_after_its_result_is_reported(
    tmp_path: Path, pipe: str | None, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = write_job(
        tmp_path / "job",
        script=FAILS_AFTER,
        rounds=2,
        launch=launch,
        initial_params={"w": np.zeros(2)},
        components=_components(pipe),
    )
    ws = tmp_path / "ws"
    with caplog.at_level(logging.WARNING):
        result = simulator_for(job, clients=2, workspace=ws).run()
    assert result.status == "finished", result.reason
    # per_task: after each of 2 rounds on 2 sites; once: site-2 after round 2, site-1 at the end.
    expected = (
        [("site-1", 0), ("site-1", 1), ("site-2", 0), ("site-2", 1)]
        if launch == "per_task"
        else [("site-1", 1), ("site-2", 1)]
    )
    summary = json.loads((ws / "summary.json").read_text())
    entries = sorted(summary["script_errors"], key=lambda e: (e["site"], e["round"]))
    assert [(e["site"], e["round"]) for e in entries] == expected
    assert {(e["exit_code"], e["last_line"]) for e in entries} == {(1, "cleanup went wrong")}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    line = "site-1: the training script exited with code 1 after sending its result of round 2"
    assert any(f"{line}: cleanup went wrong" in w for w in warnings), warnings


@pytest.mark.parametrize(("pipe", "launch"), [("file", "per_task"), (None, "once")])
def test_fail_on_script_error_fails_the_task_or_the_job(
    tmp_path: Path, pipe: str | None, launch: str
) -> None:
    job = write_job(
        tmp_path / "job",
        script=FAILS_AFTER,
        rounds=2,
        launch=launch,
        initial_params={"w": np.zeros(2)},
        components=_components(pipe),
        extra={"executor": {"script": "train.py", "launch": launch, "fail_on_script_error": True}},
    )
    ws = tmp_path / "ws"
    result = simulator_for(job, clients=2, workspace=ws).run()
    assert result.status == "failed"
    if launch == "per_task":  # the task whose result it sent fails: round 1 has no results
        assert "exited with code 1 after sending its result" in result.failures["site-1"].reason
    else:  # site-2 ended after round 2, site-1 at the end: the job fails after the last round
        assert "(executor.fail_on_script_error is set)" in result.reason
        assert "cleanup went wrong" in result.reason
    summary = json.loads((ws / "summary.json").read_text())
    assert summary["status"] == "failed"


def test_fail_on_script_error_must_be_true_or_false(tmp_path: Path) -> None:
    from fl_core.config import load_job
    from fl_core.errors import ConfigError

    job = write_job(
        tmp_path / "job",
        script=FLARE_STYLE,
        extra={"executor": {"script": "train.py", "fail_on_script_error": "no"}},
    )
    with pytest.raises(ConfigError, match=r"executor\.fail_on_script_error: expected true or"):
        load_job(job)


def test_the_simulator_run_prints_the_warning(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "job",
        script=FAILS_AFTER,
        rounds=2,
        launch="once",
        initial_params={"w": np.zeros(2)},
        components=_components("file"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "run", str(job), "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"^WARNING .*site-1: the training script exited with code 1 after sending its result "
        r"of round 2: cleanup went wrong$",
        proc.stderr,
        re.MULTILINE,
    ), proc.stderr

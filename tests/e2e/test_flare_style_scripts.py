"""Scripts written the FLARE way end cleanly in every mode, and how a script's end is reported.

`while flare.is_running(): m = flare.receive(); ... m.params` never checks
for None: `is_running()` must wait for the next task or the end. Each mode
runs for real: in-process threads, and training processes over each pipe,
with both launch modes.
"""

from __future__ import annotations

import json
import logging
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


def _components(pipe: str | None) -> dict[str, object] | None:
    return (
        None if pipe is None else {"pipe": {"name": pipe, "options": {"heartbeat_interval": 0.2}}}
    )


@pytest.mark.parametrize(
    ("pipe", "launch"), MODES, ids=[f"{p or 'inprocess'}-{m}" for p, m in MODES]
)
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

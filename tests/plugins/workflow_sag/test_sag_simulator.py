"""The `sag` workflow wired into the real simulator container (plugin level four)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_core.testing import simulator_for, write_job

pytestmark = pytest.mark.e2e

# site-k adds k to the weights and reports k samples, so a round adds
# sum(k * k) / sum(k): 5/3 with two sites.
SCRIPT = (
    "import fl_core.client as flare\n"
    "flare.init()\n"
    "k = int(flare.get_site_name().split('-')[1])\n"
    "while flare.is_running():\n"
    "    m = flare.receive()\n"
    "    if m is None:\n"
    "        break\n"
    "    flare.send(flare.FLModel(params={'w': m.params['w'] + k},\n"
    "                             metrics={'loss': float(k)}, meta={'num_samples': k}))\n"
)


def test_sag_averages_by_num_samples_in_the_simulator(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "job",
        script=SCRIPT,
        rounds=3,
        min_clients=2,
        initial_params={"w": np.zeros(2, dtype=np.float32)},
    )
    result = simulator_for(job, clients=2, workspace=tmp_path / "ws").run()
    assert result.status == "finished", result.reason
    assert result.final_model is not None
    w = result.final_model.params["w"]
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, np.full(2, 3 * 5 / 3, dtype=np.float32), rtol=1e-6)
    assert [m["round"] for m in result.metrics] == [0, 1, 2]
    assert result.metrics[-1]["metrics"] == {"loss": pytest.approx(5 / 3)}

"""A whole job over real tcp cells: server, server job, two sites with client jobs.

The results are 40 MiB, far over the stream threshold, so the server job
folds them array by array while they arrive; the average must be exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.timer import Timer
from fl_core.config import LaunchMode
from fl_core.model import FLModel
from fl_core.roles.client_job.in_process import InProcessExecutor
from fl_core.roles.client_job.runner import ClientRunner
from fl_core.roles.server_job.runner import ServerRunner
from fl_plugins.transport_tcp.transport import TcpTransport
from fl_plugins.workflow_sag.workflow import ScatterAndGather

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024

# site-1 adds 1 with weight 1, site-2 adds 5 with weight 3: each round adds exactly 4.
SCRIPT = (
    "import fl_core.client as flare\n"
    "flare.init()\n"
    "k = int(flare.get_site_name().split('-')[1])\n"
    "delta, samples = {1: (1.0, 1), 2: (5.0, 3)}[k]\n"
    "m = flare.receive()\n"
    "params = {name: a + a.dtype.type(delta) for name, a in m.params.items()}\n"
    "flare.send(flare.FLModel(params=params, meta={'num_samples': samples}))\n"
)


def test_sag_over_tcp_folds_streamed_results_exactly(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    transport, timer = TcpTransport(), Timer()
    cells: list[Cell] = []

    def cell(name: str, parent_url: str | None) -> Cell:
        made = Cell(name, transport)
        cells.append(made)
        if parent_url is not None:
            made.connect_parent(parent_url)
        return made

    executor = InProcessExecutor(
        script,
        LaunchMode.PER_TASK,
        threads=2,
        job_id="j",
        logs=lambda site, key, value, step: None,
        timer=timer,
    )
    runners: list[ClientRunner] = []
    try:
        url = cell("server", None).listen("tcp://127.0.0.1:0")
        server = ServerRunner(
            cell("server.j", url),
            "j",
            tmp_path / "ws",
            ScatterAndGather(min_clients=2, rounds=2),
            ["site-1", "site-2"],
        )
        for site in ("site-1", "site-2"):
            site_url = cell(site, url).listen("tcp://127.0.0.1:0")
            runners.append(ClientRunner(cell(f"{site}.j", site_url), site, "server.j", executor))
        for runner in runners:
            runner.start()
        server.wait_for_sites(2, 30)
        big = np.arange(10 * MiB, dtype=np.float32) % 1024  # 40 MiB, integer-valued
        bias = np.arange(6, dtype=np.float64).reshape(2, 3)
        final = server.run(FLModel(params={"big": big.copy(), "bias": bias.copy()}))
    finally:
        for runner in runners:
            runner.stop()
        executor.stop("test over", 5)
        for runner in runners:
            runner.done.wait(10)
        for made in reversed(cells):
            made.close()
        transport.close()
        timer.close()
    assert [sorted(m["sites"]) for m in server.record.metrics] == [["site-1", "site-2"]] * 2  # type: ignore[call-overload]
    assert [m["failed"] for m in server.record.metrics] == [{}, {}]
    assert final.params["big"].dtype == np.float32
    np.testing.assert_array_equal(final.params["big"], big + 8)
    np.testing.assert_array_equal(final.params["bias"], bias + 8)

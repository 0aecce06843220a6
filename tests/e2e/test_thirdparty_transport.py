"""A transport from a package of its own (tests/thirdparty_transport), run end to end.

`fl-core-transport-uds` is installed like any third-party plugin and registers
`uds` through its entry point; nothing in fl-core names it. A transport
author tries a transport in the simulator with one line in the job
(`components: {transport: uds}`) and in a POC with `poc prepare --transport uds`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fl_transport_uds.urls import socket_path

from fl_core.config.federation import load_federation

from .test_poc_cli import assert_exact, hello_job, run_cli, wait_final, wait_gone

pytestmark = pytest.mark.e2e

LISTENING = re.compile(r"uds: listening on (uds://\S+)")
"""What the uds transport logs for each listener it opens."""


def socket_file(url: str) -> Path:
    return Path(socket_path(url))


def test_the_simulator_runs_hello_numpy_over_the_uds_transport_exactly(tmp_path: Path) -> None:
    job = hello_job(tmp_path / "job", rounds=2)
    (job / "job.yaml").write_text(
        (job / "job.yaml").read_text() + "components:\n  transport: uds\n"
    )
    ws = tmp_path / "ws"

    proc = run_cli("run", str(job), "--clients", "3", "--workspace", str(ws))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_exact(ws, rounds=2, clients=3)
    # The simulated federation really linked its cells over Unix sockets ...
    urls = LISTENING.findall((ws / "log.txt").read_text())
    assert urls, "the run's log shows no uds listener"
    # ... and left none of their socket files behind.
    assert [url for url in urls if socket_file(url).exists()] == []


def test_a_poc_prepared_with_the_uds_transport_runs_hello_numpy_exactly(tmp_path: Path) -> None:
    job = hello_job(tmp_path / "job", rounds=2)
    ws = tmp_path / "poc"
    prepared = run_cli("poc", "prepare", "--workspace", str(ws), "--transport", "uds")
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert "over uds" in prepared.stdout
    server_url = ""
    try:
        started = run_cli("poc", "start", "--workspace", str(ws))
        assert started.returncode == 0, started.stdout + started.stderr
        server_url = load_federation(ws).url_file.read_text().strip()
        assert socket_file(server_url).is_socket()  # the server parent listens on uds

        submitted = run_cli("job", "submit", str(job), "--workspace", str(ws))
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = submitted.stdout.strip()
        record = wait_final(ws, job_id)
        assert record["state"] == "finished", record
        out = tmp_path / "out"
        got = run_cli("job", "download", job_id, "--output", str(out), "--workspace", str(ws))
        assert got.returncode == 0, got.stdout + got.stderr
        assert_exact(out, rounds=2, clients=2)
    finally:
        stopped = run_cli("poc", "stop", "--workspace", str(ws))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert wait_gone(ws) == []
    assert not socket_file(server_url).exists()  # the server removed its socket file

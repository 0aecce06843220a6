"""Who may act in a POC federation, and how it is proved: the attacks of a local user.

A POC of real processes (`fl-core poc prepare` + `poc start`), attacked by a
process that knows the server parent's URL (it is in a file of the
workspace) but not the secrets `poc prepare` wrote: it tries to act as an
admin, as a site, as a site's client job, as a server job. Then a member
that did prove itself (an admin) tries what it may not: join a job as a
site, or command a client parent. Each is refused and logged, and a job
running meanwhile still finishes with the exact model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cli import poc_federation as poc
from fl_core.config.federation import FederationConfig
from fl_core.containers.poc import admin_client
from fl_core.credentials import read_secret
from fl_core.errors import CellError, RemoteError
from fl_core.roles.protocol.parent import Field, ParentTopic
from fl_core.roles.protocol.task import Topic
from fl_core.testing import write_job
from fl_plugins.transport_tcp.transport import TcpTransport

pytestmark = pytest.mark.e2e

WAIT = 60.0

TRAIN = """\
import pathlib, sys, time
import fl_core.client as flare

flare.init()
site = flare.get_site_name()
delta = float(site.rsplit("-", 1)[1])
hold = pathlib.Path(sys.argv[1])
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    hold.with_name(f"{site}-has-a-task").touch()
    while hold.exists():  # the test lets the job go on once the attacks are done
        time.sleep(0.05)
    flare.send(flare.FLModel(params={k: v + delta for k, v in model.params.items()}))
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return value


def federation_pids(config: FederationConfig) -> list[int]:
    """Every live process whose argv names this federation (parents, jobs, supervisors)."""
    marker = str(config.source).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry))
    return found


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[FederationConfig]:
    config = poc.prepare(tmp_path / "poc", 2)
    poc.start(config)
    try:
        yield config
    finally:
        poc.stop(config)
        wait_for("no process of the federation left", lambda: not federation_pids(config), 30)


@pytest.fixture
def transport() -> Iterator[TcpTransport]:
    transport = TcpTransport()
    yield transport
    transport.close()


def url_of(config: FederationConfig) -> str:
    return config.url_file.read_text().strip()


def join(transport: TcpTransport, name: str, url: str, key: bytes | None = None) -> Cell:
    cell = Cell(name, transport)
    try:
        cell.connect_parent(url, timeout=10, reconnect=False, key=key)
    except BaseException:
        cell.close()
        raise
    return cell


def server_log(config: FederationConfig) -> str:
    return (config.server_dir / "log.txt").read_text(errors="replace")


def test_nobody_without_a_secret_gets_into_the_federation(
    federation: FederationConfig, transport: TcpTransport, tmp_path: Path
) -> None:
    config, url = federation, url_of(federation)
    hold = tmp_path / "hold"
    hold.touch()
    job = write_job(tmp_path / "job", script=TRAIN, rounds=2, initial_params={"w": np.zeros(3)})
    job_yaml = job / "job.yaml"
    job_yaml.write_text(
        job_yaml.read_text().replace(
            "  script: train.py\n", f"  script: train.py\n  args: ['{hold}']\n"
        )
    )
    with admin_client(config) as admin:
        job_id = admin.submit(job)
        # Every process of the job is up once each site's script holds its task.
        for site in config.sites:
            wait_for(f"{site}'s task", (tmp_path / f"{site}-has-a-task").exists)
        attempts = {
            # the attack of the report: an admin cell, knowing only the URL
            "admin-00000000": None,
            # a site, a site that is not one, a client job, a server job
            "site-1": None,
            "site-3": None,
            f"mallory.{job_id}": None,
            f"site-1.{job_id}": None,
            f"server.{job_id}": None,
            # and with a guessed key: it is asked to prove it, and cannot
            "admin-11111111": b"a guess",
        }
        for name, key in attempts.items():
            with pytest.raises(CellError, match="refused cell"):
                join(transport, name, url, key)
        # Each refusal is a warning in the server parent's log.
        for name in attempts:
            wait_for(f"the warning about {name}", lambda n=name: f"'{n}'" in server_log(config))
        # The client parents take no one as a child but their own client jobs.
        site_url = next(s["url"] for s in admin.sites() if s["site"] == "site-1")
        for name in (f"site-1.{job_id}", "site-1.x"):
            with pytest.raises(CellError, match="refused cell"):
                join(transport, name, site_url, b"x" * 32)

        # A member that proved itself may still only do what its role allows.
        rogue = join(transport, "admin-22222222", url, read_secret(config.admin_key_file))
        try:
            for topic in (Topic.JOIN, Topic.GET_TASK):
                with pytest.raises(RemoteError, match="is not a client job of job"):
                    rogue.request(f"server.{job_id}", Channel.SERVER_MAIN, topic, None, 10)
            for topic, payload in (
                (ParentTopic.DEPLOY, b"PK"),
                (ParentTopic.START_JOB, {Field.JOB_ID: job_id, Field.TOKEN: "t"}),
                (ParentTopic.ABORT_JOB, {Field.JOB_ID: job_id}),
                (ParentTopic.SHUTDOWN, {}),
            ):
                with pytest.raises(RemoteError, match="may not command a client parent"):
                    rogue.request("site-1", Channel.CLIENT_MAIN, topic, payload, 10)
        finally:
            rogue.close()

        hold.unlink()
        record = wait_for(
            "the job to end",
            lambda: (r := admin.status(job_id))["state"] in ("finished", "failed") and r,
        )
        assert record["state"] == "finished", record
        assert sorted(record["sites"]) == ["site-1", "site-2"]
        out = admin.download(job_id, tmp_path / "out")
    with np.load(out / "final_model.npz") as npz:
        np.testing.assert_array_equal(npz["w"], np.full(3, 2 * 1.5))
    assert "mallory" not in (out / "metrics.json").read_text()
    # Both parents of site-1 and site-2 still run: a refusal costs no one anything.
    assert poc.status(config)["running"]


def test_no_secret_is_in_any_argv_or_log(federation: FederationConfig, tmp_path: Path) -> None:
    config = federation
    secrets = [read_secret(config.admin_key_file)]
    secrets += [read_secret(config.site_key_file(site)) for site in config.sites]
    hold = tmp_path / "hold"
    hold.touch()
    job = write_job(tmp_path / "job", script=TRAIN, rounds=1, initial_params={"w": np.zeros(3)})
    job_yaml = job / "job.yaml"
    job_yaml.write_text(
        job_yaml.read_text().replace(
            "  script: train.py\n", f"  script: train.py\n  args: ['{hold}']\n"
        )
    )
    with admin_client(config) as admin:
        job_id = admin.submit(job)
        wait_for("the job's processes", lambda: len(federation_pids(config)) >= 5)
        wait_for("the job to run", lambda: admin.status(job_id)["state"] == "running")
        argvs = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in federation_pids(config)]
        hold.unlink()
        wait_for("the job to end", lambda: admin.status(job_id)["state"] == "finished")
    logs = [p.read_bytes() for p in config.root.rglob("*") if p.is_file() and p.suffix != ".key"]
    assert len(argvs) >= 5 and logs
    for secret in secrets:
        for form in (secret, secret.hex().encode()):
            assert not any(form in text for text in argvs + logs)


def test_a_federation_without_its_credentials_does_not_start(tmp_path: Path) -> None:
    config = poc.prepare(tmp_path / "poc", 1)
    config.server_key_file("site-1").unlink()
    with pytest.raises(poc.PocStartError, match=r"site-1\.key: not found"):
        poc.start(config, timeout=30)
    assert not federation_pids(config)


def test_an_admin_command_without_the_secret_fails_and_says_why(
    federation: FederationConfig, tmp_path: Path
) -> None:
    config = federation
    config.admin_key_file.rename(tmp_path / "moved.key")
    result = subprocess.run(
        [Path(sys.executable).parent / "fl-core", "job", "list", "--workspace", str(config.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    (tmp_path / "moved.key").rename(config.admin_key_file)
    assert result.returncode != 0
    assert f"credential {config.admin_key_file}: not found" in result.stderr

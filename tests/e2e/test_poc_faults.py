"""Faults in a POC federation of real processes (issue 4): what breaks, what lives on.

Every test starts a server parent and client parents as subprocesses of the
test, with their federation file in the test's `tmp_path`. Every process of
the federation (parents, job processes, their supervisors) carries that file
in its argv, so at teardown the fixture finds them all in /proc and fails
the test if any is still alive once the federation is shut down.

The test jobs are hello-numpy's arithmetic: site N adds N to the model each
round, so the global model after R rounds from zeros is R times the mean of
the deltas of the sites that answered. With sites 1, 2 and 3, losing site 2
keeps the mean at 2, so the final model is exact whichever round it was lost in.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.cell.channels import Channel
from fl_core.cli.poc_federation import write_credentials
from fl_core.config.federation import federation_yaml, load_federation
from fl_core.containers.poc import admin_client
from fl_core.errors import RemoteError
from fl_core.roles.admin.client import AdminClient, AdminRequestError
from fl_core.roles.protocol.parent import AdminTopic, ParentTopic
from fl_core.testing import write_job

pytestmark = pytest.mark.e2e

FINAL = ("finished", "failed", "aborted")
WAIT = 60.0
"""Seconds any one wait may take; far more than any step needs on a slow machine."""

TRAIN = """\
import os, pathlib, sys, time
import fl_core.client as flare

opts = dict(arg.split("=", 1) for arg in sys.argv[1:])
marks = pathlib.Path(opts["marks"])
flare.init()
site = flare.get_site_name()
delta = float(site.rsplit("-", 1)[1])
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    r = model.current_round
    # The mark says "this site is inside round r", and which process runs it.
    (marks / f"{site}-r{r}").write_text(str(os.getpid()))
    if opts.get("fail") == f"{site}-r{r}":
        raise RuntimeError(f"boom at {site} in round {r}")
    if opts.get("hold") == f"{site}-r{r}":
        time.sleep(60)  # until the test kills this process: it is surely mid-round
    time.sleep(float(opts.get("sleep", "0")))
    params = {name: array + delta for name, array in model.params.items()}
    flare.send(flare.FLModel(params=params, meta={"num_samples": 10}))
"""


def make_job(
    root: Path,
    name: str,
    *,
    rounds: int = 3,
    min_clients: int = 2,
    sleep: float = 0.0,
    fail: str = "",
    hold: str = "",
    options: dict[str, Any] | None = None,
) -> Path:
    """A hello-numpy-like job in `root/name`; its marks go to `root/name-marks`."""
    marks = root / f"{name}-marks"
    marks.mkdir()
    args = [f"marks={marks}", f"sleep={sleep}", f"fail={fail}", f"hold={hold}"]
    folder = write_job(
        root / name,
        script=TRAIN,
        name=name,
        min_clients=min_clients,
        rounds=rounds,
        workflow={"name": "sag", "options": {"task_timeout": 60, **(options or {})}},
        initial_params={"w": np.zeros(3), "b": np.zeros(2)},
    )
    job_yaml = folder / "job.yaml"
    job_yaml.write_text(
        job_yaml.read_text().replace(
            "  script: train.py\n", "  script: train.py\n  args: " + repr(args) + "\n"
        )
    )
    return folder


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True while `pid` is a process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Federation:
    """A POC federation in `root`: SP and CPs are subprocesses of the test."""

    def __init__(self, root: Path, sites: int, server: dict[str, Any]) -> None:
        self.root = root
        self.sites = [f"site-{i}" for i in range(1, sites + 1)]
        settings = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.5, **server}
        (root / "federation.yaml").write_text(federation_yaml("poc", self.sites, server=settings))
        self.config = load_federation(root)
        write_credentials(self.config)
        self.marker = str(self.config.source)
        self.server: subprocess.Popen[bytes] | None = None
        self.clients: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: list[subprocess.Popen[bytes]] = []
        self._admin: AdminClient | None = None

    # --- processes ---------------------------------------------------------------

    def _spawn(self, folder: Path, *args: str) -> subprocess.Popen[bytes]:
        folder.mkdir(exist_ok=True)
        with open(folder / "log.txt", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "fl_core.processes.main", *args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def start_server(self) -> None:
        """Start SP (a fresh one each time: a restart after a kill or a stop)."""
        assert self.server is None or self.server.poll() is not None
        if self.server is not None:
            self.stopped.append(self.server)
        url_file = self.config.url_file
        old = url_file.read_text() if url_file.is_file() else ""  # left by a killed SP
        self.server = self._spawn(self.config.server_dir, "server-parent", self.marker)
        wait_for(
            "the server parent's URL",
            lambda: url_file.is_file() and url_file.read_text() not in ("", old),
        )

    def start(self) -> Federation:
        """Start SP and every CP; return once every site is registered."""
        self.start_server()
        for site in self.sites:
            self.start_client(site)
        self.wait_sites(set(self.sites))
        return self

    def start_client(self, site: str) -> None:
        """Start the CP of `site` (again, after a kill)."""
        old = self.clients.get(site)
        if old is not None:
            assert old.poll() is not None
            self.stopped.append(old)
        self.clients[site] = self._spawn(
            self.config.site_dir(site), "client-parent", self.marker, site
        )

    def processes(self) -> dict[int, list[str]]:
        """Every live process of this federation (argv names its file), but not the test."""
        found: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            except OSError:
                continue
            if any(self.marker in arg for arg in argv) and alive(int(entry)):
                found[int(entry)] = argv
        return found

    def job_processes(self, job_id: str) -> dict[int, list[str]]:
        """The live processes of one job: its server job, client jobs and their supervisors."""
        return {pid: argv for pid, argv in self.processes().items() if job_id in argv}

    def pid_of(self, role: str, job_id: str, site: str = "") -> int:
        """The pid of a job process (not its supervisor): role `server-job` or `client-job`."""

        def find() -> int:
            for pid, argv in self.processes().items():
                if argv[1:4] == ["-m", "fl_core.processes.main", role] and job_id in argv:
                    if not site or site in argv:
                        return pid
            return 0

        return int(wait_for(f"the {role} of {job_id} {site}", find))

    # --- admin -------------------------------------------------------------------------

    @property
    def admin(self) -> AdminClient:
        """An admin connected to the current SP."""
        if self._admin is None:
            self._admin = admin_client(self.config, wait=WAIT).connect()
        return self._admin

    def drop_admin(self) -> None:
        """Forget the admin connection (its SP is gone)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    def alive_sites(self) -> set[str]:
        return {s["site"] for s in self.admin.sites()}

    def wait_sites(self, sites: set[str]) -> None:
        wait_for(f"sites {sorted(sites)} registered", lambda: self.alive_sites() == sites)

    def wait_state(self, job_id: str, states: tuple[str, ...] = FINAL) -> dict[str, Any]:
        """Wait until the job's record is in one of `states`; return the record."""

        def check() -> dict[str, Any] | None:
            record = self.admin.status(job_id)
            return record if record["state"] in states else None

        return dict(wait_for(f"job {job_id} to be {' or '.join(states)}", check))

    def model(self, job_id: str) -> dict[str, np.ndarray]:
        out = self.admin.download(job_id, self.root / f"download-{job_id}")
        with np.load(out / "final_model.npz") as npz:
            return {name: npz[name] for name in npz.files}

    def run_ok(self, name: str, rounds: int = 2) -> None:
        """A next job runs fine: it finishes with the exact model of every site's delta."""
        job_id = self.admin.submit(make_job(self.root, name, rounds=rounds))
        record = self.wait_state(job_id)
        assert record["state"] == "finished", record
        mean = np.mean([float(s.rsplit("-", 1)[1]) for s in record["sites"]])
        assert sorted(record["sites"]) == sorted(self.alive_sites())
        for array in self.model(job_id).values():
            np.testing.assert_array_equal(array, rounds * mean)
        wait_for(f"the processes of {job_id} gone", lambda: not self.job_processes(job_id))

    def parents_alive(self) -> None:
        assert self.server is not None and self.server.poll() is None
        for site, proc in self.clients.items():
            assert proc.poll() is None, f"the client parent of {site} exited ({proc.returncode})"

    # --- teardown ------------------------------------------------------------------------

    def shutdown(self) -> list[str]:
        """Shut everything down; return what was left behind (and is now killed)."""
        if self.server is not None and self.server.poll() is None:
            try:
                self.admin.shutdown()
            except Exception:
                self.server.terminate()
        self.drop_admin()
        for proc in [*self.stopped, self.server, *self.clients.values()]:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 10
        left = self.processes()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.processes()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return [f"{pid}: {' '.join(argv)}" for pid, argv in left.items()]


@pytest.fixture
def poc(tmp_path: Path) -> Iterator[Callable[..., Federation]]:
    """`poc(sites=3, max_jobs=2, ...)`: a started federation; at teardown nothing may be left."""
    made: list[Federation] = []

    def start(sites: int = 3, **server: Any) -> Federation:
        federation = Federation(tmp_path, sites, server)
        made.append(federation)
        return federation.start()

    yield start
    left = [line for federation in made for line in federation.shutdown()]
    assert not left, "processes left behind:\n" + "\n".join(left)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(f"process {pid} gone", lambda: not alive(pid))


def wait_mark(job: Path, mark: str) -> int:
    """Wait until a site enters a round (`site-2-r1`); the pid of its client job."""
    path = job.parent / f"{job.name}-marks" / mark
    return int(wait_for(f"mark {mark} of {job.name}", lambda: path.is_file() and path.read_text()))


# --- 1: a client job killed mid-round --------------------------------------------------


def test_killed_client_job_leaves_the_round_which_goes_on(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=3)
    job = make_job(tmp_path, "tolerant", rounds=3, min_clients=2, hold="site-2-r1")
    job_id = fed.admin.submit(job)
    pid = wait_mark(job, "site-2-r1")
    assert pid == fed.pid_of("client-job", job_id, "site-2")
    kill(pid)
    record = fed.wait_state(job_id)
    assert record["state"] == "finished", record
    for array in fed.model(job_id).values():
        np.testing.assert_array_equal(array, 3 * 2.0)  # mean of 1, 2, 3 and of 1, 3: both 2
    assert not (job.parent / "tolerant-marks" / "site-2-r2").exists()  # site-2 left the job
    fed.parents_alive()
    assert fed.alive_sites() == {"site-1", "site-2", "site-3"}


def test_killed_client_job_fails_a_job_that_needs_every_site(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=3)
    job = make_job(tmp_path, "strict", rounds=3, min_clients=3, hold="site-2-r1")
    job_id = fed.admin.submit(job)
    kill(wait_mark(job, "site-2-r1"))
    record = fed.wait_state(job_id)
    assert record["state"] == "failed", record
    assert "site-2" in record["reason"] and "SIGKILL" in record["reason"], record
    wait_for("every process of the job gone", lambda: not fed.job_processes(job_id))
    fed.parents_alive()
    fed.run_ok("after")


# --- 2: a client parent killed --------------------------------------------------------


def test_killed_client_parent_is_dead_after_the_timeout_and_its_job_goes(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=3)
    job = make_job(tmp_path, "tolerant", rounds=3, min_clients=2, hold="site-2-r1")
    job_id = fed.admin.submit(job)
    client_job = wait_mark(job, "site-2-r1")
    kill(fed.clients["site-2"].pid)
    fed.clients["site-2"].wait()
    wait_for("site-2 declared dead", lambda: "site-2" not in fed.alive_sites())
    wait_for("the client job of site-2 gone", lambda: not alive(client_job))
    record = fed.wait_state(job_id)
    assert record["state"] == "finished", record
    for array in fed.model(job_id).values():
        np.testing.assert_array_equal(array, 3 * 2.0)
    assert fed.alive_sites() == {"site-1", "site-3"}
    fed.start_client("site-2")  # a restarted client parent rejoins, and works
    fed.wait_sites({"site-1", "site-2", "site-3"})
    fed.run_ok("after")


def test_killed_client_parent_fails_a_job_that_needs_every_site(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    job = make_job(tmp_path, "strict", rounds=3, min_clients=2, hold="site-2-r1")
    job_id = fed.admin.submit(job)
    wait_mark(job, "site-2-r1")
    kill(fed.clients["site-2"].pid)
    record = fed.wait_state(job_id)
    assert record["state"] == "failed", record
    assert "site-2" in record["reason"], record
    wait_for("every process of the job gone", lambda: not fed.job_processes(job_id))
    assert fed.alive_sites() == {"site-1"}


# --- 3: the server job killed ---------------------------------------------------------


def test_killed_server_job_fails_the_job_and_the_parents_live_on(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    job = make_job(tmp_path, "doomed", rounds=3, sleep=0.3)
    job_id = fed.admin.submit(job)
    wait_mark(job, "site-1-r1")
    kill(fed.pid_of("server-job", job_id))
    record = fed.wait_state(job_id)
    assert record["state"] == "failed", record
    assert "server job was killed by SIGKILL" in record["reason"], record
    wait_for("every process of the job gone", lambda: not fed.job_processes(job_id))
    fed.parents_alive()
    fed.run_ok("after")


# --- 4: abort -----------------------------------------------------------------------------


def test_abort_stops_every_process_and_the_parents_live_on(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    job = make_job(tmp_path, "aborted", rounds=50, sleep=0.3)
    job_id = fed.admin.submit(job)
    wait_mark(job, "site-2-r1")
    assert fed.job_processes(job_id)
    record = fed.admin.abort(job_id)
    assert record["state"] == "aborted", record
    assert "abort" in record["reason"], record
    assert not fed.job_processes(job_id)  # abort answers once every process is gone
    assert fed.admin.status(job_id)["state"] == "aborted"
    fed.parents_alive()
    fed.run_ok("after")


# --- 5: the server parent restarted -------------------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restarted_server_parent_keeps_its_jobs_and_its_sites(
    poc: Callable[..., Federation], tmp_path: Path, how: signal.Signals
) -> None:
    fed = poc(sites=2)
    done = fed.admin.submit(make_job(tmp_path, "done", rounds=2))
    assert fed.wait_state(done)["state"] == "finished"
    job = make_job(tmp_path, "cut", rounds=50, sleep=0.3)
    cut = fed.admin.submit(job)
    wait_mark(job, "site-1-r1")
    assert fed.server is not None
    fed.server.send_signal(how)
    fed.server.wait(30)
    fed.drop_admin()
    wait_for("the job's processes gone", lambda: not fed.job_processes(cut))
    fed.start_server()
    records = {r["job_id"]: r for r in fed.admin.list()}
    assert list(records) == [done, cut]
    assert records[done]["state"] == "finished"
    assert records[cut]["state"] == "failed", records[cut]
    assert "server parent stopped" in records[cut]["reason"], records[cut]
    fed.wait_sites({"site-1", "site-2"})  # the client parents come back by themselves
    for site, proc in fed.clients.items():
        assert proc.poll() is None, site
    fed.run_ok("after")


# --- 6: two jobs ---------------------------------------------------------------------------


def _both_jobs(fed: Federation, tmp_path: Path) -> tuple[str, str, list[set[str]]]:
    first = fed.admin.submit(make_job(tmp_path, "first", rounds=3, sleep=0.2))
    second = fed.admin.submit(make_job(tmp_path, "second", rounds=3, sleep=0.2))
    seen: list[set[str]] = []

    def both_final() -> bool:
        states = {r["job_id"]: r["state"] for r in fed.admin.list()}
        seen.append({j for j in (first, second) if states[j] == "running"})
        return all(states[j] in FINAL for j in (first, second))

    wait_for("both jobs to end", both_final)
    for job_id in (first, second):
        assert fed.admin.status(job_id)["state"] == "finished"
        for array in fed.model(job_id).values():
            np.testing.assert_array_equal(array, 3 * 1.5)
    return first, second, seen


def test_two_jobs_run_at_once_with_two_slots(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2, max_jobs=2)
    first, second, seen = _both_jobs(fed, tmp_path)
    assert {first, second} in seen  # both were running at the same moment


def test_a_second_job_waits_for_the_only_slot(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2, max_jobs=1)
    first, second, seen = _both_jobs(fed, tmp_path)
    assert {first, second} not in seen
    a, b = fed.admin.status(first), fed.admin.status(second)
    assert b["started"] >= a["ended"]


# --- 7: malformed packages --------------------------------------------------------------


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_malformed_packages_are_refused_and_a_running_job_goes_on(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    job = make_job(tmp_path, "running", rounds=3, sleep=0.3)
    job_id = fed.admin.submit(job)
    wait_mark(job, "site-1-r0")
    good_yaml = (job / "job.yaml").read_bytes()
    train = (job / "train.py").read_bytes()
    cases = {
        "no job.yaml": (_zip({"train.py": train}), "job.yaml"),
        "bad yaml": (_zip({"job.yaml": b"name: [unclosed\n", "train.py": train}), "YAML"),
        "../ entry": (
            _zip({"job.yaml": good_yaml, "train.py": train, "../escaped.txt": b"x"}),
            "'..'",
        ),
        "not a zip": (b"this is not a zip", "zip"),
    }
    for case, (package, words) in cases.items():
        with pytest.raises(AdminRequestError) as caught:
            fed.admin._request(AdminTopic.SUBMIT, package)
        assert "job package" in caught.value.reason and words in caught.value.reason, (
            case,
            caught.value.reason,
        )
    assert not (tmp_path / "server" / "escaped.txt").exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert [r["job_id"] for r in fed.admin.list()] == [job_id]
    record = fed.wait_state(job_id)
    assert record["state"] == "finished", record
    for array in fed.model(job_id).values():
        np.testing.assert_array_equal(array, 3 * 1.5)
    fed.parents_alive()


# --- 8: a training script that raises ----------------------------------------------------


def test_a_raising_script_fails_the_job_with_its_error(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    job_id = fed.admin.submit(make_job(tmp_path, "raises", rounds=3, fail="site-2-r1"))
    record = fed.wait_state(job_id)
    assert record["state"] == "failed", record
    assert "site-2" in record["reason"] and "boom at site-2 in round 1" in record["reason"]
    summary = fed.admin.download(job_id, tmp_path / "raises-out") / "summary.json"
    failures = json.loads(summary.read_text())["failures"]
    assert "boom at site-2 in round 1" in failures["site-2"]["traceback"], failures
    wait_for("every process of the job gone", lambda: not fed.job_processes(job_id))
    fed.parents_alive()
    assert fed.alive_sites() == {"site-1", "site-2"}
    fed.run_ok("after")


# --- commands come from a job process's parent only ------------------------------------------


def test_a_server_job_takes_no_command_from_anyone_but_its_parent(
    poc: Callable[..., Federation], tmp_path: Path
) -> None:
    fed = poc(sites=2)
    job = make_job(tmp_path, "guarded", rounds=3, sleep=0.3)
    job_id = fed.admin.submit(job)
    wait_mark(job, "site-1-r1")
    admin_cell = fed.admin._cell
    assert admin_cell is not None
    for topic, payload in (
        (ParentTopic.ABORT, {"reason": "forged"}),
        (ParentTopic.SITE_LOST, {"site": "site-1", "reason": "forged"}),
    ):
        with pytest.raises(RemoteError, match="may not command"):
            admin_cell.request(f"server.{job_id}", Channel.SERVER_COMMAND, topic, payload, 10)
    record = fed.wait_state(job_id)
    assert record["state"] == "finished", record
    assert sorted(record["sites"]) == ["site-1", "site-2"]
    for array in fed.model(job_id).values():
        np.testing.assert_array_equal(array, 3 * 1.5)

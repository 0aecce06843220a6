"""Every admin action goes past the federation's security provider before it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from fl_core.audit import AUDIT_FILE, AuditLog
from fl_core.cli import poc_federation as poc
from fl_core.config.federation import FederationConfig
from fl_core.containers.poc import admin_client, poc_container
from fl_core.roles.admin.client import AdminRequestError
from fl_core.roles.server_parent.process import ServerParent
from fl_core.spec.security import Credentials, Identity, SecurityProvider
from fl_core.testing import write_job

SCRIPT = "import fl_core.client as flare\nflare.init()\n"


class Refusing(SecurityProvider):
    """Allows every action but those named; records what it was asked."""

    def __init__(self, refused: set[str]) -> None:
        self.refused = refused
        self.asked: list[tuple[str, str, str]] = []  # (actor, right, owner)

    def credentials(self, identity: str) -> Credentials | None:
        return None

    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        self.asked.append((actor.name, action, owner.name if owner else ""))
        return f"the right {action!r} is refused here" if action in self.refused else ""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FederationConfig, Refusing]]:
    config = poc.prepare(tmp_path / "poc", 2, "tcp")
    security = Refusing({"submit_job", "shutdown"})
    container = poc_container(federation=config, identity="server")
    container.security.override(providers.Object(security))
    parent = container.server_parent()
    assert isinstance(parent, ServerParent)
    stop = threading.Event()
    thread = threading.Thread(target=parent.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not config.url_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield config, security
    finally:
        stop.set()
        thread.join(30)


def test_a_refused_action_names_the_missing_right_and_changes_nothing(
    served: tuple[FederationConfig, Refusing], tmp_path: Path
) -> None:
    config, security = served
    job = write_job(tmp_path / "job", script=SCRIPT)
    with admin_client(config) as admin:
        with pytest.raises(
            AdminRequestError,
            match=r"may not submit_job \(the federation\): the right 'submit_job'",
        ):
            admin.submit(job)
        with pytest.raises(AdminRequestError, match="may not shutdown"):
            admin.shutdown()
        assert admin.list() == []  # nothing was submitted
        assert admin.sites() == []  # and the server still answers: it did not shut down
        name = admin.name
    assert (name, "submit_job", "") in security.asked
    assert (name, "view_job", "") in security.asked
    assert (name, "shutdown", "") in security.asked
    refused = [e for e in AuditLog(config.server_dir / AUDIT_FILE).entries() if e["who"] == name]
    assert [(e["action"], e["result"].split(":")[0]) for e in refused] == [
        ("submit_job", "refused"),
        ("shutdown", "refused"),
    ]


def test_job_actions_are_asked_about_the_job_and_its_submitter(
    served: tuple[FederationConfig, Refusing], tmp_path: Path
) -> None:
    config, security = served
    security.refused = {"abort_job"}
    job = write_job(tmp_path / "job", script=SCRIPT)
    with admin_client(config) as admin:
        job_id = admin.submit(job)
        admin.status(job_id)
        with pytest.raises(AdminRequestError, match=f"may not abort_job \\(job {job_id}\\)"):
            admin.abort(job_id)
        name = admin.name
    assert (name, "view_job", name) in security.asked
    assert (name, "abort_job", name) in security.asked

"""Every admin action goes past the federation's security provider before it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from fl_core.cli import poc_federation as poc
from fl_core.config.federation import FederationConfig
from fl_core.containers.poc import admin_client, poc_container
from fl_core.roles.admin.client import AdminRequestError
from fl_core.roles.server_parent.process import ServerParent
from fl_core.spec.security import Credentials, SecurityProvider
from fl_core.testing import write_job

SCRIPT = "import fl_core.client as flare\nflare.init()\n"


class Refusing(SecurityProvider):
    """Allows every action but those named; records what it was asked."""

    def __init__(self, refused: set[str]) -> None:
        self.refused = refused
        self.asked: list[tuple[str, str, str]] = []

    def credentials(self, identity: str) -> Credentials | None:
        return None

    def authorize(self, actor: str, action: str, resource: str) -> bool:
        self.asked.append((actor, action, resource))
        return action not in self.refused


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FederationConfig, Refusing]]:
    config = poc.prepare(tmp_path / "poc", 2, "tcp")
    security = Refusing({"submit", "shutdown"})
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


def test_a_refused_action_names_what_was_missing_and_changes_nothing(
    served: tuple[FederationConfig, Refusing], tmp_path: Path
) -> None:
    config, security = served
    job = write_job(tmp_path / "job", script=SCRIPT)
    with admin_client(config) as admin:
        with pytest.raises(AdminRequestError, match="may not submit federation: not authorized"):
            admin.submit(job)
        with pytest.raises(AdminRequestError, match="may not shutdown federation"):
            admin.shutdown()
        assert admin.list() == []  # nothing was submitted
        assert admin.sites() == []  # and the server still answers: it did not shut down
        name = admin.name
    assert (name, "submit", "federation") in security.asked
    assert (name, "list", "federation") in security.asked
    assert (name, "shutdown", "federation") in security.asked


def test_job_actions_are_asked_about_the_job(
    served: tuple[FederationConfig, Refusing],
) -> None:
    config, security = served
    with admin_client(config) as admin, pytest.raises(AdminRequestError):
        admin.status("abc123")  # allowed, but there is no such job
    assert security.asked[-1][1:] == ("status", "job abc123")

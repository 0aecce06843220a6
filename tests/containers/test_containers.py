"""The per-mode containers: slots filled from the registry, overridable in tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dependency_injector import providers

from fl_core.config import load_job
from fl_core.containers.poc import poc_container
from fl_core.containers.production import production_container
from fl_core.containers.simulator import simulator_container
from fl_core.errors import ModeNotAvailableError
from fl_core.spec.transport import Connection, Frame, Listener, Transport
from fl_core.testing import plugin_manager_with, write_job
from fl_plugins.transport_inprocess.transport import InProcessTransport

SCRIPT = (
    "import fl_core.client as flare\n"
    "flare.init()\n"
    "m = flare.receive()\n"
    "flare.send(flare.FLModel(params={'w': m.params['w'] + 1}))\n"
)


class CountingTransport(Transport):
    """Wraps the in-process transport and counts the frames sent through it."""

    carries_objects = True

    def __init__(self) -> None:
        self.inner = InProcessTransport()
        self.frames = 0

    def _wrap(self, conn: Connection) -> Connection:
        original = conn.send

        def send(frame: Frame) -> None:
            self.frames += 1
            original(frame)

        conn.send = send  # type: ignore[method-assign]
        return conn

    def listen(self, url: str, on_connection: Callable[[Connection], None]) -> Listener:
        return self.inner.listen(url, lambda c: on_connection(self._wrap(c)))

    def connect(self, url: str, timeout: float) -> Connection:
        return self._wrap(self.inner.connect(url, timeout))


def test_an_overridden_transport_slot_carries_the_whole_job(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path / "job", script=SCRIPT, initial_params={"w": np.zeros(1)}))
    container = simulator_container(job, clients=2, threads=2, workspace=tmp_path / "ws")
    transport = CountingTransport()
    container.transport.override(providers.Object(transport))

    result = container.simulator().run()

    assert result.status == "finished", result.reason
    assert transport.frames > 10  # hellos, joins, polls, tasks, results, replies


def test_job_components_override_mode_defaults(tmp_path: Path) -> None:
    folder = write_job(
        tmp_path / "job",
        script=SCRIPT,
        components={"transport": {"name": "grpc", "options": {"send_timeout": 5.0}}},
    )
    job = load_job(folder)
    container = poc_container(job, clients=2)
    components = container.config.components()
    assert components["transport"] == {"name": "grpc", "options": {"send_timeout": 5.0}}
    assert components["launcher"] == {"name": "process", "options": {}}
    transport = container.transport()
    try:
        assert transport.schemes == ("grpc",)
    finally:
        transport.close()


def test_simulator_defaults_are_inprocess_and_none(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path / "job", script=SCRIPT))
    container = simulator_container(job, clients=2, threads=1, workspace=tmp_path)
    assert isinstance(container.transport(), InProcessTransport)
    assert container.security().authorize("site-1", "submit", "job") is True


@pytest.mark.parametrize("factory", [poc_container, production_container])
def test_modes_not_built_yet_refuse(tmp_path: Path, factory: Callable[..., object]) -> None:
    job = load_job(write_job(tmp_path / "job", script=SCRIPT))
    container = factory(job, clients=2)
    with pytest.raises(ModeNotAvailableError, match="is not available yet"):
        container.runner()  # type: ignore[attr-defined]


def test_plugin_manager_with_holds_only_that_plugin() -> None:
    import flcore_evaluate.hooks as evaluate

    pm = plugin_manager_with("evaluate", evaluate)
    registry = pm.registry()
    assert registry.names("workflow") == {"evaluate": "evaluate"}
    assert registry.names("transport") == {}

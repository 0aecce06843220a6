"""The per-mode containers: slots filled from the registry, overridable in tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dependency_injector import providers

from fl_core.cli import poc_federation as poc
from fl_core.config import load_job
from fl_core.config.federation import federation_yaml, load_federation
from fl_core.containers.check import check_job
from fl_core.containers.poc import poc_container
from fl_core.containers.production import federation_container
from fl_core.containers.simulator import simulator_container
from fl_core.errors import ConfigError
from fl_core.roles.client_parent.process import ClientParent
from fl_core.roles.server_parent.process import ServerParent
from fl_core.roles.simulator import Simulator
from fl_core.spec.security import Identity
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

    result = container.runner().run()

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
    assert container.security().authorize(Identity("site-1"), "submit_job") == ""


def test_a_production_federation_gets_the_production_container_and_its_kit(
    tmp_path: Path,
) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    text = federation_yaml("hospitals", [], transport="tcp", security="none", mode="production")
    (kit / "federation.yaml").write_text(text)
    federation = load_federation(kit)
    container = federation_container(federation, identity="server")
    assert container.config.run.mode() == "production"
    # The security provider is built from the kit the federation was read from.
    assert container.config.components.security.options() == {"kit": str(kit)}
    poc = federation_container(replace(federation, mode="poc"), identity="server")
    assert poc.config.run.mode() == "poc"
    assert poc.config.components.security.options() == {}


def test_the_simulator_runs_a_job_over_the_transport_the_job_names(tmp_path: Path) -> None:
    folder = write_job(
        tmp_path / "job",
        script=SCRIPT,
        initial_params={"w": np.zeros(3)},
        components={"transport": "tcp"},
    )
    job = load_job(folder)
    container = simulator_container(job, clients=2, threads=2, workspace=tmp_path / "ws")
    simulator = container.runner()
    assert isinstance(simulator, Simulator)
    assert type(simulator.transport).__name__ == "TcpTransport"
    result = simulator.run()
    assert result.status == "finished", result.reason
    assert result.final_model is not None
    np.testing.assert_array_equal(result.final_model.params["w"], np.ones(3) * 2)


def test_the_poc_server_parent_is_wired_with_the_federations_parts(tmp_path: Path) -> None:
    config = poc.prepare(tmp_path / "poc", 2, "grpc")
    container = poc_container(federation=config, identity="server")
    parent = container.server_parent()
    assert isinstance(parent, ServerParent)
    try:
        assert parent.engine.transport.schemes == ("grpc",)  # type: ignore[attr-defined]
        assert type(parent.engine.launcher).__name__ == "ProcessLauncher"
        stop = threading.Event()
        ran = threading.Thread(target=parent.run, args=(stop,))
        ran.start()
        deadline = time.monotonic() + 30
        while not config.url_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert config.url_file.read_text().startswith("grpc://")
        stop.set()
        ran.join(30)
        assert not ran.is_alive()
    finally:
        parent.engine.transport.close()


def test_a_client_parent_is_built_for_its_site_only(tmp_path: Path) -> None:
    config = poc.prepare(tmp_path / "poc", 2, "tcp")
    container = poc_container(federation=config, identity="site-2", site="site-2")
    parent = container.client_parent()
    assert isinstance(parent, ClientParent)
    engine = parent.engines()
    try:
        assert engine.site == "site-2"
        assert engine.site_config.launchers is None  # no site.yaml: any launcher
    finally:
        engine.cell.close()
        parent.transport.close()


def test_the_federation_fixes_transport_and_security(tmp_path: Path) -> None:
    config = poc.prepare(tmp_path / "poc", 2, "tcp")
    grpc_job = load_job(write_job(tmp_path / "a", script=SCRIPT, components={"transport": "grpc"}))
    with pytest.raises(ConfigError) as info:
        check_job(grpc_job, "poc", federation=config)
    assert "components.transport" in str(info.value)
    assert "the federation fixes the transport ('tcp'" in str(info.value)
    # Naming the federation's own transport is fine; so is naming none.
    check_job(
        load_job(write_job(tmp_path / "b", script=SCRIPT, components={"transport": "tcp"})),
        "poc",
        federation=config,
    )
    check_job(load_job(write_job(tmp_path / "c", script=SCRIPT)), "poc", federation=config)
    # Without a federation, the job's choice stands: `run --mode poc` makes one for it.
    check_job(grpc_job, "poc")
    # In a process container of that federation, the job's choice never wins.
    container = poc_container(grpc_job, federation=config, identity="server")
    assert container.config.components()["transport"]["name"] == "tcp"


def test_plugin_manager_with_holds_only_that_plugin() -> None:
    import flcore_evaluate.hooks as evaluate

    pm = plugin_manager_with("evaluate", evaluate)
    registry = pm.registry()
    assert registry.names("workflow") == {"evaluate": "evaluate"}
    assert registry.names("transport") == {}

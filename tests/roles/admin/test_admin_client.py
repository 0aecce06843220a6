"""AdminClient against a fake server parent: finding SP, requests, refusals, safe unpacking."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_core.cell.cell import Cell
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.cli.poc_federation import prepare
from fl_core.config.federation import FederationConfig
from fl_core.containers.poc import admin_client
from fl_core.credentials import CredentialError, new_secret, read_secret, write_secret
from fl_core.errors import FlCoreError
from fl_core.roles.admin.client import (
    AdminRefusedError,
    AdminRequestError,
    ServerNotRunningError,
    UnsafeArchiveError,
)
from fl_core.roles.protocol.parent import ADMIN_PREFIX, AdminTopic
from fl_plugins.transport_tcp.transport import TcpTransport

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")


FILES = [("final_model.npz", b"npz-bytes-longer-than-a-chunk"), ("models/r1", b"1")]


class FakeServer:
    """A cell named `server` that answers ADMIN requests the way SP's protocol says."""

    def __init__(self, config: FederationConfig) -> None:
        self.transport = TcpTransport()
        self.cell = Cell("server", self.transport)
        # As SP does: an admin joins only by proving the admin secret.
        admin_key = read_secret(config.server_key_file("admin"))
        self.cell.require_proof(lambda name: admin_key)
        self.url = self.cell.listen("tcp://127.0.0.1:0")
        self.received: list[tuple[str, str, object]] = []
        handlers = {
            AdminTopic.SUBMIT: lambda m: {"job_id": "job1"},
            AdminTopic.STATUS: self._status,
            AdminTopic.LIST: lambda m: {"jobs": [{"job_id": "job1", "state": "running"}]},
            AdminTopic.LOGS: lambda m: b"round 1 done\n",
            AdminTopic.DOWNLOAD: lambda m: {
                "files": [{"path": p, "size": len(d)} for p, d in FILES]
            },
            AdminTopic.READ: self._read,
            AdminTopic.SITES: lambda m: {"sites": [{"site": "site-1", "url": "u", "jobs": []}]},
            AdminTopic.SHUTDOWN: lambda m: {},
        }
        for topic, handler in handlers.items():
            self.cell.register_handler(Channel.ADMIN, topic, self._recording(topic, handler))
        config.url_file.write_text(self.url + "\n")

    def _recording(self, topic: str, handler: object) -> object:
        def handle(message: Message) -> object:
            self.received.append((message.origin, topic, message.payload))
            return handler(message)  # type: ignore[operator]

        return handle

    @staticmethod
    def _read(message: Message) -> object:
        assert isinstance(message.payload, dict)
        data = dict(FILES)[message.payload["path"]]
        offset = message.payload["offset"]
        return data[offset : offset + 3]  # small chunks: the client must loop

    @staticmethod
    def _status(message: Message) -> object:
        assert isinstance(message.payload, dict)
        if message.payload["job_id"] != "job1":
            raise FlCoreError(f"unknown job {message.payload['job_id']!r}")
        return {"job_id": "job1", "state": "finished", "round": 2, "rounds": 2}

    def close(self) -> None:
        self.cell.close()
        self.transport.close()


@pytest.fixture
def config(tmp_path: Path) -> FederationConfig:
    return prepare(tmp_path / "poc", 1)


@pytest.fixture
def server(config: FederationConfig) -> Iterator[FakeServer]:
    fake = FakeServer(config)
    yield fake
    fake.close()


def test_no_url_file_says_the_server_parent_is_not_running(config: FederationConfig) -> None:
    started = time.monotonic()
    with pytest.raises(ServerNotRunningError) as info:
        admin_client(config, wait=0.3).connect()
    assert time.monotonic() - started >= 0.3  # it waited for SP to write the file
    assert str(info.value).startswith(
        f"the server parent of {config.root} is not running (no {config.url_file})"
    )


def test_a_stale_url_file_names_the_url_nothing_answers_at(config: FederationConfig) -> None:
    config.url_file.write_text("tcp://127.0.0.1:9\n")  # the discard port: nothing listens
    with pytest.raises(ServerNotRunningError) as info:
        admin_client(config, wait=0.0, timeout=2.0).connect()
    assert "nothing answers at tcp://127.0.0.1:9" in str(info.value)


def test_an_admin_without_the_credential_file_says_where_it_looked(
    config: FederationConfig, server: FakeServer
) -> None:
    config.admin_key_file.unlink()
    with pytest.raises(CredentialError, match=r"admin\.key: not found"):
        admin_client(config).connect()
    assert server.received == []


def test_an_admin_with_a_wrong_credential_is_refused_before_any_request(
    config: FederationConfig, server: FakeServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "other" / "admin.key"
    write_secret(wrong, new_secret())
    with pytest.raises(AdminRefusedError, match="did not prove the credential") as info:
        admin_client(config, key_file=wrong).connect()
    assert str(wrong) in str(info.value)
    assert server.received == []


def test_an_admin_refuses_a_server_that_cannot_prove_the_credential(
    config: FederationConfig, tmp_path: Path
) -> None:
    # Whoever writes a URL into the file does not get an admin's job package.
    impostor_key = tmp_path / "impostor" / "admin.key"
    write_secret(impostor_key, new_secret())
    impostor = FakeServer(config)
    impostor.cell.require_proof(lambda name: read_secret(impostor_key))
    try:
        with pytest.raises(AdminRefusedError, match="did not prove"):
            admin_client(config).connect()
        assert impostor.received == []
    finally:
        impostor.close()


def test_waits_for_the_url_file_to_appear(config: FederationConfig) -> None:
    box: list[FakeServer] = []
    later = threading.Timer(0.3, lambda: box.append(FakeServer(config)))
    later.start()
    try:
        with admin_client(config, wait=10.0) as admin:
            assert admin.sites() == [{"site": "site-1", "url": "u", "jobs": []}]
    finally:
        later.join()
        for fake in box:
            fake.close()


def test_requests_carry_the_protocol_payloads(
    config: FederationConfig, server: FakeServer, tmp_path: Path
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.yaml").write_text("name: x\n")
    with admin_client(config) as admin:
        assert admin.name.startswith(ADMIN_PREFIX) and len(admin.name) == len(ADMIN_PREFIX) + 8
        assert admin.submit(job) == "job1"
        assert admin.status("job1")["state"] == "finished"
        assert admin.list() == [{"job_id": "job1", "state": "running"}]
        assert admin.logs("job1", "site-1") == "round 1 done\n"
        dest = admin.download("job1", tmp_path / "out")
        admin.shutdown()
    assert (dest / "final_model.npz").read_bytes() == b"npz-bytes-longer-than-a-chunk"
    assert (dest / "models" / "r1").read_bytes() == b"1"
    origins = {origin for origin, _, _ in server.received}
    assert origins == {admin.name}
    by_topic = {topic: payload for _, topic, payload in server.received}
    package = by_topic[AdminTopic.SUBMIT]
    assert isinstance(package, bytes | bytearray)
    assert "job.yaml" in zipfile.ZipFile(io.BytesIO(package)).namelist()
    assert by_topic[AdminTopic.LOGS] == {"job_id": "job1", "which": "site-1"}
    assert by_topic[AdminTopic.DOWNLOAD] == {"job_id": "job1"}


def test_a_refusal_surfaces_with_the_servers_reason(
    config: FederationConfig, server: FakeServer
) -> None:
    with admin_client(config) as admin, pytest.raises(AdminRequestError) as info:
        admin.status("nope")
    assert info.value.topic == "status"
    assert "unknown job 'nope'" in info.value.reason
    assert isinstance(info.value, FlCoreError)


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "a\\..\\evil"])
def test_a_download_refuses_file_names_outside_the_destination(
    config: FederationConfig, server: FakeServer, tmp_path: Path, name: str
) -> None:
    FILES.append((name, b"x"))
    try:
        with admin_client(config) as admin, pytest.raises(UnsafeArchiveError) as info:
            admin.download("job1", tmp_path / "out")
    finally:
        FILES.pop()
    assert "escapes" in str(info.value) and repr(name) in str(info.value)
    assert not (tmp_path / "evil").exists()

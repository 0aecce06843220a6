"""`fl_core.tls_names`: what a failed TLS name check says, against a real TLS listener."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from fl_core.testing.pki import ELSEWHERE, Pki
from fl_core.tls_names import certificate_names, describe_names, name_mismatch_message


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_certificate_names_lists_dns_names_then_addresses(pki: Pki) -> None:
    assert certificate_names(pki.server.der) == ["localhost", "127.0.0.1", "::1"]
    assert certificate_names(pki.elsewhere.der) == [ELSEWHERE]
    assert certificate_names(pki.issue("bare", hosts=()).der) == []


def test_certificate_names_refuses_what_is_not_a_certificate() -> None:
    with pytest.raises(ValueError):
        certificate_names(b"not a certificate")


def test_the_message_says_address_or_host_name_and_the_names_found() -> None:
    by_ip = name_mismatch_message("127.0.0.1", "it names elsewhere.invalid")
    assert "does not name the address 127.0.0.1 (it names elsewhere.invalid)" in by_ip
    assert "server_name" in by_ip
    by_name = name_mismatch_message("server.example.org", "")
    assert "the host name server.example.org;" in by_name


@pytest.fixture
def tls_listener(pki: Pki) -> Iterator[int]:
    """A TLS listener presenting the `elsewhere` certificate; its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.elsewhere.certfile, pki.elsewhere.keyfile)
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so that the thread sees `stop` soon
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_describe_names_reads_the_certificate_a_listener_presents(tls_listener: int) -> None:
    said = asyncio.run(describe_names("127.0.0.1", tls_listener, alpn=("h2",)))
    assert said == f"it names {ELSEWHERE}"


def test_describe_names_says_nothing_when_nobody_listens() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    assert asyncio.run(describe_names("127.0.0.1", port)) == ""

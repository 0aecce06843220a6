"""Throwaway certificates for testing TLS transports.

`Pki(folder)` makes a CA with a server and a client certificate, plus a rogue
CA with a server and a client of its own, each as PEM files in `folder` and as
`Credentials`. Keys are ECDSA P-256 and certificates are valid for a day, so
building one takes a few milliseconds; build one per test module::

    @pytest.fixture(scope="module")
    def pki(tmp_path_factory):
        return Pki(tmp_path_factory.mktemp("pki"))

    def test_mutual_tls(pki):
        server = MyTransport(credentials=pki.server.credentials)
        client = MyTransport(certfile=pki.client.certfile, keyfile=pki.client.keyfile,
                             cafile=pki.client.cafile, tls=True)

Server certificates name `localhost`, `127.0.0.1` and `::1`, so a client that
checks host names accepts them on loopback. Every identity trusts the real CA
(the rogue ones included: what they present is what a server must refuse).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fl_core.spec.security import Credentials

__all__ = ["Identity", "Pki"]

_LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Identity:
    """One end's TLS material: PEM files, and the same bytes as `Credentials`."""

    name: str
    certfile: str
    keyfile: str
    cafile: str
    """The CA this end trusts (always the real one)."""
    credentials: Credentials

    def files(self) -> dict[str, str]:
        """`certfile`, `keyfile`, `cafile`: keyword options for a transport."""
        return {"certfile": self.certfile, "keyfile": self.keyfile, "cafile": self.cafile}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _Ca:
    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        self.cert = (
            self._builder(self.name, self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(usage, True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(
        self, subject: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(
        self, cn: str, *, server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        if server:
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _LOOPBACK]
        cert = (
            self._builder(_name(cn), key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName(names), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


class Pki:
    """A CA with `server` and `client`, and a rogue CA with `rogue_server` and `rogue_client`.

    `anonymous` trusts the CA and presents no certificate (empty chain and
    key), as a client of a server that does not ask for one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca, rogue = _Ca("test-ca"), _Ca("rogue-ca")
        self.ca_pem = _pem(ca.cert)
        self.cafile = self._write("ca.pem", self.ca_pem)
        self.rogue_cafile = self._write("rogue-ca.pem", _pem(rogue.cert))
        self.server = self._identity("server", ca, server=True)
        self.client = self._identity("client", ca, server=False)
        self.rogue_server = self._identity("rogue-server", rogue, server=True)
        self.rogue_client = self._identity("rogue-client", rogue, server=False)
        self.anonymous = Credentials(b"", b"", self.ca_pem)

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def _identity(self, cn: str, ca: _Ca, *, server: bool) -> Identity:
        cert, key = ca.issue(cn, server=server)
        cert_pem = _pem(cert)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Identity(
            name=cn,
            certfile=self._write(f"{cn}.pem", cert_pem),
            keyfile=self._write(f"{cn}.key", key_pem),
            cafile=self.cafile,
            credentials=Credentials(cert_pem, key_pem, self.ca_pem),
        )

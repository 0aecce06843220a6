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

Every certificate the CAs issue by default names `localhost`, `127.0.0.1`
(and server ones `::1`) in its subject alternative names, so a client that
checks host names accepts a server on loopback. `elsewhere` is a server
certificate from the real CA that names only `ELSEWHERE`, the certificate of
a genuine participant listening somewhere a client did not ask for: a client
that checks host names must refuse it on loopback. `issue` makes more, with
the names (DNS names or IP addresses) a test needs, from either CA. Every
identity trusts the real CA (the rogue ones included: what they present is
what a server must refuse). `Identity.der` is the certificate as a
transport's `Connection.peer_certificate` gives it.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_core.spec.security import Credentials

__all__ = ["ELSEWHERE", "LOOPBACK_NAMES", "Identity", "Pki"]

LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1")
"""What a certificate names by default: a client reaches its owner on loopback by either."""
ELSEWHERE: Final = "elsewhere.invalid"
"""The only host `Pki.elsewhere` names (`.invalid` never resolves)."""


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

    @property
    def der(self) -> bytes:
        """This end's certificate in DER, as the other end's TLS handshake verifies it."""
        cert = x509.load_pem_x509_certificate(self.credentials.certificate_chain)
        return cert.public_bytes(serialization.Encoding.DER)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _general_name(host: str) -> x509.GeneralName:
    """An IP SAN for an address, a DNS SAN for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


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
        self, cn: str, hosts: Sequence[str]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(_name(cn), key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                False,
            )
        )
        if hosts:
            names = x509.SubjectAlternativeName([_general_name(host) for host in hosts])
            builder = builder.add_extension(names, False)
        return builder.sign(self.key, hashes.SHA256()), key


class Pki:
    """A CA with `server`, `client` and `elsewhere`; a rogue CA with `rogue_server` and
    `rogue_client`.

    `anonymous` trusts the CA and presents no certificate (empty chain and
    key), as a client of a server that does not ask for one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ca, self._rogue = _Ca("test-ca"), _Ca("rogue-ca")
        self.ca_pem = _pem(self._ca.cert)
        self.cafile = self._write("ca.pem", self.ca_pem)
        self.rogue_cafile = self._write("rogue-ca.pem", _pem(self._rogue.cert))
        self.server = self.issue("server", hosts=(*LOOPBACK_NAMES, "::1"))
        self.client = self.issue("client")
        self.elsewhere = self.issue("elsewhere", hosts=(ELSEWHERE,))
        self.rogue_server = self.issue("rogue-server", hosts=(*LOOPBACK_NAMES, "::1"), rogue=True)
        self.rogue_client = self.issue("rogue-client", rogue=True)
        self.anonymous = Credentials(b"", b"", self.ca_pem)

    def _write(self, name: str, data: bytes) -> str:
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def issue(
        self, cn: str, *, hosts: Sequence[str] = LOOPBACK_NAMES, rogue: bool = False
    ) -> Identity:
        """A new certificate for common name `cn`, naming `hosts` (DNS names or IP addresses).

        Issued by the rogue CA when `rogue`, else by the real one; no hosts:
        no subject alternative names at all. Files are `<cn>.pem`/`<cn>.key`.
        """
        cert, key = (self._rogue if rogue else self._ca).issue(cn, hosts)
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

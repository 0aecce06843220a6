"""A project's certificate authority: its key, what it issued, what it revoked.

    OUT/<project>/ca/       0700, never part of a kit
      ca.pem                the root certificate (every kit carries a copy)
      ca.key                its private key (0600): whoever holds it can mint participants
      state.yaml            every certificate issued: name, role, org, serial, revoked
      crl.pem               the revocation list, signed by the CA (always present, maybe empty)

Keys are EC P-256. The root is self-signed (CN "<project> root CA", CA:true,
keyCertSign and cRLSign). A participant's certificate names it (CN), its org
(O) and its role (OU), may not sign certificates, serves for TLS both ways
(EKU serverAuth and clientAuth), and names the hosts it listens on: the
server its host name, localhost and 127.0.0.1; a site its name, localhost and
127.0.0.1 (its client parent listens on loopback for its own jobs); an
admin none, since admins never listen.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_core.credentials import CredentialError, read_private_file
from fl_core.errors import FlCoreError
from fl_core.pki.kit import CRL_FILE
from fl_core.provision.files import make_folder, write_file
from fl_core.provision.project import Participant

__all__ = ["CA_KEY_FILE", "CertificateAuthority", "Issued", "IssuedCertificate", "ProvisionError"]

CA_CERT_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca.key"
STATE_FILE: Final = "state.yaml"
CA_VALID_DAYS: Final = 3650
_SKEW: Final = datetime.timedelta(minutes=5)
"""Certificates start a little in the past, so a peer whose clock is behind accepts them."""
_REDO: Final = "start over with `fl-core provision --new-ca` (every kit must then be replaced)"


class ProvisionError(FlCoreError):
    """Provisioning cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate the CA issued (an entry of `state.yaml`)."""

    name: str
    role: str
    org: str
    serial: int
    not_after: str
    revoked: bool = False
    revoked_at: str = ""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A new certificate, its private key and its record."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    record: Issued

    def certificate_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        """The key as PKCS#8 PEM, encrypted when `passphrase` is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _name(common_name: str, org: str = "", role: str = "") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if role:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attributes)


def _alt_names(participant: Participant, host: str | None) -> list[x509.GeneralName]:
    if participant.role not in ("server", "site"):
        return []
    hosts = [participant.name, "localhost"]
    if host and host not in hosts:
        hosts.append(host)  # where sites reach the server, when that is not its name
    names: list[x509.GeneralName] = []
    for entry in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    if loopback not in names:
        names.append(loopback)
    return names


class CertificateAuthority:
    """The CA in a `ca/` folder; `create` makes one, `load` reads it."""

    def __init__(
        self,
        folder: Path,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        issued: list[Issued],
        crl_number: int,
    ) -> None:
        self.folder = folder
        self.key = key
        self.certificate = certificate
        self.issued = issued
        """Every certificate issued, in order (a name appears again when re-issued)."""
        self.crl_number = crl_number

    # --- files ---------------------------------------------------------------------

    @property
    def certificate_pem(self) -> bytes:
        """The root certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def crl_file(self) -> Path:
        """`ca/crl.pem`."""
        return self.folder / CRL_FILE

    @classmethod
    def create(
        cls, folder: Path, project: str, valid_days: int = CA_VALID_DAYS
    ) -> CertificateAuthority:
        """A new CA in `folder` (which must not hold one), with an empty CRL."""
        if (folder / CA_KEY_FILE).exists():
            raise ProvisionError(f"{folder} already holds a CA; refusing to replace it")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{project} root CA", project)
        now = _now()
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        make_folder(folder)
        ca = cls(folder, key, certificate, [], 0)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file(folder / CA_KEY_FILE, key_pem, 0o600)
        write_file(folder / CA_CERT_FILE, ca.certificate_pem, 0o644)
        ca.write_crl()
        return ca

    @classmethod
    def load(cls, folder: Path) -> CertificateAuthority:
        """The CA in `folder`; its key is read as strictly as any credential."""
        key_data = read_private_file(
            folder / CA_KEY_FILE, 64 * 1024, missing="not found (no CA here)", redo=_REDO
        )
        try:
            key = serialization.load_pem_private_key(key_data, None)
            certificate = x509.load_pem_x509_certificate((folder / CA_CERT_FILE).read_bytes())
        except (ValueError, TypeError, OSError) as exc:
            raise CredentialError(
                folder, f"the CA's files are unreadable ({exc}); {_REDO}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CredentialError(folder / CA_KEY_FILE, f"not an EC key; {_REDO}")
        issued, crl_number = _read_state(folder / STATE_FILE)
        return cls(folder, key, certificate, issued, crl_number)

    def save(self) -> None:
        """Write `state.yaml`."""
        data: dict[str, Any] = {
            "crl_number": self.crl_number,
            "issued": [
                {
                    "name": r.name,
                    "role": r.role,
                    "org": r.org,
                    "serial": r.serial,
                    "not_after": r.not_after,
                    "revoked": r.revoked,
                    **({"revoked_at": r.revoked_at} if r.revoked else {}),
                }
                for r in self.issued
            ],
        }
        write_file(self.folder / STATE_FILE, yaml.safe_dump(data, sort_keys=False), 0o600)

    # --- issuing and revoking ----------------------------------------------------------

    def issue(
        self,
        participant: Participant,
        valid_days: int,
        *,
        host: str | None = None,
        now: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        """A certificate for `participant`, recorded in `issued` (call `save` after).

        `host` is where sites reach the server, added to its names when it is
        not the server's name. `now` moves the validity (tests of expiry).
        """
        start = now or _now()
        end = min(start + datetime.timedelta(days=valid_days), self.certificate.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        eku = x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(participant.name, participant.org, participant.role))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - _SKEW)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(authority, critical=False)
        )
        names = _alt_names(participant, host)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        record = Issued(
            participant.name,
            participant.role,
            participant.org,
            certificate.serial_number,
            _stamp(certificate.not_valid_after_utc),
        )
        self.issued.append(record)
        return IssuedCertificate(certificate, key, record)

    def revoke(self, name: str) -> list[Issued]:
        """Mark every certificate of `name` revoked; returns those newly revoked."""
        stamp = _stamp(_now())
        newly: list[Issued] = []
        for index, record in enumerate(self.issued):
            if record.name == name and not record.revoked:
                self.issued[index] = replace(record, revoked=True, revoked_at=stamp)
                newly.append(self.issued[index])
        return newly

    def crl_pem(self) -> bytes:
        """A new revocation list of every revoked serial, signed by the CA."""
        self.crl_number += 1
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _SKEW)
            .next_update(max(self.certificate.not_valid_after_utc, now))
            .add_extension(x509.CRLNumber(self.crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        for record in self.issued:
            if record.revoked:
                when = datetime.datetime.fromisoformat(record.revoked_at)
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(record.serial)
                    .revocation_date(when)
                    .build()
                )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def write_crl(self) -> bytes:
        """Write a new `crl.pem` and `state.yaml`; returns the CRL."""
        pem = self.crl_pem()
        write_file(self.crl_file, pem, 0o644)
        self.save()
        return pem


def _read_state(path: Path) -> tuple[list[Issued], int]:
    try:
        data = yaml.safe_load(path.read_bytes()) or {}
        issued = [
            Issued(
                name=str(entry["name"]),
                role=str(entry["role"]),
                org=str(entry["org"]),
                serial=int(entry["serial"]),
                not_after=str(entry.get("not_after", "")),
                revoked=bool(entry.get("revoked", False)),
                revoked_at=str(entry.get("revoked_at", "")),
            )
            for entry in data.get("issued") or []
        ]
        return issued, int(data.get("crl_number", 0))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProvisionError(
            f"{path}: the CA's record of issued certificates is unreadable ({exc}); restore it "
            f"from a backup, or {_REDO}"
        ) from None

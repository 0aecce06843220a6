"""A startup kit's layout, and reading its credentials.

    <kit>/
      kit.yaml            project, name, org, role, server: {name, host, port}, transport
      federation.yaml     what the runtime reads (`fl_core.config.federation`)
      credentials/        0700: cert.pem, key.pem (maybe encrypted), ca.pem, each 0600
      crl.pem             the CA's revocation list
      authorization.yaml  server kit: roles -> rights
      site_policy.yaml    site kits: who may do what on this site
      README.md           how to start it

`fl_core.provision` writes kits; this module is what reads them. Credentials
are read like `fl_core.credentials` reads POC secrets: a file anyone but its
owner could open, a symlink, or a folder others may enter is refused with the
chmod that fixes it, since whoever read a key could act under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_core.config._checks import Checker, load_yaml
from fl_core.credentials import CredentialError, read_private_file
from fl_core.errors import ConfigError
from fl_core.pki.identity import ROLES

__all__ = [
    "AUTHORIZATION_FILE",
    "CA_FILE",
    "CERT_FILE",
    "CREDENTIALS_DIR",
    "CRL_FILE",
    "KEY_FILE",
    "KIT_FILE",
    "README_FILE",
    "SITE_POLICY_FILE",
    "KitCredentials",
    "KitInfo",
    "load_kit_info",
    "read_kit_credentials",
]

KIT_FILE: Final = "kit.yaml"
CREDENTIALS_DIR: Final = "credentials"
CERT_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
CA_FILE: Final = "ca.pem"
CRL_FILE: Final = "crl.pem"
AUTHORIZATION_FILE: Final = "authorization.yaml"
SITE_POLICY_FILE: Final = "site_policy.yaml"
README_FILE: Final = "README.md"

_MAX_PEM: Final = 64 * 1024
_REDO: Final = (
    "have the project's provisioner issue a new kit (`fl-core provision --revoke`, then --add)"
)


@dataclass(frozen=True, slots=True)
class KitInfo:
    """What `kit.yaml` says: whose kit it is and where its server is."""

    folder: Path
    project: str
    name: str
    org: str
    role: str
    server_name: str
    """The server's host name, as its certificate names it."""
    server_host: str
    """Where this participant reaches the server."""
    server_port: int
    transport: str

    @property
    def credentials_dir(self) -> Path:
        """The kit's private folder."""
        return self.folder / CREDENTIALS_DIR

    @property
    def crl_file(self) -> Path:
        """The revocation list the provisioner copies into every kit."""
        return self.folder / CRL_FILE


@dataclass(frozen=True, slots=True)
class KitCredentials:
    """A kit's certificate, its private key (decrypted, in memory) and its CA."""

    certificate: x509.Certificate
    certificate_pem: bytes
    key: ec.EllipticCurvePrivateKey
    key_pem: bytes
    """The key as unencrypted PKCS#8 PEM, for the transports; never written anywhere."""
    ca: x509.Certificate
    ca_pem: bytes


def load_kit_info(folder: str | Path) -> KitInfo:
    """Read `kit.yaml` in `folder`; `ConfigError` naming the file and key of a problem."""
    root = Path(folder).resolve()
    source = root / KIT_FILE
    if not source.is_file():
        raise ConfigError(
            str(source),
            "",
            "not a startup kit (no kit.yaml); give the folder `fl-core provision` "
            "wrote for this participant",
        )
    try:
        data = load_yaml(source.read_bytes())
    except OSError as exc:
        raise ConfigError(str(source), "", f"cannot read the file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(source), "", f"not valid YAML: {exc}") from exc
    check = Checker(str(source))
    keys = ("project", "name", "org", "role", "server", "transport")
    top = check.mapping(data, "", keys, {k: f"the kit's {k}" for k in keys}, "a kit mapping")
    texts = {k: check.string(top[k], k) for k in ("project", "name", "org", "role", "transport")}
    if texts["role"] not in ROLES:
        raise check.error("role", f"expected one of {', '.join(ROLES)}, got {texts['role']!r}")
    server: Any = check.mapping(
        top["server"], "server", ("name", "host", "port"), {"host": "a host", "port": "a port"}
    )
    host = check.string(server["host"], "server.host")
    return KitInfo(
        folder=root,
        project=texts["project"],
        name=texts["name"],
        org=texts["org"],
        role=texts["role"],
        server_name=check.string(server.get("name", host), "server.name"),
        server_host=host,
        server_port=check.integer(server["port"], "server.port", 1, 65535),
        transport=texts["transport"],
    )


def _read_pem(path: Path) -> bytes:
    data = read_private_file(path, _MAX_PEM, missing="not found in the startup kit", redo=_REDO)
    if len(data) > _MAX_PEM:
        raise CredentialError(path, f"larger than {_MAX_PEM} bytes: not a PEM file")
    return data


def _certificate(path: Path) -> tuple[x509.Certificate, bytes]:
    data = _read_pem(path)
    try:
        return x509.load_pem_x509_certificate(data), data
    except ValueError:
        raise CredentialError(path, f"not a PEM certificate; {_REDO}") from None


def _private_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    data = _read_pem(path)
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise CredentialError(
            path,
            "the key is encrypted with a passphrase; put the passphrase in an environment "
            "variable and name it (security option `passphrase_env`, or `--passphrase-env`)",
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError):
        problem = "cannot be decrypted with the passphrase given" if encrypted else "malformed"
        raise CredentialError(path, f"the key {problem}; {_REDO} if it is damaged") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(path, f"expected an EC private key; {_REDO}")
    return key


def read_kit_credentials(folder: str | Path, passphrase: bytes | None = None) -> KitCredentials:
    """The certificate, key and CA in a kit's `credentials/`; `CredentialError` if not usable.

    `passphrase` decrypts an encrypted key. The certificate must be issued by
    the kit's CA and match the key.
    """
    private = Path(folder) / CREDENTIALS_DIR
    certificate, certificate_pem = _certificate(private / CERT_FILE)
    ca, ca_pem = _certificate(private / CA_FILE)
    key = _private_key(private / KEY_FILE, passphrase)
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise CredentialError(
            private / CERT_FILE, f"was not issued by the kit's CA ({CA_FILE}): {exc}; {_REDO}"
        ) from None
    except InvalidSignature:
        raise CredentialError(
            private / CERT_FILE, f"its signature does not check against {CA_FILE}; {_REDO}"
        ) from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise CredentialError(private / KEY_FILE, f"does not match {CERT_FILE}; {_REDO}")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KitCredentials(certificate, certificate_pem, key, key_pem, ca, ca_pem)

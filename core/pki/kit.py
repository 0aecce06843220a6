"""A startup kit's layout, and reading its credentials.

    <kit>/
      kit.yaml            project, name, org, role, server: {name, host, port}, transport
      federation.yaml     what the runtime reads (`fl_core.config.federation`)
      credentials/        0700: cert.pem, key.pem (maybe encrypted), ca.pem, each 0600
      crl.pem             the CA's revocation list
      authorization.yaml  server kit: roles -> rights
      site_policy.yaml    site kits: who may do what on this site
      README.md           how to start it

`fl_core.provision` writes kits; `fl_core.config.kit` reads `kit.yaml` and
this module the credentials. Credentials
are read like `fl_core.credentials` reads POC secrets: a file anyone but its
owner could open, a symlink, or a folder others may enter is refused with the
chmod that fixes it, since whoever read a key could act under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_core.config.kit import KIT_FILE
from fl_core.credentials import CredentialError, read_private_file

__all__ = [
    "AUTHORIZATION_FILE",
    "CA_FILE",
    "CERT_FILE",
    "CREDENTIALS_DIR",
    "CRL_FILE",
    "DEFAULT_RIGHTS",
    "KEY_FILE",
    "KIT_FILE",
    "README_FILE",
    "RIGHTS",
    "SITE_POLICY_FILE",
    "KitCredentials",
    "read_kit_credentials",
]

CREDENTIALS_DIR: Final = "credentials"
CERT_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
CA_FILE: Final = "ca.pem"
CRL_FILE: Final = "crl.pem"
AUTHORIZATION_FILE: Final = "authorization.yaml"
SITE_POLICY_FILE: Final = "site_policy.yaml"
README_FILE: Final = "README.md"

RIGHTS: Final = ("submit_job", "abort_job", "view_job", "download_job", "list_sites", "shutdown")
"""Every right an admin action needs; `view_job` covers list, status and logs."""
DEFAULT_RIGHTS: Final[dict[str, dict[str, str]]] = {
    "project_admin": dict.fromkeys(RIGHTS, "any"),
    "org_admin": {
        "submit_job": "none",
        "abort_job": "org",
        "view_job": "any",
        "download_job": "org",
        "list_sites": "any",
        "shutdown": "none",
    },
    "lead": {
        "submit_job": "any",
        "abort_job": "own",
        "view_job": "any",
        "download_job": "own",
        "list_sites": "any",
        "shutdown": "none",
    },
    "member": {
        "submit_job": "none",
        "abort_job": "none",
        "view_job": "any",
        "download_job": "none",
        "list_sites": "any",
        "shutdown": "none",
    },
}
"""The server's default rights (NVIDIA FLARE's default roles): role -> right -> scope."""

_MAX_PEM: Final = 64 * 1024
_REDO: Final = (
    "have the project's provisioner issue a new kit (`fl-core provision --revoke`, then --add)"
)


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

"""TLS material for the `grpc` transport: from PEM files or from `Credentials`.

gRPC reads certificates and keys only when a handshake happens, and then
reports a bad one as an opaque handshake failure on both ends. The material
is therefore parsed here first, so a wrong file or a key that does not belong
to its certificate is a `ConfigError` when the transport is built.

A dialing end checks that the listener's certificate names the URL's host
(gRPC does it; `server_name` replaces the host). When that check fails,
`fl_core.tls_names.describe_names` fetches the certificate again, without
checking it, only to say in the error which names it does carry.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

import grpc
from grpc import aio

from fl_core.errors import ConfigError
from fl_core.spec.security import Credentials

OPTION_SOURCE: Final = "job.yaml"
CREDENTIALS_SOURCE: Final = "credentials"


def _option_error(name: str, problem: str) -> ConfigError:
    return ConfigError(OPTION_SOURCE, f"components.transport.options.{name}", problem)


def credentials_from_files(
    certfile: str | None, keyfile: str | None, cafile: str | None
) -> Credentials:
    """Read the three PEM files the `tls: true` options name."""
    data: dict[str, bytes] = {}
    for name, path in (("certfile", certfile), ("keyfile", keyfile), ("cafile", cafile)):
        if not path:
            raise _option_error(name, "required when tls is true (a PEM file path)")
        try:
            data[name] = Path(path).read_bytes()
        except OSError as exc:
            raise _option_error(name, f"cannot read {path}: {exc}") from exc
    creds = Credentials(data["certfile"], data["keyfile"], data["cafile"])
    check(creds, from_files=True)
    return creds


def check(creds: Credentials, *, from_files: bool = False) -> None:
    """Raise `ConfigError` unless `creds` holds usable PEM material.

    An empty `certificate_chain` and `private_key` mean an endpoint that
    presents no certificate (a client of a server that does not ask for one).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def error(field: str, problem: str) -> ConfigError:
        if from_files:
            option = {"certificate_chain": "certfile", "private_key": "keyfile"}
            return _option_error(option.get(field, "cafile"), problem)
        return ConfigError(CREDENTIALS_SOURCE, field, problem)

    try:
        if not x509.load_pem_x509_certificates(creds.root_certificates):
            raise ValueError("no certificate found")
    except ValueError as exc:
        raise error("root_certificates", f"not PEM CA certificates: {exc}") from exc
    if not creds.certificate_chain and not creds.private_key:
        return
    try:
        chain = x509.load_pem_x509_certificates(creds.certificate_chain)
    except ValueError as exc:
        raise error("certificate_chain", f"not a PEM certificate chain: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(creds.private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise error("private_key", f"not an unencrypted PEM private key: {exc}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise error("private_key", "the private key does not belong to the first certificate")


def has_certificate(creds: Credentials) -> bool:
    """Whether `creds` let this end present a certificate of its own."""
    return bool(creds.certificate_chain)


def server_credentials(creds: Credentials, require_client_cert: bool) -> grpc.ServerCredentials:
    """What a listener presents; with `require_client_cert`, clients must show a cert
    that `creds.root_certificates` vouches for."""
    return grpc.ssl_server_credentials(
        [(creds.private_key, creds.certificate_chain)],
        root_certificates=creds.root_certificates if require_client_cert else None,
        require_client_auth=require_client_cert,
    )


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    """What a connecting end presents and trusts."""
    return grpc.ssl_channel_credentials(
        root_certificates=creds.root_certificates,
        private_key=creds.private_key or None,
        certificate_chain=creds.certificate_chain or None,
    )


NAME_MISMATCH: Final = "Hostname Verification Check failed"
"""How gRPC's status details say that the server certificate does not name the target."""
UNTRUSTED: Final = "CERTIFICATE_VERIFY_FAILED"
"""How they say that its chain does not lead to a CA this end trusts."""


def peer_certificate(context: aio.ServicerContext[bytes, bytes]) -> bytes | None:
    """The client certificate (DER) gRPC's TLS handshake verified for this call, or None.

    gRPC puts it in the call's auth context only once the handshake has
    checked it (chain and CA; never anything the peer said in a message).
    """
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        return None
    return ssl.PEM_cert_to_DER_cert(pem[0].decode("ascii"))

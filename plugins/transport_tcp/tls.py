"""TLS contexts for the `tcp` transport, from PEM files or from in-memory `Credentials`.

A dialing end checks the listener's chain against the CA and that the
listener's certificate names the host it dialed (or the `server_name` option):
a certificate the CA gave another participant must not pass for this one.
When that name check fails, `fl_core.tls_names.describe_names` fetches the
certificate again, without checking it, only to say in the error which names
it does carry.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from typing import Final

from fl_core.errors import ConfigError
from fl_core.spec.security import Credentials


def _option_error(name: str, problem: str) -> ConfigError:
    return ConfigError("job.yaml", f"components.transport.options.{name}", problem)


def _new_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return server, client


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    return b""


def _finish(
    server: ssl.SSLContext | None, client: ssl.SSLContext, require_client_cert: bool
) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
    if server is not None:
        server.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    # The chain is verified against the CA and the name against the host we
    # dialed: every participant's certificate chains to the same CA, so the
    # chain alone would let any of them pose as the server.
    client.check_hostname = True
    client.verify_mode = ssl.CERT_REQUIRED
    return server, client


def contexts_from_files(
    certfile: str | None, keyfile: str | None, cafile: str | None, require_client_cert: bool
) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
    """(server, client) contexts from the PEM files the `tls: true` options name."""
    for name, value in (("certfile", certfile), ("keyfile", keyfile), ("cafile", cafile)):
        if not value:
            raise _option_error(name, "required when tls is true (a PEM file path)")
    assert certfile and keyfile and cafile
    server, client = _new_contexts()
    for context in (server, client):
        try:
            context.load_cert_chain(certfile, keyfile, password=_no_password)
        except (OSError, ssl.SSLError) as exc:
            raise _option_error("certfile", f"cannot load {certfile} / {keyfile}: {exc}") from exc
        try:
            context.load_verify_locations(cafile)
        except (OSError, ssl.SSLError) as exc:
            raise _option_error("cafile", f"cannot load {cafile}: {exc}") from exc
    return _finish(server, client, require_client_cert)


@contextlib.contextmanager
def _private_pem_file(*parts: bytes) -> Iterator[str]:
    """A file only this user can read, holding `parts`, deleted on exit.

    `ssl` loads a certificate and key only from a file; this one lives in a
    fresh private directory for the length of the `load_cert_chain` calls.
    """
    folder = tempfile.mkdtemp(prefix="fl-core-tls-")  # mode 0700
    path = os.path.join(folder, "chain-and-key.pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            for part in parts:
                file.write(part)
                file.write(b"\n")
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(folder)


def _credential_error(field: str, problem: str) -> ConfigError:
    return ConfigError("credentials", field, problem)


def contexts_from_credentials(
    credentials: Credentials, require_client_cert: bool
) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
    """(server, client) contexts from in-memory PEM; without a certificate, no server one."""
    server_context, client = _new_contexts()
    try:
        cadata = credentials.root_certificates.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _credential_error("root_certificates", f"not PEM text: {exc}") from exc
    if credentials.certificate_chain:
        with _private_pem_file(credentials.certificate_chain, credentials.private_key) as path:
            for context in (server_context, client):
                try:
                    context.load_cert_chain(path, password=_no_password)
                except ssl.SSLError as exc:
                    raise _credential_error(
                        "certificate_chain", f"cannot load the certificate and key: {exc}"
                    ) from exc
    # Without a certificate of its own, this end can connect but not listen.
    server = server_context if credentials.certificate_chain else None
    for context in (server_context, client):
        try:
            context.load_verify_locations(cadata=cadata)
        except ssl.SSLError as exc:
            raise _credential_error("root_certificates", f"cannot load: {exc}") from exc
    return _finish(server, client, require_client_cert)


NAME_MISMATCH_CODES: Final = frozenset({62, 64})
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH."""


def is_name_mismatch(exc: ssl.SSLCertVerificationError) -> bool:
    """Whether the handshake failed because the certificate does not name the host."""
    return exc.verify_code in NAME_MISMATCH_CODES

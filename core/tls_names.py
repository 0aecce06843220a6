"""Explaining a failed TLS name check: the helpers every transport shares.

A dialing end checks that the listener's certificate names the host it
dialed (or the `server_name` it was told to expect). When that check fails,
the TLS library says only "hostname mismatch"; a transport then calls
`describe_names` to fetch the listener's certificate again, without trusting
it, and `name_mismatch_message` to build an error that says which names the
certificate does carry and how to fix the dial:

    names = await describe_names(host, port, alpn=("h2",))   # "" if it cannot tell
    raise TransportError(name_mismatch_message(server_name or host, names))

Third-party transports may use this module (`fl_core.tls_names`); it needs
only the standard library, plus `cryptography` when a certificate is read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from typing import Final

PROBE_TIMEOUT: Final = 2.0
"""Seconds `describe_names` waits for the listener's certificate."""


def certificate_names(der: bytes) -> list[str]:
    """The host names and addresses a DER certificate's subject alternative names carry.

    Raises `ValueError` if `der` is not a certificate.
    """
    from cryptography import x509  # only to explain a refusal: not on every import

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def probe_context(
    alpn: Sequence[str] = (), minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
) -> ssl.SSLContext:
    """A client context that takes any server certificate: only to read its names.

    `alpn` is offered as the real client would (a grpc listener refuses a
    handshake without "h2"). Never used to send data: the probe's handshake
    ends the moment it has the certificate.
    """
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    probe.minimum_version = minimum_version
    if alpn:
        probe.set_alpn_protocols(list(alpn))
    return probe


async def describe_names(
    host: str,
    port: int,
    *,
    alpn: Sequence[str] = (),
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> str:
    """`"it names a, b"`: what the listener at `host:port` presents; "" if it cannot tell.

    A TLS handshake that takes any certificate and sends nothing; it gives up
    after `PROBE_TIMEOUT` seconds. The certificate is only read, to explain a
    refusal, never trusted.
    """
    context = probe_context(alpn, minimum_version)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except (OSError, TimeoutError, ssl.SSLError):
        return ""
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.transport.abort()
    if not der:
        return ""
    try:
        names = certificate_names(der)
    except ValueError:
        return ""
    return f"it names {', '.join(names)}" if names else "it has no subject alternative names"


def name_mismatch_message(expected: str, names: str) -> str:
    """The error for a listener whose certificate does not name `expected`.

    `expected` is the host name or address the dialer checked; `names` is
    what `describe_names` said ("" leaves the parenthesis out).
    """
    try:
        ipaddress.ip_address(expected)
        kind = "address"
    except ValueError:
        kind = "host name"
    found = f" ({names})" if names else ""
    return (
        f"TLS name check failed: the server certificate does not name the {kind} "
        f"{expected}{found}; connect by a name the certificate carries, or set the "
        "transport option server_name to one"
    )

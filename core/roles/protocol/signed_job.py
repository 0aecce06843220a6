"""Signed jobs: the admin vouches for every file of a job, and every site checks it itself.

When the admin submits, it signs a manifest: the SHA-256 of every file of
the job folder as it unpacks, with the job's name and the time. The
manifest and the signature travel with the package as headers, from the
admin to the server parent and on to each site. The server and each site
verify them with their own security provider: the signature, the signer's
certificate (issued by the project's CA, not revoked) and, once the package
is unpacked, that every file matches the manifest and no file was added.
A package changed after signing is refused even if the server changed it:
a server cannot run code on a site that no authorized admin signed.

Without certificates (`none`, a POC) nothing is signed and nothing checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from fl_core.roles.protocol.job_package import JobPackageError
from fl_core.spec.security import Identity, SecurityProvider, Signature, SignatureError

__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "SIGNER",
    "decode_signed",
    "encode_signed",
    "job_manifest",
    "sign_job",
    "signed_headers",
    "verify_job",
]

MANIFEST: Final = "job-manifest"
"""Header: the manifest (base64 of its JSON)."""
SIGNER: Final = "job-signer"
"""Header: the signer's certificate (base64 of its PEM)."""
SIGNATURE: Final = "job-signature"
"""Header: the signature over the manifest (base64)."""
FORMAT: Final = "fl-core job manifest v1"
MAX_MANIFEST: Final = 48 * 1024
"""Bytes a manifest may have once decoded (it travels in a frame header)."""
MAX_SIGNER: Final = 8 * 1024
_CHUNK: Final = 1024 * 1024


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file under `folder`, by POSIX path relative to it."""
    found: dict[str, str] = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue  # an unpacked package holds regular files only
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
            found[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return dict(sorted(found.items()))


def job_manifest(folder: Path, job_name: str) -> bytes:
    """The manifest of the job unpacked in `folder` (canonical JSON bytes)."""
    data: dict[str, object] = {"format": FORMAT, "job": job_name, "signed": int(time.time())}
    data["files"] = _digests(folder)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def sign_job(security: SecurityProvider, folder: Path, job_name: str) -> dict[str, str]:
    """The headers that carry the admin's signature of the job in `folder` ({} unsigned)."""
    manifest = job_manifest(folder, job_name)
    return signed_headers(manifest, security.sign(manifest))


def signed_headers(manifest: bytes, signature: Signature | None) -> dict[str, str]:
    """Headers for `manifest` and its `signature` ({} when there is no signature)."""
    return encode_signed((MANIFEST, SIGNER, SIGNATURE), manifest, signature)


def encode_signed(
    names: tuple[str, str, str], data: bytes, signature: Signature | None
) -> dict[str, str]:
    """Signed `data` as three base64 headers: the data, the signer's certificate and
    the signature, under `names` in that order ({} when there is no signature)."""
    if signature is None:
        return {}
    encode = base64.b64encode
    values = (data, signature.certificate, signature.value)
    return {name: encode(value).decode() for name, value in zip(names, values, strict=True)}


def decode_signed(
    headers: Mapping[str, str], names: tuple[str, str, str], limit: int
) -> tuple[bytes, Signature]:
    """What `encode_signed` put in `headers`; the data may be `limit` bytes at most.

    Raises `SignatureError` for a missing, oversized or malformed header,
    before any signature work.
    """
    data, certificate, value = (
        _decoded(headers, name, size)
        for name, size in zip(names, (limit, MAX_SIGNER, MAX_SIGNER), strict=True)
    )
    return data, Signature(certificate, value)


def _decoded(headers: Mapping[str, str], name: str, limit: int) -> bytes:
    text = headers.get(name, "")
    if not text:
        raise SignatureError(f"the signed data has no {name} header")
    if len(text) > limit * 4 // 3 + 4:
        raise SignatureError(f"the {name} header is over {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"the {name} header is not base64") from None


def verify_job(
    security: SecurityProvider, headers: Mapping[str, str], folder: Path, job_name: str
) -> tuple[Identity | None, dict[str, str]]:
    """Who signed the job unpacked in `folder`, and the headers to pass it on with.

    Raises `SignatureError` when the signature is missing (and the provider
    wants one), malformed or not trusted, and `JobPackageError` naming the
    first file that differs from what the admin signed.
    """
    if not any(name in headers for name in (MANIFEST, SIGNER, SIGNATURE)):
        return security.verify(b"", None), {}
    manifest, signature = decode_signed(headers, (MANIFEST, SIGNER, SIGNATURE), MAX_MANIFEST)
    signer = security.verify(manifest, signature)
    try:
        data = json.loads(manifest)
        files = data["files"]
        if data["format"] != FORMAT or not isinstance(files, dict):
            raise ValueError(data["format"])
    except (ValueError, KeyError, TypeError):
        raise SignatureError("the signed manifest is not a job manifest") from None
    if data.get("job") != job_name:
        signed = data.get("job")
        raise JobPackageError(
            f"job package: job.yaml names {job_name!r}, the signed one {signed!r}"
        )
    actual = _digests(folder)
    for name in sorted(set(files) | set(actual)):
        if name not in actual:
            raise JobPackageError(f"job package: {name} was signed but is missing")
        if name not in files:
            raise JobPackageError(f"job package: {name} was added after the job was signed")
        if files[name] != actual[name]:
            raise JobPackageError(f"job package: {name} was changed after the job was signed")
    return signer, signed_headers(manifest, signature)

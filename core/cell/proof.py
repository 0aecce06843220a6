"""Proving a shared secret at hello, without sending it: a challenge/response.

A cell that listens may demand that a cell joining it (as a child, or over a
direct link) proves it holds the secret meant for the name it claims. The
joining cell sends a fresh nonce in its hello; the listening cell answers
with a challenge carrying a nonce of its own; the joining cell answers with
an HMAC-SHA256, under the secret, of both nonces, both names and the kind of
link; the listening cell checks it and, in its `hello_ok`, proves in turn
that it holds the same secret (a joining cell with a secret accepts no
listener that cannot). The secret itself never travels, nonces are never
reused, and each side's proof names its role, so neither proof can be
replayed or reflected.

Who needs which secret is the listening cell's `KeyLookup`: given the name a
peer claims, it returns the secret, or raises `AdmissionRefused` with the
reason (an unknown name, a job that is not running).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Final

from fl_core.spec.security import AdmissionRefused

__all__ = [
    "CHALLENGE",
    "NONCE",
    "PROOF",
    "PROVE",
    "AdmissionRefused",
    "KeyLookup",
    "new_nonce",
    "proof_matches",
    "prove",
]

CHALLENGE: Final = "challenge"
"""Control value of the listening cell's answer to a hello it wants proved."""
PROVE: Final = "prove"
"""Control value of the joining cell's answer to a challenge."""
NONCE: Final = "nonce"
"""Header: the sender's fresh nonce (hex) in a hello and in a challenge."""
PROOF: Final = "proof"
"""Header: an HMAC (hex) in a `prove` frame and in a `hello_ok` after a challenge."""

_LABEL: Final = "fl-core cell hello v1"
_NONCE_BYTES: Final = 16
MAX_NONCE: Final = 128
"""Characters of a peer's nonce that are taken at all; a longer one is refused."""

KeyLookup = Callable[[str], "bytes | None"]
"""`keys(claimed name) -> secret` the peer must prove (None: nothing to prove, its
certificate proved the name); raises `AdmissionRefused` to refuse."""


def new_nonce() -> str:
    """A fresh random nonce, as hex."""
    return secrets.token_hex(_NONCE_BYTES)


def prove(
    key: bytes, role: str, *, joining: str, listening: str, direct: bool, nonces: tuple[str, str]
) -> str:
    """The proof `role` ("joining" or "listening") gives of `key` for this handshake.

    `nonces` is (the joining cell's, the listening cell's). Names are FQCNs,
    which hold no newline, so the fields cannot run into each other.
    """
    if not key:
        raise ValueError("an empty secret proves nothing")
    fields = (_LABEL, role, "direct" if direct else "child", joining, listening, *nonces)
    return hmac.new(key, "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def proof_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected.encode(), given.encode())

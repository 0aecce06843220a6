"""The listening side of a link's hello: which frames admit it, and under which name.

A `Door` sees the frames of one incoming link until it is admitted: a hello,
and, when the name it claims needs a proof, the answer to the challenge (see
`fl_core.cell.proof`). It decides; the cell acts on each `Step` (sends the
challenge, registers the name and answers hello_ok, or refuses). It holds no
lock and touches no cell state, so the rules are readable in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fl_core.cell.fqcn import validate
from fl_core.cell.message import Header
from fl_core.cell.parent import CONTROL, DIRECT, HELLO
from fl_core.cell.proof import (
    CHALLENGE,
    MAX_NONCE,
    NONCE,
    PROOF,
    PROVE,
    new_nonce,
    proof_matches,
    prove,
)
from fl_core.errors import CellError

__all__ = ["Door", "KeyFor", "Step"]

KeyFor = Callable[[str, bool], "bytes | None"]
"""`key_for(name, direct)`: the secret `name` must prove, None if it need prove nothing;
raises `AdmissionRefused` (a `CellError`) when it may not join at all."""


@dataclass(frozen=True, slots=True)
class Step:
    """What to do with the frame a `Door` was shown; exactly one field is set."""

    challenge: dict[str, str] | None = None
    """Send this frame's headers; the link stays unadmitted until its proof comes."""
    admit: str = ""
    """Admit the link under this name and answer hello_ok with `extra` in it."""
    refuse: str = ""
    """Refuse the link with this reason."""
    direct: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class Door:
    """The hello of one incoming link at the cell `listening`."""

    def __init__(self, listening: str, key_for: KeyFor) -> None:
        self._listening = listening
        self._key_for = key_for
        self.claimed = ""
        """The name the link claims, once its hello came."""
        self._direct = False
        self._key: bytes | None = None  # set while a challenge is open; b"" once answered
        self._nonces = ("", "")

    @property
    def challenged(self) -> bool:
        """True while a challenge waits for its answer."""
        return bool(self._key)

    def step(self, headers: Mapping[str, str]) -> Step:
        """The decision on the next frame of the link (a hello, or the proof)."""
        if self._key is not None:
            return self._on_proof(headers)
        name = self.claimed = headers.get(Header.ORIGIN, "")
        self._direct = bool(headers.get(DIRECT))
        if headers.get(CONTROL) != HELLO:
            return Step(refuse="the first frame must introduce the cell")
        try:
            validate(name)
            key = self._key_for(name, self._direct)
        except CellError as exc:
            return Step(refuse=str(exc))
        if key is None:
            return Step(admit=name, direct=self._direct)
        nonce = headers.get(NONCE, "")
        if not 0 < len(nonce) <= MAX_NONCE:
            return Step(refuse="its hello carries no nonce to answer a challenge with")
        self._key, self._nonces = key, (nonce, new_nonce())
        return Step(
            challenge={CONTROL: CHALLENGE, Header.ORIGIN: self._listening, NONCE: self._nonces[1]}
        )

    def _on_proof(self, headers: Mapping[str, str]) -> Step:
        key, self._key = self._key, b""  # one proof per link: no second guess
        if not key or headers.get(CONTROL) != PROVE:
            return Step(refuse="it did not answer the challenge")
        if not proof_matches(self._proof(key, "joining"), headers.get(PROOF, "")):
            return Step(refuse="it did not prove the credential of that name")
        extra = {PROOF: self._proof(key, "listening")}
        return Step(admit=self.claimed, direct=self._direct, extra=extra)

    def _proof(self, key: bytes, role: str) -> str:
        return prove(
            key,
            role,
            joining=self.claimed,
            listening=self._listening,
            direct=self._direct,
            nonces=self._nonces,
        )

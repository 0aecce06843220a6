"""Fully qualified cell names: `server`, `server.job1`, `site-1.job1.trainer`.

A name is dot-separated segments; each segment starts with a letter or digit
and holds letters, digits, `_` and `-`. The first segment is the root (the
process family: `server` or a site name), the rest name job and helper cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fl_core.errors import InvalidFQCNError

SEPARATOR = "."
MAX_LENGTH = 255
# fullmatch, not `$`: `$` also matches before a trailing newline ("server\n").
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, slots=True)
class FQCN:
    """A parsed, valid cell name."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> FQCN:
        """Parse and validate `text`; raises `InvalidFQCNError` saying what is wrong."""
        if not isinstance(text, str):
            raise InvalidFQCNError(repr(text), f"expected a string, got {type(text).__name__}")
        if not text:
            raise InvalidFQCNError(text, "empty name")
        if len(text) > MAX_LENGTH:
            raise InvalidFQCNError(text[:40] + "...", f"longer than {MAX_LENGTH} characters")
        parts = tuple(text.split(SEPARATOR))
        for index, part in enumerate(parts):
            if not part:
                raise InvalidFQCNError(text, f"segment {index + 1} is empty")
            if not _SEGMENT.fullmatch(part):
                raise InvalidFQCNError(
                    text,
                    f"segment {part!r} must start with a letter or digit and hold only "
                    "letters, digits, '_' and '-' (at most 64 characters)",
                )
        return cls(parts)

    def __str__(self) -> str:
        return SEPARATOR.join(self.parts)

    @property
    def root(self) -> str:
        """The first segment."""
        return self.parts[0]

    @property
    def parent(self) -> FQCN | None:
        """The name one level up, or None for a root."""
        return FQCN(self.parts[:-1]) if len(self.parts) > 1 else None

    def child(self, segment: str) -> FQCN:
        """The name one level down; `segment` must be exactly one valid segment."""
        if not isinstance(segment, str):
            raise InvalidFQCNError(
                repr(segment), f"a segment must be a string, got {type(segment).__name__}"
            )
        if SEPARATOR in segment:
            raise InvalidFQCNError(
                str(self) + SEPARATOR + segment, f"child segment {segment!r} contains {SEPARATOR!r}"
            )
        return FQCN.parse(str(self) + SEPARATOR + segment)

    def is_ancestor_of(self, other: FQCN) -> bool:
        """True if `other` lies strictly below this name."""
        return len(other.parts) > len(self.parts) and other.parts[: len(self.parts)] == self.parts


def validate(text: str) -> str:
    """Return `text` unchanged if it is a valid FQCN; raise `InvalidFQCNError` if not."""
    FQCN.parse(text)
    return text


def parent_of(text: str) -> str | None:
    """The parent name of a valid FQCN string, or None for a root."""
    parent = FQCN.parse(text).parent
    return None if parent is None else str(parent)


def is_under(text: str, ancestor: str) -> bool:
    """True if `text` equals `ancestor` or lies below it (string form, no parsing)."""
    return text == ancestor or text.startswith(ancestor + SEPARATOR)

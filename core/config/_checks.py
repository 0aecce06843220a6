"""Small validators shared by the config loaders.

Each check either returns the value narrowed to the type the caller needs or
raises `ConfigError` naming the file, the dotted key and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Final

from fl_core.errors import ConfigError

PLUGIN_NAME: Final = re.compile(r"[a-z][a-z0-9_-]*")
"""What a component name must look like (the names plugins register)."""

_MAX_REPR: Final = 60


def describe(value: object) -> str:
    """The value and its type, as error messages show what was found."""
    if value is None:
        # YAML users write `key:` with nothing after it; "null" is their word for it.
        return "null"
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return f"{text} ({type(value).__name__})"


def join(parent: str, key: object) -> str:
    """The dotted key path of `key` inside `parent`."""
    return f"{parent}.{key}" if parent else str(key)


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """A `; did you mean 'x'?` suffix for a near-miss, or an empty string."""
    if not isinstance(word, str):
        return ""
    options = list(choices)
    # Compare case-folded so `Rounds` still finds `rounds`.
    folded = {choice.casefold(): choice for choice in options}
    close = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.6)
    return f"; did you mean {folded[close[0]]!r}?" if close else ""


class Checker:
    """Validators bound to one config file, so every error names that file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ConfigError:
        """A `ConfigError` for this file; the caller raises it."""
        return ConfigError(self.source, key, problem)

    def mapping(
        self,
        value: object,
        key: str,
        allowed: Iterable[str],
        required: Mapping[str, str] | None = None,
        what: str = "a mapping",
    ) -> Mapping[str, Any]:
        """`value` as a mapping whose keys are all in `allowed`.

        `required` maps each required key to a phrase saying what it holds, so
        a missing key is reported with what to write; `what` describes the
        mapping when `value` is not one.
        """
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected {what}, got {describe(value)}")
        allowed_keys = sorted(allowed)
        # Unknown keys come first: a typo (`round:`) otherwise shows up as the
        # less helpful "required key `rounds` is missing".
        for name in value:
            if not isinstance(name, str) or name not in allowed_keys:
                raise self.error(
                    join(key, name),
                    f"unknown key; allowed keys: {', '.join(allowed_keys)}"
                    + did_you_mean(name, allowed_keys),
                )
        needed = required or {}
        missing = [name for name in needed if name not in value]
        if missing:
            first, rest = missing[0], missing[1:]
            problem = f"required key is missing (expected {needed[first]})"
            if rest:
                problem += f"; also missing: {', '.join(rest)}"
            raise self.error(join(key, first), problem)
        return value

    def integer(self, value: object, key: str, minimum: int) -> int:
        """`value` as an int >= `minimum`; YAML booleans are refused."""
        # bool is an int subclass, but `rounds: yes` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {describe(value)}")
        return value

    def positive_seconds(self, value: object, key: str) -> float | None:
        """`value` as a finite number of seconds > 0, or None for null."""
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(
                key,
                f"expected a number of seconds > 0, or null for no limit, got {describe(value)}",
            )
        return float(value)

    def string(self, value: object, key: str, what: str = "a non-empty string") -> str:
        """`value` as a non-empty string."""
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected {what}, got {describe(value)}{quote_hint(value)}")
        return value

    def plugin_name(self, value: object, key: str) -> str:
        """`value` as a component name of the form plugins register."""
        what = "a component name (lowercase letters, digits, '_' or '-', starting with a letter)"
        name = self.string(value, key, what)
        if not PLUGIN_NAME.fullmatch(name):
            lowered = name.lower()
            hint = f"; did you mean {lowered!r}?" if PLUGIN_NAME.fullmatch(lowered) else ""
            raise self.error(key, f"expected {what}, got {describe(name)}{hint}")
        return name

    def options(self, value: object, key: str) -> dict[str, Any]:
        """A component's options: a mapping with string keys, null meaning none."""
        if value is None:
            # An `options:` line whose entries are all commented out is common.
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping of options, got {describe(value)}")
        for name in value:
            if not isinstance(name, str):
                # Options become keyword arguments of the component's factory.
                raise self.error(key, f"option names must be strings, got {describe(name)}")
        return dict(value)

    def job_file(self, value: object, key: str, job_dir: Path, suffix: str) -> Path:
        """A file inside `job_dir`, given relative to it; returned resolved.

        `job_dir` must already be resolved.
        """
        text = self.string(value, key, f"a relative path to a {suffix} file")
        given = PurePath(text)
        # Job folders are copied to the server and to each site, so a path that
        # points outside the folder (or is absolute) would not be there.
        if given.is_absolute():
            raise self.error(
                key,
                f"must stay inside the job folder; write it relative to {job_dir}, "
                f"got absolute path {text!r}",
            )
        path = (job_dir / given).resolve()
        if not path.is_relative_to(job_dir):
            raise self.error(
                key, f"must stay inside the job folder {job_dir}, got {text!r} ({path})"
            )
        if given.suffix != suffix:
            raise self.error(key, f"expected a {suffix} file, got {text!r}")
        if not path.exists():
            raise self.error(key, f"file not found: {text} (looked in {job_dir})")
        if not path.is_file():
            raise self.error(key, f"expected a file, but {text} is not a regular file")
        return path


def quote_hint(value: object) -> str:
    """Why a scalar the user meant as text is not a string, and the fix."""
    if isinstance(value, bool | int | float):
        return "; YAML read it as a non-string, put it in quotes"
    return ""

"""Small validators shared by the config loaders.

Each check either returns the value narrowed to the type the caller needs or
raises `ConfigError` naming the file, the dotted key and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Final, TypeVar

import yaml

from fl_core.errors import ConfigError

PLUGIN_NAME: Final = re.compile(r"[a-z][a-z0-9_-]*")
"""What a component name must look like (the names plugins register)."""

MAX_INT: Final = 2**31 - 1
"""The largest count a config may hold (rounds, min_clients, max_jobs...)."""
MAX_SECONDS: Final = 1e9
"""The longest time a config may give (about 31 years); null means no limit where allowed."""

_MAX_REPR: Final = 60
_T = TypeVar("_T")


class ConfigErrors(ConfigError):
    """Several problems in one config file; `errors` holds each, in the order found.

    `source`, `key` and `problem` are the first one's, so code that handles a
    single `ConfigError` still sees a file and a key.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.source, first.key, first.problem)
        # One line per problem, each naming its own file and key.
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return str(self.args[0])


class UnparsedNumber(str):
    """A YAML integer too long for Python to convert, kept as text so a check names the key."""


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that keeps an integer of more digits than Python converts as text."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> object:  # type: ignore[override]
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            # int() refuses more than sys.get_int_max_str_digits() digits; the key is
            # not known here, so the value's check reports it with file and key.
            return UnparsedNumber(str(node.value))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def read_yaml_file(source: Path, missing: str) -> object:
    """The YAML in the file `source`, as `load_yaml` reads it.

    `ConfigError` naming the file when it is not there (`missing` says what,
    and what to do), cannot be read, or is not YAML.
    """
    if not source.is_file():
        raise ConfigError(str(source), "", missing)
    try:
        return load_yaml(source.read_bytes())
    except OSError as exc:
        raise ConfigError(str(source), "", f"cannot read the file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(source), "", f"not valid YAML: {exc}") from exc


def load_yaml(raw: bytes) -> object:
    """`yaml.safe_load`, except that a huge integer comes back as an `UnparsedNumber`."""
    return yaml.load(raw, Loader=_Loader)  # a SafeLoader subclass: no Python objects


def describe(value: object) -> str:
    """The value and its type, as error messages show what was found."""
    if value is None:
        # YAML users write `key:` with nothing after it; "null" is their word for it.
        return "null"
    if isinstance(value, UnparsedNumber) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**_MAX_REPR
    ):
        # repr() of a huge int can itself fail (Python's digit limit), and is unreadable.
        try:
            return f"a number of {len(str(value).lstrip('+-'))} digits"
        except ValueError:
            return f"a number of more than {sys.get_int_max_str_digits()} digits"
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
        self.errors: list[ConfigError] = []
        """Problems collected so far by `attempt` and `mapping(collect=True)`."""

    def error(self, key: str, problem: str) -> ConfigError:
        """A `ConfigError` for this file; the caller raises it."""
        return ConfigError(self.source, key, problem)

    def attempt(self, check: Callable[[], _T], default: _T) -> _T:
        """`check()`, or `default` with its error(s) kept, so one run finds every problem."""
        try:
            return check()
        except ConfigErrors as exc:
            self.errors.extend(exc.errors)
        except ConfigError as exc:
            self.errors.append(exc)
        return default

    def raise_errors(self) -> None:
        """Raise what was collected: the one `ConfigError`, or `ConfigErrors` for several."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)

    def mapping(
        self,
        value: object,
        key: str,
        allowed: Iterable[str],
        required: Mapping[str, str] | None = None,
        what: str = "a mapping",
        *,
        collect: bool = False,
    ) -> Mapping[str, Any]:
        """`value` as a mapping whose keys are all in `allowed`.

        `required` maps each required key to a phrase saying what it holds, so
        a missing key is reported with what to write; `what` describes the
        mapping when `value` is not one. Every unknown and missing key is
        reported: raised together, or with `collect` kept in `errors` and the
        mapping returned (the caller then reads only the keys that are there).
        """
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected {what}, got {describe(value)}")
        allowed_keys = sorted(allowed)
        errors: list[ConfigError] = []
        # Unknown keys come first: a typo (`round:`) otherwise shows up as the
        # less helpful "required key `rounds` is missing".
        for name in value:
            if not isinstance(name, str) or name not in allowed_keys:
                errors.append(
                    self.error(
                        join(key, name),
                        f"unknown key; allowed keys: {', '.join(allowed_keys)}"
                        + did_you_mean(name, allowed_keys),
                    )
                )
        needed = required or {}
        for name in needed:
            if name not in value:
                errors.append(
                    self.error(
                        join(key, name), f"required key is missing (expected {needed[name]})"
                    )
                )
        if collect:
            self.errors.extend(errors)
        elif len(errors) == 1:
            raise errors[0]
        elif errors:
            raise ConfigErrors(errors)
        return value

    def integer(self, value: object, key: str, minimum: int, maximum: int = MAX_INT) -> int:
        """`value` as an int in [`minimum`, `maximum`]; YAML booleans are refused."""
        # bool is an int subclass, but `rounds: yes` is a mistake, not 1.
        if not is_int(value) or not minimum <= value <= maximum:  # type: ignore[operator]
            too_big = isinstance(value, UnparsedNumber) or (is_int(value) and value > maximum)  # type: ignore[operator]
            bound = f" and <= {maximum}" if too_big else ""
            raise self.error(key, f"expected an integer >= {minimum}{bound}, got {describe(value)}")
        assert isinstance(value, int)
        return value

    def positive_seconds(self, value: object, key: str, *, allow_null: bool = True) -> float | None:
        """`value` as a finite number of seconds > 0 (at most `MAX_SECONDS`), or None for null."""
        if value is None and allow_null:
            return None
        if not is_seconds(value):
            big = isinstance(value, UnparsedNumber) or (
                not isinstance(value, bool)
                and isinstance(value, int | float)
                and value > MAX_SECONDS  # inf too; nan compares False
            )
            bound = f" and <= {MAX_SECONDS:g}" if big else ""
            limit = ", or null for no limit" if allow_null else ""
            raise self.error(
                key, f"expected a number of seconds > 0{bound}{limit}, got {describe(value)}"
            )
        return float(value)  # type: ignore[arg-type]

    def string(self, value: object, key: str, what: str = "a non-empty string") -> str:
        """`value` as a non-empty string."""
        if not isinstance(value, str) or isinstance(value, UnparsedNumber) or not value:
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


def is_int(value: object) -> bool:
    """True for a real YAML integer (not a bool, not a number too long to convert)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_seconds(value: object) -> bool:
    """True for a finite number in (0, `MAX_SECONDS`]: no bool, inf, nan or huge int."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Compared before any float(): float() of a huge int raises OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return 0 < value <= MAX_SECONDS


def quote_hint(value: object) -> str:
    """Why a scalar the user meant as text is not a string, and the fix."""
    if isinstance(value, bool | int | float | UnparsedNumber):
        return "; YAML read it as a non-string, put it in quotes"
    return ""

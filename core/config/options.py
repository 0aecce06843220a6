"""Checking a component's options from `job.yaml` against the types it accepts.

A plugin's factory receives the `options` mapping of its `components`
entry. `check_options` gives every plugin the same errors for the same
mistakes (an unknown name with the known ones listed, a wrong YAML type, a
non-positive number, an empty string), each naming the dotted key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fl_core.config._checks import MAX_SECONDS, describe, is_int, is_seconds
from fl_core.errors import ConfigError
from fl_core.spec.security import Credentials

# The seconds bound and the value describer are the config files' own, so a
# plugin checking an option by hand says what the core says for the same value.
__all__ = ["MAX_SECONDS", "check_options", "describe", "is_seconds", "take_credentials"]

MAX_OPTION_INT = 2**63 - 1
"""The largest integer option (sizes in bytes can be large; a C int64 holds it)."""


def _type_ok(value: object, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    return isinstance(value, int | float if expected is float else expected)


def _number_ok(value: object) -> bool:
    """Positive and usable: no inf or nan, no int beyond `MAX_OPTION_INT` (float() of it fails)."""
    if isinstance(value, float):
        return math.isfinite(value) and value > 0
    return is_int(value) and 0 < value <= MAX_OPTION_INT  # type: ignore[operator]


def check_options(
    kind: str,
    name: str,
    options: Mapping[str, object],
    accepted: Mapping[str, type],
    *,
    source: str = "job.yaml",
) -> None:
    """Raise `ConfigError` unless every option is in `accepted` with its YAML type.

    `accepted` maps option names to `bool`, `int`, `float` (an int is
    accepted too) or `str`. Numbers must be positive and finite (ints at most
    `MAX_OPTION_INT`), strings non-empty.
    """
    for option, value in options.items():
        expected = accepted.get(option)
        key = f"components.{kind}.options.{option}"
        if expected is None:
            known = ", ".join(sorted(accepted))
            raise ConfigError(source, key, f"`{name}` has no such option; known: {known}")
        if not _type_ok(value, expected):
            raise ConfigError(source, key, f"expected {expected.__name__}, got {describe(value)}")
        # No inf, nan or number too big to use (YAML gives all three).
        if expected in (int, float) and not _number_ok(value):
            bound = "" if isinstance(value, int | float) and value <= 0 else " and finite"
            if is_int(value):
                bound = f" and <= {MAX_OPTION_INT}" if bound else ""
            raise ConfigError(source, key, f"must be positive{bound}, got {describe(value)}")
        if expected is str and not value:
            raise ConfigError(source, key, "must not be empty")


def take_credentials(options: dict[str, object]) -> Credentials | None:
    """Remove and return the `credentials` a container passes in code (never from YAML)."""
    credentials = options.pop("credentials", None)
    if credentials is not None and not isinstance(credentials, Credentials):
        raise ConfigError(
            "credentials",
            "",
            f"expected fl_core.spec.security.Credentials, got {type(credentials).__name__}",
        )
    return credentials

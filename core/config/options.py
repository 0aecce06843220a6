"""Checking a component's options from `job.yaml` against the types it accepts.

A plugin's factory receives the `options` mapping of its `components`
entry. `check_options` gives every plugin the same errors for the same
mistakes (an unknown name with the known ones listed, a wrong YAML type, a
non-positive number, an empty string), each naming the dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping

from fl_core.config._checks import MAX_INT, MAX_SECONDS, describe, is_int, is_seconds
from fl_core.errors import ConfigError
from fl_core.spec.security import Credentials

__all__ = ["check_options", "take_credentials"]


def _type_ok(value: object, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    return isinstance(value, int | float if expected is float else expected)


def _positive(value: object, top: float) -> str:
    # The bound is named only when it is what was crossed (inf, huge numbers).
    if isinstance(value, int | float) and value > top:
        return f"must be positive and <= {top:g}"
    return "must be positive"


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
    accepted too) or `str`. Numbers must be positive and strings non-empty.
    """
    for option, value in options.items():
        expected = accepted.get(option)
        key = f"components.{kind}.options.{option}"
        if expected is None:
            known = ", ".join(sorted(accepted))
            raise ConfigError(source, key, f"`{name}` has no such option; known: {known}")
        if not _type_ok(value, expected):
            raise ConfigError(source, key, f"expected {expected.__name__}, got {describe(value)}")
        # No inf, nan or number too big to use: a float option is a time or a size.
        top = MAX_SECONDS if expected is float else MAX_INT
        if expected is float:
            ok = is_seconds(value)
        else:
            ok = expected is not int or (is_int(value) and 0 < value <= MAX_INT)  # type: ignore[operator]
        if not ok:
            raise ConfigError(source, key, f"{_positive(value, top)}, got {describe(value)}")
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

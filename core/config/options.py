"""Checking a component's options from `job.yaml` against the types it accepts.

A plugin's factory receives the `options` mapping of its `components`
entry. `check_options` gives every plugin the same errors for the same
mistakes (an unknown name with the known ones listed, a wrong YAML type, a
non-positive number, an empty string), each naming the dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping

from fl_core.errors import ConfigError
from fl_core.spec.security import Credentials

__all__ = ["check_options", "take_credentials"]


def _type_ok(value: object, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    return isinstance(value, int | float if expected is float else expected)


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
            raise ConfigError(source, key, f"expected {expected.__name__}, got {value!r}")
        if expected in (int, float) and value <= 0:  # type: ignore[operator]
            raise ConfigError(source, key, f"must be positive, got {value!r}")
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

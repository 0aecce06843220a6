"""`check_options`: the same errors for the same option mistakes in every plugin."""

from __future__ import annotations

import pytest

from fl_core.config.options import check_options, take_credentials
from fl_core.errors import ConfigError
from fl_core.spec.security import Credentials

ACCEPTED = {"tls": bool, "port": int, "timeout": float, "name": str}


def test_good_options_pass() -> None:
    check_options("transport", "t", {"tls": True, "port": 3, "timeout": 2, "name": "x"}, ACCEPTED)


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"tsl": True}, "tsl", "`t` has no such option; known: name, port, timeout, tls"),
        ({"tls": 1}, "tls", "expected bool, got 1"),
        ({"port": True}, "port", "expected int, got True"),
        ({"port": 2.5}, "port", "expected int, got 2.5"),
        ({"timeout": "3"}, "timeout", "expected float, got '3'"),
        ({"timeout": 0}, "timeout", "must be positive, got 0"),
        ({"name": ""}, "name", "must not be empty"),
    ],
)
def test_each_mistake_names_the_key(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_options("transport", "t", options, ACCEPTED)
    assert caught.value.key == f"components.transport.options.{key}"
    assert problem in str(caught.value)


def test_credentials_are_taken_out_and_checked() -> None:
    credentials = Credentials(b"c", b"k", b"r")
    options: dict[str, object] = {"credentials": credentials, "tls": True}
    assert take_credentials(options) is credentials and options == {"tls": True}
    expected = r"expected fl_core\.spec\.security\.Credentials, got str"
    with pytest.raises(ConfigError, match=expected):
        take_credentials({"credentials": "pem"})

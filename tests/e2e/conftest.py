"""Fixtures of the end-to-end tests: real hosts as network namespaces (tests/e2e/netns.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping

import pytest

from tests.e2e.netns import Hosts, ip_command


def under_ci() -> bool:
    """True when the `CI` variable says this is a CI run (CI=true, CI=1, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_netns() -> None:
    """Skip or fail a test that needs network namespaces, as issue 13 says.

    A developer without root skips; CI runs as root and must run these tests, so
    under CI a missing privilege or a missing `ip` fails instead of hiding them.
    """
    if os.geteuid() != 0:
        message = "network namespaces need root (run the e2e tests as root, as CI does)"
        if under_ci():
            pytest.fail(f"CI is set but the tests do not run as root: {message}", pytrace=False)
        pytest.skip(message)
    if ip_command() is None:
        message = "iproute2's `ip` is missing: apt-get install iproute2 (.ci/run does)"
        if under_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


HostsFactory = Callable[[Mapping[str, str] | Iterable[str]], Hosts]


@pytest.fixture
def netns_hosts() -> Iterator[HostsFactory]:
    """Factory of `Hosts`: `netns_hosts({"server.example.org": "server", "site-1": "site-1"})`.

    Every `Hosts` it made is closed at teardown (processes killed, namespaces
    deleted). A test that asserts nothing was left behind calls `hosts.close()`
    itself and checks that it returned [].
    """
    require_netns()
    made: list[Hosts] = []

    def make(names: Mapping[str, str] | Iterable[str]) -> Hosts:
        hosts = Hosts(names)
        made.append(hosts)
        return hosts

    yield make
    errors: list[BaseException] = []
    for hosts in made:
        try:
            hosts.close()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]

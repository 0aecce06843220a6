"""The `none` security provider: plaintext, everything allowed, no options."""

from __future__ import annotations

import pytest

from fl_core.errors import ConfigError
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec.security import Identity, SecurityProvider
from fl_core.testing.security_contract import SecurityProviderContract
from fl_plugins.security_none import hooks
from fl_plugins.security_none.hooks import NoSecurity


@pytest.fixture
def registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("security_none", hooks)]).registry()


def test_the_hook_registers_none_and_nothing_else(registry: Registry) -> None:
    assert registry.names("security") == {"none": "security_none"}
    assert [c.name for c in registry.components()] == ["none"]


def test_the_factory_builds_a_security_provider(registry: Registry) -> None:
    provider = registry.create("security", "none", expect=SecurityProvider)
    assert isinstance(provider, NoSecurity)


@pytest.mark.parametrize("identity", ["server", "site-1", "site-1.job1"])
def test_no_credentials_means_plaintext(identity: str) -> None:
    assert NoSecurity().credentials(identity) is None


@pytest.mark.parametrize(
    ("actor", "action", "resource"),
    [("site-1", "submit_job", "job1"), ("anyone", "abort", "server"), ("", "", "")],
)
def test_every_action_is_allowed(actor: str, action: str, resource: str) -> None:
    assert NoSecurity().authorize(Identity(actor), action, Identity(resource)) == ""


def test_options_are_refused_naming_the_option(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="`none` takes no options") as info:
        registry.create("security", "none", {"cert": "x.pem"})
    assert info.value.key == "components.security.options.cert"


class TestNoSecurityContract(SecurityProviderContract):
    """The contract through the factory `security_none` registers: it claims no identities."""

    component = "none"
    plugin = "security_none"
    authenticates = False
    allowed = (("site-1", "submit_job", "job1"), ("stranger", "abort_job", "server"))

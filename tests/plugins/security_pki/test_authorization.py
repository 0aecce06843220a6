"""The server's rights (`authorization.yaml`): defaults, scopes, the file, and editing it live."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fl_core.errors import ConfigError
from fl_core.spec.security import Identity
from fl_plugins.security_pki.authorization import (
    ADMIN_ROLES,
    DEFAULT_RIGHTS,
    RIGHTS,
    Rights,
    RightsFile,
    Scope,
    authorization_yaml_text,
)

LOGGER = "fl_plugins.security_pki.authorization"

# The brief's table, written out here so a change to DEFAULT_RIGHTS is caught.
# Order: submit_job, abort_job, view_job, download_job, list_sites, shutdown.
EXPECTED_DEFAULTS = {
    "project_admin": "any any any any any any",
    "org_admin": "none org any org any none",
    "lead": "any own any own any none",
    "member": "none none any none any none",
}

BOB = Identity("bob@b.org", "b", "member")
# Whose job an action is about, relative to the actor bob@b.org of org b.
OWNERS = {
    "no job": None,
    "own job": Identity("bob@b.org", "b"),
    "org's job": Identity("carol@b.org", "b"),
    "other org's job": Identity("alice@a.org", "a"),
}
ALLOWED_BY_SCOPE = {
    "any": {"no job", "own job", "org's job", "other org's job"},
    "org": {"no job", "own job", "org's job"},
    "own": {"no job", "own job"},
    "none": set(),
}


def _cases() -> list[tuple[str, str, str, str]]:
    return [
        (role, right, scope, owner)
        for role, scopes in EXPECTED_DEFAULTS.items()
        for right, scope in zip(RIGHTS, scopes.split(), strict=True)
        for owner in OWNERS
    ]


def test_the_rights_are_the_briefs() -> None:
    assert RIGHTS == (
        "submit_job",
        "abort_job",
        "view_job",
        "download_job",
        "list_sites",
        "shutdown",
    )
    assert set(DEFAULT_RIGHTS) == set(ADMIN_ROLES) == set(EXPECTED_DEFAULTS)


@pytest.mark.parametrize(("role", "right", "scope", "owner"), _cases())
def test_each_default_role_right_and_scope(role: str, right: str, scope: str, owner: str) -> None:
    actor = Identity("bob@b.org", "b", role)
    reason = Rights().refusal(actor, right, OWNERS[owner])
    if owner in ALLOWED_BY_SCOPE[scope]:
        assert reason == ""
    else:
        assert reason.startswith(f"role '{role}' (bob@b.org, org b) ")
        assert right in reason


def test_a_missing_right_is_named_with_the_role() -> None:
    assert (
        Rights().refusal(BOB, "submit_job")
        == "role 'member' (bob@b.org, org b) has no right 'submit_job'"
    )


def test_own_scope_names_the_submitter() -> None:
    lead = Identity("bob@b.org", "b", "lead")
    assert Rights().refusal(lead, "abort_job", Identity("alice@a.org", "a")) == (
        "role 'lead' (bob@b.org, org b) may abort_job only its own jobs; "
        "job submitted by alice@a.org"
    )


def test_org_scope_names_both_orgs() -> None:
    admin = Identity("bob@b.org", "b", "org_admin")
    reason = Rights().refusal(admin, "download_job", Identity("alice@a.org", "a"))
    assert reason == (
        "role 'org_admin' (bob@b.org, org b) may download_job only jobs of org b; "
        "job submitted by alice@a.org (org a)"
    )


def test_org_scope_needs_an_org() -> None:
    # Two admins without an org are not of the same org.
    admin = Identity("bob@b.org", "", "org_admin")
    assert "only jobs of org (none)" in Rights().refusal(admin, "abort_job", Identity("x@y", ""))


@pytest.mark.parametrize("role", ["superuser", "server", "site", "", "Project_Admin"])
def test_an_unknown_role_is_refused_every_right(role: str) -> None:
    actor = Identity("bob@b.org", "b", role)
    for right in RIGHTS:
        reason = Rights().refusal(actor, right)
        assert reason.startswith(f"role '{role}' (bob@b.org, org b) has no right '{right}'")
        assert "project_admin, org_admin, lead, member" in reason


def test_no_identity_is_refused() -> None:
    reason = Rights().refusal(Identity("", "", "project_admin"), "view_job")
    assert reason == "no identity: 'view_job' needs an admin's certificate"


def test_an_unknown_right_is_refused_by_name() -> None:
    admin = Identity("root@a.org", "a", "project_admin")
    reason = Rights().refusal(admin, "format_disk")
    assert reason.startswith("unknown right 'format_disk'; rights are submit_job, abort_job")


# --- the file --------------------------------------------------------------------


def test_the_default_file_reads_back_as_the_defaults() -> None:
    text = authorization_yaml_text()
    assert text.startswith("#")  # explained for its owner
    rights = Rights.parse(text, "authorization.yaml")
    assert {r: dict(s) for r, s in rights.roles.items()} == {
        r: dict(s) for r, s in DEFAULT_RIGHTS.items()
    }


def test_load_reads_a_file_and_keeps_its_name(tmp_path: Path) -> None:
    path = tmp_path / "authorization.yaml"
    path.write_text("roles:\n  member: {view_job: own, shutdown: any}\n")
    rights = Rights.load(path)
    assert rights.source == str(path)
    assert rights.scope("member", "view_job") is Scope.OWN
    assert rights.scope("member", "shutdown") is Scope.ANY
    assert rights.scope("member", "list_sites") is Scope.NONE  # not listed: not granted


def test_a_role_the_file_leaves_out_has_no_rights() -> None:
    rights = Rights.parse("roles:\n  project_admin: any\n  member: none\n", "f")
    assert rights.refusal(Identity("root@a.org", "a", "project_admin"), "shutdown") == ""
    assert "has no right 'view_job'" in rights.refusal(BOB, "view_job")
    lead = Identity("l@a.org", "a", "lead")
    reason = rights.refusal(lead, "submit_job")
    assert reason == (
        "role 'lead' (l@a.org, org a) has no right 'submit_job' "
        "(roles with rights on this server: project_admin, member)"
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("roles:\n  lead: {submit_job: sometimes}\n", "roles.lead.submit_job", "expected a scope"),
        ("roles:\n  leed: any\n", "roles.leed", "did you mean 'lead'?"),
        ("roles:\n  lead: {submit: any}\n", "roles.lead.submit", "unknown right"),
        ("roles:\n  lead: [any]\n", "roles.lead", "expected a mapping of right: scope"),
        ("roles:\n  lead: {abort_job: 3}\n", "roles.lead.abort_job", "got 3"),
        ("rols:\n  lead: any\n", "rols", "unknown key"),
        ("roles: [lead]\n", "roles", "expected a mapping of roles"),
        ("# all commented out\n", "", "expected a mapping with the key `roles`"),
        ("- lead\n", "", "expected a mapping"),
        ("{}\n", "roles", "missing"),
        ("roles:\n  lead: any\n  lead: none\n", "", "the key 'lead' is given twice (line 3)"),
        ("roles: {lead: [\n", "", "not valid YAML"),
    ],
)
def test_a_broken_file_names_file_key_and_problem(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Rights.parse(text, "/kit/authorization.yaml")
    assert (info.value.source, info.value.key) == ("/kit/authorization.yaml", key)
    assert problem in info.value.problem


def test_load_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        Rights.load(tmp_path / "authorization.yaml")


# --- the file as the server reads it: edits take effect, breakage never ---------------

LEAD = Identity("bob@b.org", "b", "lead")
ALICES_JOB = Identity("alice@a.org", "a")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_edit_takes_effect_at_the_next_check(tmp_path: Path) -> None:
    path = tmp_path / "authorization.yaml"
    path.write_text(authorization_yaml_text())
    rights = RightsFile(path)
    assert "only its own jobs" in rights.refusal(LEAD, "abort_job", ALICES_JOB)
    # The owner widens the lead's abort right: same size, possibly the same mtime tick.
    path.write_text(path.read_text().replace("abort_job: own", "abort_job: any", 1))
    assert rights.refusal(LEAD, "abort_job", ALICES_JOB) == ""
    path.write_text("roles:\n  project_admin: any\n")
    assert "has no right 'abort_job'" in rights.refusal(LEAD, "abort_job", ALICES_JOB)
    assert rights.problem == ""


def test_a_broken_edit_keeps_the_last_good_rights_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "authorization.yaml"
    path.write_text("roles:\n  lead: {abort_job: any}\n")
    rights = RightsFile(path)
    caplog.set_level(logging.INFO, LOGGER)
    path.write_text("roles:\n  lead: {abort_job: everything}\n")
    for _ in range(3):
        assert rights.refusal(LEAD, "abort_job", ALICES_JOB) == ""  # the last good rights
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings  # once per broken content, not per admin action
    assert str(path) in warnings[0]
    assert "roles.lead.abort_job" in warnings[0]
    assert "keeping the last good rights until the file is fixed" in warnings[0]
    assert "roles.lead.abort_job" in rights.problem
    # Fixed: the fixed file is in force and the problem is gone.
    path.write_text("roles:\n  lead: {abort_job: own}\n")
    assert "only its own jobs" in rights.refusal(LEAD, "abort_job", ALICES_JOB)
    assert rights.problem == ""


def test_a_file_broken_from_the_start_means_the_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "authorization.yaml"
    path.write_text("roles:\n  member: {submit_job: any}\n  member: any\n")
    caplog.set_level(logging.WARNING, LOGGER)
    rights = RightsFile(path)
    warnings = _warnings(caplog)
    assert (
        len(warnings) == 1
        and str(path) in warnings[0]
        and "keeping the default rights" in warnings[0]
    )
    assert rights.refusal(BOB, "submit_job") == (
        "role 'member' (bob@b.org, org b) has no right 'submit_job'"
    )
    assert rights.refusal(LEAD, "submit_job") == ""


def test_a_missing_file_means_the_defaults_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "authorization.yaml"
    caplog.set_level(logging.WARNING, LOGGER)
    rights = RightsFile(path)
    assert any("not found" in w and str(path) in w for w in _warnings(caplog))
    assert rights.rights().roles == DEFAULT_RIGHTS
    path.write_text("roles:\n  member: any\n")
    assert rights.refusal(BOB, "shutdown") == ""
    path.unlink()  # removed again: back to the defaults
    assert "has no right 'shutdown'" in rights.refusal(BOB, "shutdown")


def test_the_file_a_server_kit_is_provisioned_with_says_the_defaults() -> None:
    # Provisioning (core) writes the file; this plugin reads it: one table, twice written.
    from fl_core.provision.kits import authorization_text

    assert Rights.parse(authorization_text(), "authorization.yaml").roles == DEFAULT_RIGHTS

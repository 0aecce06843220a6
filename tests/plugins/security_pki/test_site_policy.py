"""A site's own policy (`site_policy.yaml`): matchers, limits, defaults, editing it live."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fl_core.errors import ConfigError
from fl_core.spec.security import Identity
from fl_plugins.security_pki.site_policy import (
    ACTIONS,
    DEFAULT_POLICY,
    SitePolicy,
    SitePolicyFile,
    site_policy_yaml_text,
)

LOGGER = "fl_plugins.security_pki.authorization"  # PolicyFile, shared with the rights
FILE = "/kit/site-1/site_policy.yaml"

# The defaults mirror the server's default rights (see the module docstring).
EXPECTED_DEFAULTS = {
    # run_job, byoc, read_results, abort_job
    "project_admin": "any any any any",
    "org_admin": "none none org org",
    "lead": "any any own own",
    "member": "none none none none",
}
OWNERS = {
    "no job": None,
    "own job": Identity("bob@b.org", "b"),
    "org's job": Identity("carol@b.org", "b"),
    "other org's job": Identity("alice@a.org", "a"),
}
ALLOWED_BY_SCOPE = {
    "any": set(OWNERS),
    "org": {"no job", "own job", "org's job"},
    "own": {"no job", "own job"},
    "none": set(),
}


def _policy(text: str) -> SitePolicy:
    return SitePolicy.parse(text, FILE)


@pytest.mark.parametrize(
    ("role", "action", "scope", "owner"),
    [
        (role, action, scope, owner)
        for role, scopes in EXPECTED_DEFAULTS.items()
        for action, scope in zip(ACTIONS, scopes.split(), strict=True)
        for owner in OWNERS
    ],
)
def test_the_default_policy(role: str, action: str, scope: str, owner: str) -> None:
    reason = DEFAULT_POLICY.authorize(Identity("bob@b.org", "b", role), action, OWNERS[owner])
    if owner in ALLOWED_BY_SCOPE[scope]:
        assert reason == ""
    else:
        assert reason.startswith(f"the default site policy: {action}: ")
        assert f"role '{role}' (bob@b.org, org b)" in reason


def test_default_limits_are_the_process_launcher_and_any_image() -> None:
    lead = Identity("bob@b.org", "b", "lead")
    assert DEFAULT_POLICY.authorize(lead, "launcher:process") == ""
    assert DEFAULT_POLICY.authorize(lead, "launcher:docker") == (
        "the default site policy: launchers: launcher 'docker' is not allowed on this site "
        "(allowed: process)"
    )
    assert DEFAULT_POLICY.authorize(lead, "image:anything/at-all:1") == ""


@pytest.mark.parametrize("role", ["server", "site", "", "superuser"])
def test_only_admins_ever_match(role: str) -> None:
    # Even `any`: the server (or another site) cannot act on this site as an admin.
    policy = _policy("run_job: any\nabort_job: [{org: b}]\n")
    for action in ("run_job", "abort_job"):
        reason = policy.authorize(Identity("bob@b.org", "b", role), action)
        assert reason.startswith(f"{FILE}: {action}: role '{role}' (bob@b.org, org b) is not an")


def test_no_identity_never_matches() -> None:
    reason = _policy("run_job: any\n").authorize(Identity("", "", "lead"), "run_job")
    assert "is not an admin" in reason


def test_the_briefs_example_file() -> None:
    policy = _policy(
        "run_job: [{org: hospital-a}, {role: project_admin}]\n"
        "byoc: [{role: project_admin}, {role: lead}]\n"
        "read_results: any\n"
        "abort_job: [{name: alice@a.org}]\n"
        "launchers: [process]\n"
        "images: any\n"
    )
    alice = Identity("alice@a.org", "hospital-a", "member")
    bob = Identity("bob@b.org", "b", "lead")
    root = Identity("root@c.org", "c", "project_admin")
    assert policy.authorize(alice, "run_job") == ""  # by org
    assert policy.authorize(root, "run_job") == ""  # by role
    assert policy.authorize(bob, "run_job") == (
        f"{FILE}: run_job: role 'lead' (bob@b.org, org b) matches no rule "
        "(rules: [{org: hospital-a}, {role: project_admin}])"
    )
    assert policy.authorize(bob, "byoc") == ""
    assert "matches no rule (rules: [{role: project_admin}, {role: lead}])" in (
        policy.authorize(alice, "byoc")
    )
    assert policy.authorize(Identity("m@x.org", "x", "member"), "read_results") == ""
    assert policy.authorize(alice, "abort_job") == ""  # by name, whatever the role
    assert "matches no rule (rules: [{name: alice@a.org}])" in policy.authorize(root, "abort_job")


def test_every_key_of_a_rule_must_match_and_values_may_be_lists() -> None:
    policy = _policy("run_job: [{org: [a, b], role: lead}]\n")
    assert policy.authorize(Identity("x@a", "a", "lead"), "run_job") == ""
    assert policy.authorize(Identity("x@b", "b", "lead"), "run_job") == ""
    assert "matches no rule" in policy.authorize(Identity("x@c", "c", "lead"), "run_job")
    assert "matches no rule" in policy.authorize(Identity("x@a", "a", "member"), "run_job")
    assert "(rules: [{org: [a, b], role: lead}])" in policy.authorize(
        Identity("x@a", "a", "member"), "run_job"
    )


def test_jobs_narrows_a_rule_to_own_or_org_jobs() -> None:
    policy = _policy("abort_job: [{role: lead, jobs: own}, {org: a, jobs: org}]\n")
    bob = Identity("bob@b.org", "b", "lead")
    assert policy.authorize(bob, "abort_job", Identity("bob@b.org", "b")) == ""
    assert policy.authorize(bob, "abort_job") == ""  # about no one job
    assert policy.authorize(bob, "abort_job", Identity("alice@a.org", "a")) == (
        f"{FILE}: abort_job: rule {{role: lead, jobs: own}}: role 'lead' (bob@b.org, org b) "
        "may abort_job only its own jobs; job submitted by alice@a.org"
    )
    assert "only its own jobs" in policy.refusal(
        bob, "abort_job", launcher="process", owner=Identity("alice@a.org", "a")
    )
    # An admin of org a matches the second rule: its org's jobs, nobody else's.
    carol = Identity("carol@a.org", "a", "member")
    assert policy.authorize(carol, "abort_job", Identity("alice@a.org", "a")) == ""
    assert "only jobs of org a" in policy.authorize(carol, "abort_job", Identity("z@z", "z"))
    # Any one matching rule that allows is enough.
    lead_a = Identity("dave@a.org", "a", "lead")
    assert policy.authorize(lead_a, "abort_job", Identity("alice@a.org", "a")) == ""


def test_none_and_an_empty_list_allow_nobody() -> None:
    policy = _policy("run_job: none\nbyoc: []\n")
    root = Identity("root@a.org", "a", "project_admin")
    assert policy.authorize(root, "run_job").endswith("matches no rule (rules: none)")
    assert policy.authorize(root, "byoc").endswith("matches no rule (rules: none)")


def test_launchers_and_images_limits() -> None:
    policy = _policy("launchers: [process, docker]\nimages: [pytorch:2.1, 'nvcr.io/nvidia/*']\n")
    lead = Identity("bob@b.org", "b", "lead")
    assert policy.authorize(lead, "launcher:docker") == ""
    assert policy.authorize(lead, "launcher:slurm") == (
        f"{FILE}: launchers: launcher 'slurm' is not allowed on this site "
        "(allowed: docker, process)"
    )
    assert policy.authorize(lead, "image:pytorch:2.1") == ""
    assert policy.authorize(lead, "image:nvcr.io/nvidia/pytorch:24.01") == ""
    assert policy.authorize(lead, "image:pytorch:latest") == (
        f"{FILE}: images: image 'pytorch:latest' is not allowed on this site "
        "(allowed: nvcr.io/nvidia/*, pytorch:2.1)"
    )
    assert "launcher 'process' is not allowed" in _policy("launchers: none\n").authorize(
        lead, "launcher:process"
    )
    assert _policy("launchers: any\n").authorize(lead, "launcher:slurm") == ""


def test_refusal_checks_the_action_then_launcher_and_image() -> None:
    policy = _policy("run_job: any\nlaunchers: [docker]\nimages: [ok:1]\n")
    lead = Identity("bob@b.org", "b", "lead")
    assert policy.refusal(lead, "run_job", launcher="docker", image="ok:1") == ""
    assert "launcher 'process'" in policy.refusal(lead, "run_job", launcher="process", image="ok:1")
    assert "image 'bad:1'" in policy.refusal(lead, "run_job", launcher="docker", image="bad:1")
    outsider = Identity("s", "b", "site")
    assert "is not an admin" in policy.refusal(outsider, "run_job", launcher="docker")


@pytest.mark.parametrize("action", ["submit_job", "launcher:", "image:", "launcher", "", "RUN_JOB"])
def test_an_unknown_action_is_refused_by_name(action: str) -> None:
    reason = DEFAULT_POLICY.authorize(Identity("root@a.org", "a", "project_admin"), action)
    assert reason.startswith(f"unknown site action '{action}'; site actions are run_job, byoc")


def test_a_key_left_out_keeps_its_default() -> None:
    policy = _policy("launchers: [docker]\n")
    assert policy.actions == DEFAULT_POLICY.actions
    assert policy.images is None
    assert _policy("# nothing but comments\n").actions == DEFAULT_POLICY.actions


def test_the_default_file_reads_back_as_the_defaults() -> None:
    text = site_policy_yaml_text()
    policy = _policy(text)
    assert policy.actions == DEFAULT_POLICY.actions
    assert (policy.launchers, policy.images) == (DEFAULT_POLICY.launchers, None)
    for action in ACTIONS:  # every action is spelt out, so its owner sees what applies
        assert f"\n{action}: " in text


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("run_jobs: any\n", "run_jobs", "did you mean 'run_job'?"),
        ("run_job: everyone\n", "run_job", "expected any, none, or a list of rules"),
        ("run_job: [hospital-a]\n", "run_job.0", "expected a rule like {org: hospital-a}"),
        ("run_job: [{}]\n", "run_job.0", "expected a rule"),
        ("run_job: [{orgs: a}]\n", "run_job.0.orgs", "did you mean 'org'?"),
        ("byoc: [{role: admin}]\n", "byoc.0.role", "unknown role 'admin'"),
        ("byoc: [{role: [lead, 3]}]\n", "byoc.0.role", "expected a name or a list of names"),
        ("abort_job: [{org: a, jobs: none}]\n", "abort_job.0.jobs", "expected one of any, org"),
        ("read_results: [{name: ''}]\n", "read_results.0.name", "expected a name"),
        ("launchers: process\n", "launchers", "expected any, none, or a list of names"),
        ("images: [1]\n", "images", "expected any, none, or a list of names"),
        ("- run_job\n", "", "expected a mapping of actions"),
        ("run_job: any\nrun_job: none\n", "", "the key 'run_job' is given twice"),
        ("run_job: [{org: a}\n", "", "not valid YAML"),
    ],
)
def test_a_broken_file_names_file_key_and_problem(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _policy(text)
    assert (info.value.source, info.value.key) == (FILE, key)
    assert problem in info.value.problem


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "site_policy.yaml"
    path.write_text("run_job: [{org: a}]\n")
    policy = SitePolicy.load(path)
    assert policy.source == str(path)
    assert f"{path}: run_job:" in policy.authorize(Identity("b@b", "b", "lead"), "run_job")
    with pytest.raises(ConfigError, match="cannot read the file"):
        SitePolicy.load(tmp_path / "absent.yaml")


# --- the file as the site reads it --------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_edits_take_effect_and_a_broken_edit_keeps_the_last_good_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "site_policy.yaml"
    path.write_text("run_job: [{org: a}]\n")
    policy = SitePolicyFile(path)
    from_b = Identity("bob@b.org", "b", "lead")
    assert "matches no rule" in policy.authorize(from_b, "run_job")
    path.write_text("run_job: [{org: b}]\n")  # same size
    assert policy.authorize(from_b, "run_job") == ""
    caplog.set_level(logging.WARNING, LOGGER)
    path.write_text("run_job: [{org: b, jobs: all}]\n")
    assert policy.authorize(from_b, "run_job") == ""  # still the last good policy
    assert policy.refusal(from_b, "run_job", launcher="process") == ""
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "run_job.0.jobs" in warnings[0]
    assert "keeping the last good site policy" in warnings[0]
    assert "run_job.0.jobs" in policy.problem
    path.write_text("run_job: none\n")
    assert "matches no rule (rules: none)" in policy.authorize(from_b, "run_job")
    assert policy.problem == ""


def test_a_missing_or_broken_file_at_start_means_the_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    path = tmp_path / "site_policy.yaml"
    missing = SitePolicyFile(path)
    assert any("not found" in w and str(path) in w for w in _warnings(caplog))
    member = Identity("m@b.org", "b", "member")
    reason = missing.authorize(member, "run_job")
    assert reason.startswith(f"the default site policy (instead of {path}): run_job: ")
    path.write_text("images: {}\n")
    broken = SitePolicyFile(path)
    assert "images" in broken.problem
    assert broken.policy().actions == DEFAULT_POLICY.actions
    assert any("keeping the default site policy" in w and "images" in w for w in _warnings(caplog))


def test_refusal_has_the_shape_of_the_servers_rights(tmp_path: Path) -> None:
    # A provider may hold a RightsFile or a SitePolicyFile and ask either
    # `refusal(actor, action, owner)`.
    path = tmp_path / "site_policy.yaml"
    path.write_text("abort_job: [{role: lead, jobs: own}]\nlaunchers: [process]\n")
    policy = SitePolicyFile(path)
    bob = Identity("bob@b.org", "b", "lead")
    alices = Identity("alice@a.org", "a")
    for action, owner in [("abort_job", alices), ("abort_job", bob), ("launcher:docker", None)]:
        assert policy.refusal(bob, action, owner) == policy.authorize(bob, action, owner)
    assert "only its own jobs" in policy.refusal(bob, "abort_job", alices)
    assert policy.refusal(bob, "abort_job", bob) == ""
    assert "launcher 'docker'" in policy.refusal(bob, "launcher:docker")
    assert "image 'x:1'" in _policy("images: []\n").refusal(bob, "image:x:1")


def test_the_file_a_site_kit_is_provisioned_with_says_the_defaults() -> None:
    from fl_core.provision.kits import site_policy_text

    written = SitePolicy.parse(site_policy_text("site-1"), "site_policy.yaml")
    assert (written.actions, written.launchers, written.images) == (
        DEFAULT_POLICY.actions,
        DEFAULT_POLICY.launchers,
        DEFAULT_POLICY.images,
    )

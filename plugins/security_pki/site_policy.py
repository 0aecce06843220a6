"""A site's own policy: which admins may do what on this site (`site_policy.yaml`).

Authorization is federated, as in NVIDIA FLARE since 2.2.1: the server
checks its `authorization.yaml`, and each site checks every action that
touches it against its own policy and the requesting admin's identity (which
the site verifies itself, so the server cannot act in an admin's name).

    run_job: [{org: hospital-a}, {role: project_admin}]
    byoc: [{role: project_admin}, {role: lead}]
    read_results: any
    abort_job: [{name: alice@a.org}, {role: org_admin, jobs: org}]
    launchers: [process]
    images: any              # or image names for the docker launcher; * and ? match

Actions: `run_job` (run a job here; the actor is the job's signer), `byoc`
(run a job that brings its own code, any `.py` file), `read_results` (this
site's logs and results of a job), `abort_job` (this site's part of a job).
Each takes `any`, `none`, or a list of rules. A rule matches an admin when
every key it gives matches: `name` (the certificate's email), `org`, `role`
(each a value or a list of values); `jobs: own | org | any` (default any)
narrows it to jobs the admin submitted, or that its org submitted. Rules
only ever match admins (certificates with an admin role): neither the server
nor another site is an admin here.

`launchers` and `images` limit what jobs may use here: `any`, or a list.

A key the file leaves out keeps its default (`DEFAULT_POLICY`): the admins
whom the server's default rights let do the same (run_job and byoc:
project_admin and lead; read_results and abort_job: project_admin, org_admin
for its org's jobs, lead for its own), only the `process` launcher, any image.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from fl_core.errors import ConfigError
from fl_core.spec.security import Identity
from fl_plugins.security_pki.authorization import (
    ADMIN_ROLES,
    PolicyFile,
    Scope,
    describe_actor,
    did_you_mean,
    read_file,
    read_policy_yaml,
    scope_refusal,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY",
    "SITE_POLICY_FILE",
    "Rule",
    "SitePolicy",
    "SitePolicyFile",
    "site_policy_yaml_text",
]

SITE_POLICY_FILE: Final = "site_policy.yaml"

ACTIONS: Final = ("run_job", "byoc", "read_results", "abort_job")
"""The actions a site checks; `launcher:NAME` and `image:NAME` check its limits."""

_LIMITS: Final = ("launchers", "images")
_RULE_KEYS: Final = ("name", "org", "role", "jobs")
_JOBS: Final = (Scope.ANY.value, Scope.ORG.value, Scope.OWN.value)


@dataclass(frozen=True, slots=True)
class Rule:
    """Admins a site lets do something: every key given must match (empty: any)."""

    names: frozenset[str] = frozenset()
    orgs: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    jobs: Scope = Scope.ANY

    def matches(self, actor: Identity) -> bool:
        """Whether `actor` is one of the admins this rule names (its `jobs` aside)."""
        return (
            actor.role in ADMIN_ROLES
            and bool(actor.name)
            and (not self.names or actor.name in self.names)
            and (not self.orgs or actor.org in self.orgs)
            and (not self.roles or actor.role in self.roles)
        )

    def __str__(self) -> str:
        parts = [
            f"{key}: {_one_or_list(values)}"
            for key, values in (("name", self.names), ("org", self.orgs), ("role", self.roles))
            if values
        ]
        if self.jobs is not Scope.ANY or not parts:
            parts.append(f"jobs: {self.jobs}")
        return "{" + ", ".join(parts) + "}"


def _one_or_list(values: frozenset[str]) -> str:
    ordered = sorted(values)
    return ordered[0] if len(ordered) == 1 else "[" + ", ".join(ordered) + "]"


ANY_ADMIN: Final = (Rule(),)
"""The rules `any` stands for: every admin."""


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """Who may do each action on this site, and which launchers and images jobs may use.

    `launchers` and `images` are None for `any`.
    """

    actions: Mapping[str, tuple[Rule, ...]]
    launchers: frozenset[str] | None = frozenset({"process"})
    images: tuple[str, ...] | None = None
    source: str = "the default site policy"

    @classmethod
    def load(cls, path: str | Path) -> SitePolicy:
        """Read a `site_policy.yaml`; `ConfigError(file, key, problem)` when it is broken."""
        return cls.parse(read_file(Path(path)), str(path))

    @classmethod
    def parse(cls, raw: bytes | str, source: str) -> SitePolicy:
        """A policy from a file's text; `source` names the file in errors and refusals."""
        data = read_policy_yaml(raw.encode() if isinstance(raw, str) else raw, source)
        if data is None:
            data = {}  # an empty file (or only comments): every default
        if not isinstance(data, dict):
            raise ConfigError(source, "", f"expected a mapping of actions, got {_shown(data)}")
        known = (*ACTIONS, *_LIMITS)
        for key in data:
            if key not in known:
                raise ConfigError(
                    source,
                    str(key),
                    f"unknown key; a site policy has {', '.join(known)}"
                    + did_you_mean(str(key), known),
                )
        actions = dict(DEFAULT_POLICY.actions)
        for action in ACTIONS:
            if action in data:
                actions[action] = _rules(data[action], source, action)
        policy = replace(DEFAULT_POLICY, actions=actions, source=source)
        if "launchers" in data:
            policy = replace(policy, launchers=_names(data["launchers"], source, "launchers"))
        if "images" in data:
            images = _names(data["images"], source, "images")
            policy = replace(policy, images=None if images is None else tuple(sorted(images)))
        return policy

    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        """`SecurityProvider.authorize` on a site: "" when allowed, else why not.

        `action` is one of `ACTIONS`, or `launcher:NAME` / `image:NAME` for
        the launcher and image a job asks for.
        """
        return self.refusal(actor, action, owner)

    def refusal(
        self,
        actor: Identity,
        action: str,
        owner: Identity | None = None,
        *,
        launcher: str | None = None,
        image: str | None = None,
    ) -> str:
        """Why `actor` may not do `action` here (on `owner`'s job, and with that
        launcher and image when given), or "" when it may.

        `action` as for `authorize`. A refusal names this file and the rule.
        `refusal(actor, action, owner)` is the shape the server's
        `RightsFile.refusal` has, so a provider may hold either.
        """
        kind, _, name = action.partition(":")
        if kind == "launcher" and name:
            return self.launcher_refusal(name)
        if kind == "image" and name:
            return self.image_refusal(name)
        if action not in ACTIONS:
            return (
                f"unknown site action '{action}'; site actions are "
                f"{', '.join(ACTIONS)}, launcher:NAME and image:NAME"
            )
        reason = self._rules_refusal(actor, action, owner)
        if not reason and launcher is not None:
            reason = self.launcher_refusal(launcher)
        if not reason and image is not None:
            reason = self.image_refusal(image)
        return reason

    def launcher_refusal(self, launcher: str) -> str:
        """Why jobs may not use `launcher` here, or ""."""
        if self.launchers is None or launcher in self.launchers:
            return ""
        allowed = ", ".join(sorted(self.launchers)) or "none"
        return (
            f"{self.source}: launchers: launcher '{launcher}' is not allowed on this site "
            f"(allowed: {allowed})"
        )

    def image_refusal(self, image: str) -> str:
        """Why jobs may not use the container `image` here, or ""."""
        if self.images is None or any(fnmatch.fnmatchcase(image, p) for p in self.images):
            return ""
        allowed = ", ".join(self.images) or "none"
        return (
            f"{self.source}: images: image '{image}' is not allowed on this site "
            f"(allowed: {allowed})"
        )

    def _rules_refusal(self, actor: Identity, action: str, owner: Identity | None) -> str:
        rules = self.actions[action]
        where = f"{self.source}: {action}"
        if actor.role not in ADMIN_ROLES or not actor.name:
            return (
                f"{where}: {describe_actor(actor)} is not an admin; "
                f"a site policy allows only admins ({', '.join(ADMIN_ROLES)})"
            )
        matching = [rule for rule in rules if rule.matches(actor)]
        if not matching:
            return f"{where}: {describe_actor(actor)} matches no rule (rules: {_listed(rules)})"
        reasons = []
        for rule in matching:
            reason = scope_refusal(actor, action, rule.jobs, owner)
            if not reason:
                return ""
            reasons.append(f"rule {rule}: {reason}")
        return f"{where}: {reasons[0]}"


def _listed(rules: Iterable[Rule]) -> str:
    shown = [str(rule) for rule in rules]
    if shown == [str(rule) for rule in ANY_ADMIN]:
        return "any"
    return "[" + ", ".join(shown) + "]" if shown else "none"


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{text[:57]}..." if len(text) > 60 else text


def _rules(value: object, source: str, key: str) -> tuple[Rule, ...]:
    if value == "any":
        return ANY_ADMIN
    if value == "none" or value == []:
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            source, key, f"expected any, none, or a list of rules, got {_shown(value)}"
        )
    return tuple(_rule(item, source, f"{key}.{index}") for index, item in enumerate(value))


def _rule(value: object, source: str, key: str) -> Rule:
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            source,
            key,
            f"expected a rule like {{org: hospital-a}} (keys {', '.join(_RULE_KEYS)}), "
            f"got {_shown(value)}",
        )
    for name in value:
        if name not in _RULE_KEYS:
            raise ConfigError(
                source,
                f"{key}.{name}",
                f"unknown rule key; a rule has {', '.join(_RULE_KEYS)}"
                + did_you_mean(str(name), _RULE_KEYS),
            )
    roles = _values(value.get("role"), source, f"{key}.role")
    for role in sorted(roles):
        if role not in ADMIN_ROLES:
            raise ConfigError(
                source,
                f"{key}.role",
                f"unknown role '{role}'; admin roles are {', '.join(ADMIN_ROLES)}"
                + did_you_mean(role, ADMIN_ROLES),
            )
    jobs = value.get("jobs", Scope.ANY.value)
    if jobs not in _JOBS:
        raise ConfigError(
            source, f"{key}.jobs", f"expected one of {', '.join(_JOBS)}, got {_shown(jobs)}"
        )
    return Rule(
        names=_values(value.get("name"), source, f"{key}.name"),
        orgs=_values(value.get("org"), source, f"{key}.org"),
        roles=roles,
        jobs=Scope(jobs),
    )


def _values(value: object, source: str, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ConfigError(source, key, f"expected a name or a list of names, got {_shown(value)}")
    return frozenset(str(item) for item in items)


def _names(value: object, source: str, key: str) -> frozenset[str] | None:
    if value == "any":
        return None
    if value == "none" or value == []:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            source, key, f"expected any, none, or a list of names, got {_shown(value)}"
        )
    return frozenset(value)


def _defaults() -> SitePolicy:
    submitters = (Rule(roles=frozenset({"project_admin"})), Rule(roles=frozenset({"lead"})))
    managers = (
        Rule(roles=frozenset({"project_admin"})),
        Rule(roles=frozenset({"org_admin"}), jobs=Scope.ORG),
        Rule(roles=frozenset({"lead"}), jobs=Scope.OWN),
    )
    # Mirrors the server's default rights: submit_job for run_job and byoc,
    # download_job and abort_job for the rest.
    return SitePolicy(
        actions={
            "run_job": submitters,
            "byoc": submitters,
            "read_results": managers,
            "abort_job": managers,
        }
    )


DEFAULT_POLICY: Final = _defaults()
"""The policy of a site whose kit has no `site_policy.yaml` (and each missing key's)."""


class SitePolicyFile(PolicyFile[SitePolicy]):
    """A site kit's `site_policy.yaml`, as it is now (see `authorization.PolicyFile`)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            path,
            SitePolicy.parse,
            replace(DEFAULT_POLICY, source=f"the default site policy (instead of {path})"),
            "site policy",
        )

    def policy(self) -> SitePolicy:
        """The policy in force."""
        return self.current()

    def authorize(self, actor: Identity, action: str, owner: Identity | None = None) -> str:
        """`SitePolicy.authorize` by the policy in force now."""
        return self.current().authorize(actor, action, owner)

    def refusal(
        self,
        actor: Identity,
        action: str,
        owner: Identity | None = None,
        *,
        launcher: str | None = None,
        image: str | None = None,
    ) -> str:
        """`SitePolicy.refusal` by the policy in force now."""
        return self.current().refusal(actor, action, owner, launcher=launcher, image=image)


def site_policy_yaml_text() -> str:
    """The text of a site kit's `site_policy.yaml`: the defaults, explained."""
    policy = DEFAULT_POLICY
    lines = [
        "# What admins may do on this site. The site checks every action that touches it",
        "# against the requesting admin's own signed identity, whatever the server allows.",
        "#",
        "# Each action takes `any` (every admin), `none`, or a list of rules. A rule matches",
        "# an admin when every key it gives matches:",
        "#   name: alice@hospital-a.org     the admin's certificate (an email)",
        "#   org: hospital-a                the admin's org",
        "#   role: lead                     project_admin, org_admin, lead or member",
        "#   jobs: own                      only jobs it submitted (org: its org's; any)",
        "# A value may be a list: {role: [project_admin, lead]}.",
        "#",
        "#   run_job       run a job on this site (checked against the job's signer)",
        "#   byoc          run a job that brings its own code (.py files)",
        "#   read_results  read this site's logs and results of a job",
        "#   abort_job     abort this site's part of a job",
        "#   launchers     the launchers jobs may use here (any, or a list: [process, docker])",
        "#   images        the container images jobs may use (any, or names; * and ? match)",
        "#",
        "# Edit freely: the site reads this file again at the next action. A broken edit is",
        "# logged as a WARNING naming the key, and the policy in force stays as it was.",
        "# A key left out keeps its default (the one written here).",
    ]
    for action in ACTIONS:
        lines.append(f"{action}: {_listed(policy.actions[action])}")
    launchers = (
        "any" if policy.launchers is None else "[" + ", ".join(sorted(policy.launchers)) + "]"
    )
    images = "any" if policy.images is None else "[" + ", ".join(policy.images) + "]"
    lines += [f"launchers: {launchers}", f"images: {images}"]
    return "\n".join(lines) + "\n"

"""A stand-in for the rights files: the default rights, fixed, until their readers land.

The server's `authorization.yaml` and a site's `site_policy.yaml` are read by
`authorization` and `site_policy` (written separately); until then the
provider decides with the defaults both files start with. Nothing here reads
a file: an edit of either has no effect while this stand-in is in use.
"""

from __future__ import annotations

from typing import Final

from fl_core.provision.kits import DEFAULT_RIGHTS
from fl_core.spec.security import Identity

__all__ = ["DefaultServerRights", "DefaultSitePolicy", "NoRights"]

SITE_ACTIONS: Final = ("run_job", "byoc", "read_results", "abort_job")


def _who(actor: Identity) -> str:
    org = f", org {actor.org}" if actor.org else ""
    return f"role {actor.role!r} ({actor.name}{org})"


def _scope_refusal(actor: Identity, right: str, scope: str, owner: Identity | None) -> str:
    if scope == "none":
        return f"{_who(actor)} has no right {right!r}"
    if owner is None or scope == "any":
        return ""
    if scope == "own" and owner.name == actor.name and actor.name:
        return ""
    if scope == "org" and owner.org == actor.org and actor.org:
        return ""
    whose = "its own jobs" if scope == "own" else f"jobs of org {actor.org or '(none)'}"
    return f"{_who(actor)} may {right} only {whose}; job submitted by {owner.name}"


class DefaultServerRights:
    """The server's default rights: NVIDIA FLARE's default roles."""

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """Why `actor` may not use `right` (on `owner`'s job), or ""."""
        rights = DEFAULT_RIGHTS.get(actor.role)
        if rights is None:
            return f"{actor.name or 'an unknown peer'} has no admin role (role {actor.role!r})"
        if right not in rights:
            return f"{_who(actor)} has no right {right!r} (rights: {', '.join(rights)})"
        return _scope_refusal(actor, right, rights[right], owner)


class DefaultSitePolicy:
    """A site's default policy: admins whom the server's defaults let do the same.

    `launcher:NAME` and `image:NAME` ask whether jobs may use a launcher or an
    image here: only `process`, and any image.
    """

    _SCOPES: Final = {
        "run_job": {"project_admin": "any", "lead": "any"},
        "byoc": {"project_admin": "any", "lead": "any"},
        "read_results": {"project_admin": "any", "org_admin": "org", "lead": "own"},
        "abort_job": {"project_admin": "any", "org_admin": "org", "lead": "own"},
    }

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """Why this site does not let `actor` do `right` (on `owner`'s job), or ""."""
        kind, _, what = right.partition(":")
        if kind == "launcher" and what:
            # Only the process launcher by default: a container launcher is the owner's choice.
            return (
                ""
                if what == "process"
                else f"this site allows only the launcher 'process', not {what!r}"
            )
        if kind == "image" and what:
            return ""  # any image, by default
        scopes = self._SCOPES.get(right)
        if scopes is None:
            return (
                f"this site's policy has no action {right!r} (actions: {', '.join(SITE_ACTIONS)})"
            )
        return _scope_refusal(actor, right, scopes.get(actor.role, "none"), owner)


class NoRights:
    """An admin's kit: nothing is decided on an admin's machine, so everything is refused."""

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """Always a refusal."""
        return f"an admin's kit grants no rights ({right!r} asked by {actor.name or 'nobody'})"

"""`fl-core policy check`: how a kit's security policy decides an action.

    fl-core policy check KIT --as NAME:ORG:ROLE ACTION [--owner NAME:ORG]

KIT is a startup kit (the folder holding its `federation.yaml`). The kit's
security provider (`pki` for kits `fl-core provision` wrote) is built the
way its participant builds it, with `kit=KIT`, and asked
`authorize(Identity(NAME, ORG, ROLE), ACTION, owner)`: the server's kit
answers from its `authorization.yaml` (actions `submit_job`, `abort_job`,
...), a site's from its `site_policy.yaml` (`run_job`, `byoc`,
`read_results`, `abort_job`, `launcher:NAME`, `image:NAME`). `--owner` says
who submitted the job the action is about. It prints `allowed` (exit 0) or
`refused: REASON` (exit 1), before anyone relies on the policy.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final, TextIO

from fl_core.cli.usage import UsageError
from fl_core.errors import ConfigError
from fl_core.spec.security import Identity, SecurityProvider

__all__ = ["add_policy_parser", "parse_actor", "parse_owner", "policy_command"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1


def add_policy_parser(sub: Any) -> None:
    """Add `fl-core policy check ...` to the top-level subparsers."""
    policy = sub.add_parser("policy", help="see how a kit's security policy decides an action")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = policy_sub.add_parser(
        "check",
        help="print whether an admin may do an action, and if not, why",
        description="Ask a startup kit's security provider whether an admin may do an action. "
        "Server kits: submit_job, abort_job, view_job, download_job, list_sites, shutdown. "
        "Site kits: run_job, byoc, read_results, abort_job, launcher:NAME, image:NAME.",
    )
    check.add_argument(
        "kit", type=Path, metavar="KIT", help="the startup kit (holds federation.yaml)"
    )
    check.add_argument(
        "--as",
        dest="actor",
        required=True,
        metavar="NAME:ORG:ROLE",
        help="the admin asking, e.g. alice@hospital-a.org:hospital-a:lead",
    )
    check.add_argument(
        "action", metavar="ACTION", help="the action or right, e.g. submit_job or run_job"
    )
    check.add_argument(
        "--owner",
        metavar="NAME:ORG",
        help="who submitted the job the action is about (default: an action on no one job)",
    )


def parse_actor(text: str) -> Identity:
    """`NAME:ORG:ROLE` as an identity; `UsageError` when it is not one."""
    parts = text.split(":")
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise UsageError(
            f"--as {text!r}: expected NAME:ORG:ROLE, e.g. alice@hospital-a.org:hospital-a:lead"
        )
    name, org, role = (part.strip() for part in parts)
    return Identity(name, org, role)


def parse_owner(text: str) -> Identity:
    """`NAME:ORG` (who submitted a job) as an identity; `UsageError` when it is not one."""
    parts = text.split(":")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise UsageError(
            f"--owner {text!r}: expected NAME:ORG, e.g. alice@hospital-a.org:hospital-a"
        )
    name, org = (part.strip() for part in parts)
    return Identity(name, org)


def policy_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run `fl-core policy check`; exit 0 when allowed, 1 when refused."""
    # Only `check` exists; argparse requires it.
    actor = parse_actor(args.actor)
    owner = parse_owner(args.owner) if args.owner is not None else None
    provider = _provider(args.kit)
    reason = provider.authorize(actor, args.action, owner)
    out.write(f"refused: {reason}\n" if reason else "allowed\n")
    return EXIT_REFUSED if reason else EXIT_OK


def _provider(kit: Path) -> SecurityProvider:
    from fl_core.config.federation import FEDERATION_FILE, load_federation
    from fl_core.containers.parts import build_component, registry_of
    from fl_core.containers.production import from_kit
    from fl_core.plugins import make_plugin_manager
    from fl_core.spec import ComponentKind

    if kit.is_dir() and not (kit / FEDERATION_FILE).is_file():
        raise ConfigError(
            str(kit),
            "",
            f"not a startup kit: no {FEDERATION_FILE} (`fl-core provision` writes kits)",
        )
    federation = load_federation(kit)
    if federation.security.name == "none":
        # `none` allows everything and reads no kit: saying "allowed" would
        # pass for a policy this folder does not have.
        raise ConfigError(
            str(federation.source),
            "security",
            "`none` enforces no policy (every action is allowed); `fl-core policy check` "
            "needs a startup kit written by `fl-core provision`",
        )
    # Built as the kit's own participant builds it (`kit=` the kit's folder).
    security = from_kit(federation).security
    registry = registry_of(make_plugin_manager())
    provider = build_component(
        registry, ComponentKind.SECURITY.value, security.name, security.options
    )
    assert isinstance(provider, SecurityProvider)  # the registry checked the kind's interface
    return provider

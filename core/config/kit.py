"""A startup kit's own description: whose kit it is (`kit.yaml`, written by `fl-core provision`).

    project: hospital-net
    name: site-1                   # a site, the server's host name, or an admin's email
    org: hospital-a
    role: site                     # server | site | project_admin | org_admin | lead | member
    server: {host: server.example.org, port: 8002}
    transport: grpc

Next to it in the kit: `federation.yaml` (what the runtime reads),
`credentials/` (certificate, key, CA), `crl.pem`, and the server's
`authorization.yaml` or a site's `site_policy.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fl_core.config._checks import Checker, read_yaml_file

KIT_FILE: Final = "kit.yaml"
ADMIN_ROLES: Final = ("project_admin", "org_admin", "lead", "member")
ROLES: Final = ("server", "site", *ADMIN_ROLES)


@dataclass(frozen=True, slots=True)
class KitConfig:
    """Who a startup kit belongs to."""

    root: Path
    project: str
    name: str
    org: str
    role: str
    elsewhere: Path | None = None
    """Where the participant runs when not inside the kit (`fl-core start --workspace`):
    that folder holds a copy of the federation file that names the kit."""

    @property
    def kind(self) -> str:
        """`server`, `site` or `admin`."""
        return "admin" if self.role in ADMIN_ROLES else self.role

    @property
    def federation_file(self) -> Path:
        """The federation config the kit's processes read."""
        return (self.elsewhere or self.root) / "federation.yaml"

    @property
    def workspace(self) -> Path:
        """Where the participant's processes keep their state (inside the kit by default)."""
        return (self.elsewhere or self.root) / ("server" if self.role == "server" else self.name)

    @property
    def certificate(self) -> Path:
        """The participant's certificate (PEM)."""
        return self.root / "credentials" / "cert.pem"


def load_kit(path: str | Path) -> KitConfig:
    """Read a kit's `kit.yaml`; `ConfigError` says what is wrong and where."""
    root = Path(path).resolve()
    source = root / KIT_FILE
    missing = "not a startup kit: no kit.yaml (kits are made by `fl-core provision`)"
    data = read_yaml_file(source, missing)
    check = Checker(str(source))
    top = check.mapping(
        data,
        "",
        ("project", "name", "org", "role", "server", "transport"),
        {"project": "the project", "name": "the participant", "role": "its role"},
        what="a kit description",
    )
    role = check.string(top["role"], "role")
    if role not in ROLES:
        raise check.error("role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    org = top.get("org") or ""
    return KitConfig(
        root=root,
        project=check.string(top["project"], "project"),
        name=check.string(top["name"], "name"),
        org=org if isinstance(org, str) else str(org),
        role=role,
    )

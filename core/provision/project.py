"""PROJECT.yml: who takes part in a production federation.

    project: hospital-net
    transport: grpc            # or tcp (default grpc)
    valid_days: 365            # how long participant certificates last (optional)
    server: {name: server.example.org, host: server.example.org, port: 8002, org: nvidia}
    sites:
      - {name: site-1, org: hospital-a}
    admins:
      - {name: admin@hospital-a.org, org: hospital-a, role: project_admin}

The server's `name` is a host name; it goes into its certificate, and sites
check it when they connect. `host` (default: the name) is where sites reach
it and `port` the one port to open on it; `org` defaults to the project.
Every problem of the file is reported at once, each naming the file and key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import yaml

from fl_core.config._checks import Checker, describe, join, read_yaml_file
from fl_core.config.federation import RESERVED_SITES, SITE_NAME
from fl_core.pki.identity import ADMIN_ROLES

__all__ = ["Participant", "Project", "load_project", "parse_project", "project_yaml"]

TRANSPORTS: Final = ("grpc", "tcp")
DEFAULT_VALID_DAYS: Final = 365
MAX_VALID_DAYS: Final = 3650
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_PROJECT: Final = SITE_NAME
_MAX_NAME: Final = 64
"""X.509 limits a certificate's CN and O to 64 characters."""
_TOP_KEYS: Final = ("project", "transport", "valid_days", "server", "sites", "admins")


@dataclass(frozen=True, slots=True)
class Participant:
    """One kit to issue: the server, a site or an admin."""

    name: str
    org: str
    role: str
    """`server`, `site`, or an admin role."""


@dataclass(frozen=True, slots=True)
class Project:
    """A validated PROJECT.yml."""

    source: Path
    name: str
    transport: str
    server: Participant
    host: str
    """Where participants reach the server."""
    port: int
    sites: tuple[Participant, ...] = ()
    admins: tuple[Participant, ...] = ()
    valid_days: int = DEFAULT_VALID_DAYS

    @property
    def participants(self) -> tuple[Participant, ...]:
        """The server, then the sites, then the admins."""
        return (self.server, *self.sites, *self.admins)

    def participant(self, name: str) -> Participant | None:
        """The participant named `name`, if the project has one."""
        return next((p for p in self.participants if p.name == name), None)


def is_host_name(value: str) -> bool:
    """Whether `value` is a DNS host name (RFC 1123 labels)."""
    labels = value.split(".")
    return len(value) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def load_project(path: str | Path) -> Project:
    """Read and validate a PROJECT.yml; `ConfigError` (or several) naming file and key."""
    source = Path(path).resolve()
    return parse_project(read_yaml_file(source, "project file not found"), source)


def parse_project(data: object, source: Path) -> Project:
    """Validate a loaded PROJECT.yml mapping."""
    check = Checker(str(source))
    top = check.mapping(
        data,
        "",
        _TOP_KEYS,
        {"project": "the project's name", "server": "the server: {name, host, port}"},
        what="a project mapping",
        collect=True,
    )
    name = (
        check.attempt(lambda: _project_name(check, top["project"]), "") if "project" in top else ""
    )
    transport = check.attempt(lambda: _transport(check, top.get("transport", "grpc")), "grpc")
    valid_days = check.attempt(
        lambda: check.integer(
            top.get("valid_days", DEFAULT_VALID_DAYS), "valid_days", 1, MAX_VALID_DAYS
        ),
        DEFAULT_VALID_DAYS,
    )
    fallback = (Participant("", "", "server"), "", 0)
    server, host, port = (
        check.attempt(lambda: _server(check, top["server"], name), fallback)
        if "server" in top
        else fallback
    )
    none: tuple[Participant, ...] = ()
    sites = check.attempt(lambda: _sites(check, top.get("sites") or []), none)
    admins = check.attempt(lambda: _admins(check, top.get("admins") or []), none)
    seen: dict[str, str] = {server.name: "server.name"} if server.name else {}
    for key, entries in (("sites", sites), ("admins", admins)):
        for index, participant in enumerate(entries):
            where = join(join(key, index), "name")
            if participant.name in seen:
                check.errors.append(
                    check.error(
                        where, f"{participant.name!r} is already named by {seen[participant.name]}"
                    )
                )
            seen.setdefault(participant.name, where)
    check.raise_errors()
    return Project(source, name, transport, server, host, port, sites, admins, valid_days)


def _project_name(check: Checker, value: object) -> str:
    text = check.string(value, "project")
    if not _PROJECT.fullmatch(text):
        raise check.error(
            "project",
            f"expected a name of letters, digits, '-' and '_' (a folder name), got {text!r}",
        )
    return text


def _transport(check: Checker, value: object) -> str:
    if value not in TRANSPORTS:
        raise check.error(
            "transport", f"expected one of {', '.join(TRANSPORTS)}, got {describe(value)}"
        )
    assert isinstance(value, str)
    return value


def _org(check: Checker, value: object, key: str) -> str:
    text = check.string(value, key, "an organization name")
    if len(text) > _MAX_NAME or not text.isprintable():
        raise check.error(
            key,
            f"expected a printable name of at most {_MAX_NAME} characters, got {describe(text)}",
        )
    return text


def _server(check: Checker, value: object, project: str) -> tuple[Participant, str, int]:
    server: Any = check.mapping(
        value,
        "server",
        ("name", "host", "port", "org"),
        {"name": "the server's host name", "port": "the port sites connect to"},
        "the server: {name, host, port}",
    )
    inner = Checker(check.source)
    name = inner.attempt(lambda: _host_name(check, server["name"], "server.name"), "")
    host = inner.attempt(lambda: _host(check, server.get("host", name), "server.host"), "")
    port = inner.attempt(lambda: check.integer(server["port"], "server.port", 1, 65535), 0)
    org = inner.attempt(
        lambda: _org(check, server.get("org", project or "server"), "server.org"), ""
    )
    inner.raise_errors()
    return Participant(name, org, "server"), host, port


def _host_name(check: Checker, value: object, key: str) -> str:
    text = check.string(value, key, "a host name")
    if not is_host_name(text) or len(text) > _MAX_NAME or _is_ip(text):
        raise check.error(
            key,
            f"expected a host name of at most {_MAX_NAME} characters (labels of letters, digits "
            f"and '-', joined by '.'), got {text!r}",
        )
    return text


def _host(check: Checker, value: object, key: str) -> str:
    text = check.string(value, key, "a host name or IP address")
    if not (is_host_name(text) or _is_ip(text)):
        raise check.error(key, f"expected a host name or an IP address, got {text!r}")
    return text


def _entries(check: Checker, value: object, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise check.error(key, f"expected a list, got {describe(value)}")
    return value


def _sites(check: Checker, value: object) -> tuple[Participant, ...]:
    found: list[Participant] = []
    inner = Checker(check.source)
    for index, raw in enumerate(_entries(check, value, "sites")):
        key = join("sites", index)
        found.append(inner.attempt(partial(_site, check, raw, key), Participant("", "", "site")))
    inner.raise_errors()
    return tuple(found)


def _site(check: Checker, raw: object, key: str) -> Participant:
    entry: Any = check.mapping(
        raw,
        key,
        ("name", "org"),
        {"name": "the site's name", "org": "its organization"},
        "a site: {name, org}",
    )
    inner = Checker(check.source)
    name = inner.attempt(lambda: check.string(entry["name"], join(key, "name")), "")
    if name and (
        not SITE_NAME.fullmatch(name) or name in RESERVED_SITES or name.startswith("admin-")
    ):
        inner.errors.append(
            check.error(
                join(key, "name"),
                "expected a site name of letters, digits, '-' and '_', at most 64 characters "
                f"(not 'server', 'admin' or 'admin-...'), got {name!r}",
            )
        )
    org = inner.attempt(lambda: _org(check, entry["org"], join(key, "org")), "")
    inner.raise_errors()
    return Participant(name, org, "site")


def _admins(check: Checker, value: object) -> tuple[Participant, ...]:
    found: list[Participant] = []
    inner = Checker(check.source)
    for index, raw in enumerate(_entries(check, value, "admins")):
        key = join("admins", index)
        found.append(inner.attempt(partial(_admin, check, raw, key), Participant("", "", "member")))
    inner.raise_errors()
    return tuple(found)


def _admin(check: Checker, raw: object, key: str) -> Participant:
    entry: Any = check.mapping(
        raw,
        key,
        ("name", "org", "role"),
        {"name": "the admin's email", "org": "their organization", "role": "their role"},
        "an admin: {name, org, role}",
    )
    inner = Checker(check.source)
    name = inner.attempt(lambda: check.string(entry["name"], join(key, "name"), "an email"), "")
    if name and (not _EMAIL.fullmatch(name) or len(name) > _MAX_NAME):
        inner.errors.append(
            check.error(
                join(key, "name"),
                f"expected an email of at most {_MAX_NAME} characters, got {name!r}",
            )
        )
    org = inner.attempt(lambda: _org(check, entry["org"], join(key, "org")), "")
    role = entry["role"]
    if role not in ADMIN_ROLES:
        inner.errors.append(
            check.error(
                join(key, "role"), f"expected one of {', '.join(ADMIN_ROLES)}, got {describe(role)}"
            )
        )
    inner.raise_errors()
    return Participant(name, org, str(role))


def project_yaml(project: Project, participants: list[Participant]) -> str:
    """PROJECT.yml text for `project` with only `participants` (the ones provisioned)."""
    names = {p.name for p in participants}
    server = project.server
    data: dict[str, Any] = {
        "project": project.name,
        "transport": project.transport,
        "valid_days": project.valid_days,
        "server": {
            "name": server.name,
            "host": project.host,
            "port": project.port,
            "org": server.org,
        },
        "sites": [{"name": s.name, "org": s.org} for s in project.sites if s.name in names],
        "admins": [
            {"name": a.name, "org": a.org, "role": a.role}
            for a in project.admins
            if a.name in names
        ],
    }
    return yaml.safe_dump(data, sort_keys=False)

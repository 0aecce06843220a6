"""The federation config: who the server and the sites are, and how they connect.

`fl-core poc prepare` writes one (`federation.yaml`) at the top of a POC
workspace; the server parent and every client parent read it:

    name: poc
    transport: tcp                 # or {name: grpc, options: {...}}; any installed transport
    security: none                 # the security provider (POC: none; production: pki)
    launcher: process              # what starts job processes (server and client jobs)
    server:
      listen: tcp://127.0.0.1:0    # port 0: a free port; the real URL is written to server/url
      heartbeat_interval: 1.0      # seconds between a client parent's heartbeats
      heartbeat_timeout: 5.0       # a site silent this long is dead
      max_jobs: 2                  # jobs running at once
      job_start_timeout: 60        # seconds for a job's processes to come up and join
    sites: [site-1, site-2]

Folders, relative to the file: `server/` is the server parent's workspace
(its job store in `server/jobs/`, its URL in `server/url` once it listens,
its log in `server/log.txt`); `<site>/` is each client parent's; `admin/`
is the admin's.

The federation fixes transport and security for every job; a job that
names others is refused (`fl-core job check`, and at submit). A site may
restrict the launchers its jobs use in its own `<site>/site.yaml`
(`launchers: [docker]`, see `fl_core.config.site`).

Credentials (POC): each party's secrets are in a `credentials/` folder of
its own workspace (mode 0700, files 0600, see `fl_core.credentials`):
`admin/credentials/admin.key` proves an admin, `<site>/credentials/site.key`
proves a site, and `server/credentials/` holds the server parent's copies
(`admin.key`, `<site>.key`) to check them against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import yaml

from fl_core.config._checks import Checker, describe, join, read_yaml_file
from fl_core.config.job import ComponentChoice

FEDERATION_FILE: Final = "federation.yaml"
SERVER_DIR: Final = "server"
URL_FILE: Final = "url"
"""Written by the server parent into its workspace once it listens (the real port)."""
ADMIN_DIR: Final = "admin"
CREDENTIALS_DIR: Final = "credentials"

SITE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""What a site's name may be (fullmatch); also not one of `RESERVED_SITES`."""
RESERVED_SITES: Final = frozenset({SERVER_DIR, ADMIN_DIR})
_TOP_KEYS: Final = ("name", "mode", "transport", "security", "launcher", "server", "sites")
MODES: Final = ("poc", "production")
_SERVER_KEYS: Final = (
    "listen",
    "url",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_jobs",
    "job_start_timeout",
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the server parent listens and watches its sites."""

    listen: str = "tcp://127.0.0.1:0"
    url: str = ""
    """Where participants reach the server parent (production: `grpc://HOST:PORT`);
    "" means the URL it writes into its workspace once it listens (POC, one machine)."""
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    max_jobs: int = 2
    job_start_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """A validated federation config."""

    source: Path
    root: Path
    """The folder holding the file; workspaces are relative to it."""
    name: str
    transport: ComponentChoice
    mode: str = "poc"
    """`poc` (one machine, shared secrets) or `production` (startup kits, PKI)."""
    security: ComponentChoice = field(default_factory=lambda: ComponentChoice("none", {}))
    launcher: ComponentChoice = field(default_factory=lambda: ComponentChoice("process", {}))
    server: ServerSettings = field(default_factory=ServerSettings)
    sites: tuple[str, ...] = ()

    @property
    def server_dir(self) -> Path:
        """The server parent's workspace."""
        return self.root / SERVER_DIR

    def site_dir(self, site: str) -> Path:
        """A client parent's workspace."""
        return self.root / site

    @property
    def url_file(self) -> Path:
        """Where the server parent writes the URL it listens on."""
        return self.server_dir / URL_FILE

    @property
    def admin_key_file(self) -> Path:
        """The admin's secret, with which `fl-core job ...` proves it is an admin."""
        return self.root / ADMIN_DIR / CREDENTIALS_DIR / "admin.key"

    def site_key_file(self, site: str) -> Path:
        """A site's secret, with which its client parent proves the site's name."""
        return self.site_dir(site) / CREDENTIALS_DIR / "site.key"

    def server_key_file(self, party: str) -> Path:
        """The server parent's copy of the admin's (`party` "admin") or a site's secret."""
        return self.server_dir / CREDENTIALS_DIR / f"{party}.key"


def load_federation(path: str | Path) -> FederationConfig:
    """Read and validate a federation file (or the `federation.yaml` in a folder)."""
    source = Path(path).resolve()
    if source.is_dir():
        source = source / FEDERATION_FILE
    data = read_yaml_file(source, "federation file not found (run `fl-core poc prepare`)")
    return parse_federation(data, source)


def parse_federation(data: object, source: Path) -> FederationConfig:
    """Validate a loaded federation mapping; `ConfigError` names the key and the problem."""
    check = Checker(str(source))
    top = check.mapping(
        data,
        "",
        _TOP_KEYS,
        {"name": "the federation's name", "sites": "a list of site names"},
        what="a federation mapping",
        collect=True,
    )
    # Each key on its own, so one run reports every problem of the file.
    name = check.attempt(lambda: check.string(top["name"], "name"), "") if "name" in top else ""
    transport = check.attempt(
        lambda: _component(check, "transport", top.get("transport", "tcp")),
        ComponentChoice("tcp", {}),
    )
    security = check.attempt(
        lambda: _component(check, "security", top.get("security", "none")),
        ComponentChoice("none", {}),
    )
    launcher = check.attempt(
        lambda: _component(check, "launcher", top.get("launcher", "process")),
        ComponentChoice("process", {}),
    )
    server = check.attempt(lambda: _server(check, top.get("server") or {}), ServerSettings())
    mode = check.attempt(lambda: _mode(check, top.get("mode", "poc")), "poc")
    none: tuple[str, ...] = ()
    # Production needs no list: any site its CA certified may join.
    listed = top.get("sites") if "sites" in top else none
    if mode == "production" and listed in ([], None):
        listed = none
    sites = check.attempt(lambda: _sites(check, listed), none) if listed != none else none
    check.raise_errors()
    return FederationConfig(
        source=source,
        root=source.parent,
        name=name,
        transport=transport,
        mode=mode,
        security=security,
        launcher=launcher,
        server=server,
        sites=sites,
    )


def _mode(check: Checker, value: object) -> str:
    if value not in MODES:
        raise check.error("mode", f"expected one of {', '.join(MODES)}, got {describe(value)}")
    return str(value)


def _sites(check: Checker, raw_sites: object) -> tuple[str, ...]:
    if not isinstance(raw_sites, list) or not raw_sites:
        raise check.error("sites", f"expected a list of site names, got {describe(raw_sites)}")
    sites: list[str] = []
    for index, site in enumerate(raw_sites):
        key = join("sites", index)
        if not isinstance(site, str) or not SITE_NAME.fullmatch(site) or site in RESERVED_SITES:
            raise check.error(
                key,
                "expected a site name of letters, digits, '-' and '_' "
                "(not 'server' or 'admin'), "
                f"got {describe(site)}",
            )
        if site in sites or site.startswith("admin-"):
            raise check.error(key, f"site {site!r} is named twice or is reserved")
        sites.append(site)
    return tuple(sites)


def _component(check: Checker, kind: str, value: object) -> ComponentChoice:
    if isinstance(value, str):
        return ComponentChoice(check.plugin_name(value, kind), {})
    choice = check.mapping(value, kind, ("name", "options"), {"name": f"a {kind} name"})
    return ComponentChoice(
        check.plugin_name(choice["name"], f"{kind}.name"),
        check.options(choice.get("options"), f"{kind}.options"),
    )


def _server(check: Checker, value: object) -> ServerSettings:
    settings = check.mapping(value, "server", _SERVER_KEYS)
    defaults = ServerSettings()
    found: dict[str, Any] = {}
    inner = Checker(check.source)  # every bad setting is reported, not only the first
    for key in ("listen", "url"):
        if key in settings:
            found[key] = inner.attempt(
                partial(check.string, settings[key], f"server.{key}"), getattr(defaults, key)
            )
    for key in ("heartbeat_interval", "heartbeat_timeout", "job_start_timeout"):
        if key in settings:
            found[key] = inner.attempt(
                partial(_seconds, check, settings[key], f"server.{key}"), getattr(defaults, key)
            )
    if "max_jobs" in settings:
        found["max_jobs"] = inner.attempt(
            lambda: check.integer(settings["max_jobs"], "server.max_jobs", 1), defaults.max_jobs
        )
    inner.raise_errors()
    result = ServerSettings(**{**_as_dict(defaults), **found})
    if result.heartbeat_timeout <= result.heartbeat_interval:
        raise check.error(
            "server.heartbeat_timeout",
            f"must be longer than heartbeat_interval ({result.heartbeat_interval:g} s), "
            f"got {result.heartbeat_timeout:g} s",
        )
    return result


def _seconds(check: Checker, value: object, key: str) -> float:
    seconds = check.positive_seconds(value, key, allow_null=False)
    assert seconds is not None
    return seconds


def _as_dict(settings: ServerSettings) -> dict[str, Any]:
    return {key: getattr(settings, key) for key in _SERVER_KEYS}


def federation_yaml(
    name: str,
    sites: list[str],
    *,
    transport: str = "tcp",
    security: str = "none",
    launcher: str = "process",
    server: Mapping[str, Any] | None = None,
    mode: str = "poc",
) -> str:
    """The text of a federation file (what `fl-core poc prepare` writes)."""
    # The default listen URL speaks the federation's transport.
    defaults = {**_as_dict(ServerSettings()), "listen": f"{transport}://127.0.0.1:0"}
    del defaults["url"]  # one machine: participants read the URL the server writes
    data: dict[str, Any] = {
        "name": name,
        **({"mode": mode} if mode != "poc" else {}),
        "transport": transport,
        "security": security,
        "launcher": launcher,
        "server": {**defaults, **(server or {})},
        "sites": list(sites),
    }
    return yaml.safe_dump(data, sort_keys=False)

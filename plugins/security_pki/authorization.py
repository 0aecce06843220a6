"""The server's rights: which admin role may do what, on whose jobs (`authorization.yaml`).

The server kit holds `authorization.yaml`; its owner may edit it at any time:

    roles:
      lead:
        submit_job: any
        abort_job: own      # any | org | own | none
        ...
      member: none          # one scope for every right

A right's scope says on which jobs the role may use it: `any` job, jobs
submitted by someone of the actor's `org`, its `own` jobs, or `none`. An
action not about one job (`list_sites`, `shutdown`, `submit_job`) is allowed
by any scope but `none`. A role the file does not list has no rights; so
has an identity without a role, or with a role that is not an admin's.

The defaults (`DEFAULT_RIGHTS`) follow NVIDIA FLARE's default roles: the
project admin may do everything; an org admin manages its org's jobs but
submits none; a lead submits and manages its own jobs; a member looks.

`RightsFile` is what the server asks: it reads the file again whenever it
changed, and a broken edit never breaks the server: it logs a WARNING naming
the file and key, and keeps the rights it had (the defaults if it never had
good ones). The reloading and YAML helpers here are shared with
`site_policy`.
"""

from __future__ import annotations

import difflib
import enum
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Generic, TypeVar

import yaml

from fl_core.config.kit import ADMIN_ROLES
from fl_core.errors import ConfigError
from fl_core.pki.kit import DEFAULT_RIGHTS as PROVISIONED_RIGHTS
from fl_core.pki.kit import RIGHTS
from fl_core.spec.security import Identity

__all__ = [
    "ADMIN_ROLES",
    "AUTHORIZATION_FILE",
    "DEFAULT_RIGHTS",
    "RIGHTS",
    "PolicyFile",
    "Rights",
    "RightsFile",
    "Scope",
    "authorization_yaml_text",
    "describe_actor",
    "read_policy_yaml",
    "scope_refusal",
]

log = logging.getLogger(__name__)

AUTHORIZATION_FILE: Final = "authorization.yaml"


_RIGHT_HELP: Final = {
    "submit_job": "submit a job",
    "abort_job": "abort a job",
    "view_job": "list jobs, see their status and logs",
    "download_job": "download a job's results",
    "list_sites": "list the sites",
    "shutdown": "shut the federation down",
}


class Scope(enum.StrEnum):
    """On which jobs a role may use a right."""

    ANY = "any"
    ORG = "org"
    """Jobs submitted by an admin of the actor's org."""
    OWN = "own"
    """Jobs the actor submitted."""
    NONE = "none"


def _frozen(table: Mapping[str, Mapping[str, Scope]]) -> Mapping[str, Mapping[str, Scope]]:
    return MappingProxyType({role: MappingProxyType(dict(got)) for role, got in table.items()})


# One table: provisioning (core) writes it into every server kit's authorization.yaml.
DEFAULT_RIGHTS: Final[Mapping[str, Mapping[str, Scope]]] = _frozen(
    {
        role: {right: Scope(scope) for right, scope in rights.items()}
        for role, rights in PROVISIONED_RIGHTS.items()
    }
)
"""Role -> right -> scope when the server kit has no (good) `authorization.yaml`."""


# --- shared with site_policy ---------------------------------------------------------


def describe_actor(actor: Identity) -> str:
    """How a refusal names who asked: `role 'lead' (bob@b.org, org b)`."""
    where = f", org {actor.org}" if actor.org else ""
    return f"role '{actor.role}' ({actor.name}{where})"


def scope_refusal(actor: Identity, right: str, scope: Scope, owner: Identity | None) -> str:
    """Why `scope` does not let `actor` use `right` on `owner`'s job, or "" when it does."""
    if scope is Scope.NONE:
        return f"{describe_actor(actor)} has no right '{right}'"
    # Without an owner the action is about no one job: any scope but none covers it.
    if owner is None or scope is Scope.ANY:
        return ""
    if scope is Scope.OWN:
        if actor.name and owner.name == actor.name:
            return ""
        return (
            f"{describe_actor(actor)} may {right} only its own jobs; job submitted by {owner.name}"
        )
    if actor.org and owner.org == actor.org:
        return ""
    submitter = f"{owner.name} (org {owner.org})" if owner.org else owner.name
    return (
        f"{describe_actor(actor)} may {right} only jobs of org {actor.org or '(none)'}; "
        f"job submitted by {submitter}"
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `; did you mean 'x'?` suffix for a near miss, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice.

    Plain YAML keeps the last of two `lead:` entries without a word; in a
    policy file that silently drops the rule its owner wrote first.
    """


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[object, object]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            continue  # unhashable; the schema check refuses it with its key path
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (line {line})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


def read_policy_yaml(raw: bytes, source: str) -> object:
    """Parse a policy file's bytes; `ConfigError` (with the line) when it is not YAML."""
    try:
        return yaml.load(raw, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from exc


def read_file(path: Path) -> bytes:
    """A policy file's bytes; `ConfigError` naming the file when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the file: {exc.strerror or exc}") from exc


T = TypeVar("T")


class PolicyFile(Generic[T]):
    """A policy read from a file its owner may edit while the participant runs.

    Every `current()` reads the file again (a few hundred bytes, read only for
    admin actions) and parses it when its bytes changed. Comparing bytes, not
    mtime and size, catches an edit of `own` to `any` within one tick of the
    file system's clock, which keeps both. A missing file means `default`;
    a broken one keeps the last good policy, or `default` if there was none,
    and logs one WARNING naming the file, key and problem.
    """

    def __init__(
        self, path: str | Path, parse: Callable[[bytes, str], T], default: T, what: str
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._default = default
        self._what = what
        self._lock = threading.Lock()
        self._raw: bytes | None = None
        self._seen = False
        self._value = default
        self._problem = ""
        self.current()  # a broken file is reported at start, not at the first admin action

    @property
    def problem(self) -> str:
        """Why the file as it is now is not in force ("" when it is, or is missing)."""
        with self._lock:
            return self._problem

    def current(self) -> T:
        """The policy in force: the file's, as it is now if it is good."""
        with self._lock:
            try:
                raw: bytes | None = self.path.read_bytes()
            except FileNotFoundError:
                raw = None
            except OSError as exc:
                self._broken(ConfigError(str(self.path), "", f"cannot read: {exc.strerror}"))
                return self._value
            if self._seen and raw == self._raw:
                return self._value
            self._seen, self._raw = True, raw
            if raw is None:
                self._value, self._problem = self._default, ""
                log.warning("%s not found; using the default %s", self.path, self._what)
                return self._value
            try:
                value = self._parse(raw, str(self.path))
            except ConfigError as exc:
                self._broken(exc)
                return self._value
            self._value, self._problem = value, ""
            log.info("%s: %s loaded", self.path, self._what)
            return value

    def _broken(self, error: ConfigError) -> None:
        if str(error) == self._problem:
            return  # said once per broken content, not at every admin action
        self._problem = str(error)
        kept = "the last good" if self._value is not self._default else "the default"
        log.warning("%s; keeping %s %s until the file is fixed", error, kept, self._what)


# --- rights ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rights:
    """Role -> right -> scope, and where it came from."""

    roles: Mapping[str, Mapping[str, Scope]] = field(default_factory=lambda: DEFAULT_RIGHTS)
    source: str = "the default rights"

    @classmethod
    def load(cls, path: str | Path) -> Rights:
        """Read an `authorization.yaml`; `ConfigError(file, key, problem)` when it is broken."""
        return cls.parse(read_file(Path(path)), str(path))

    @classmethod
    def parse(cls, raw: bytes | str, source: str) -> Rights:
        """Rights from a file's text; `source` names the file in errors."""
        data = read_policy_yaml(raw.encode() if isinstance(raw, str) else raw, source)
        if not isinstance(data, dict):
            raise ConfigError(
                source, "", f"expected a mapping with the key `roles`, got {_kind(data)}"
            )
        for key in data:
            if key != "roles":
                raise ConfigError(source, str(key), "unknown key; the file holds only `roles`")
        if "roles" not in data:
            raise ConfigError(source, "roles", "missing; it maps each admin role to its rights")
        roles = data["roles"]
        if not isinstance(roles, dict):
            raise ConfigError(source, "roles", f"expected a mapping of roles, got {_kind(roles)}")
        table: dict[str, dict[str, Scope]] = {}
        for role, rights in roles.items():
            if role not in ADMIN_ROLES:
                raise ConfigError(
                    source,
                    f"roles.{role}",
                    f"unknown role; admin roles are {', '.join(ADMIN_ROLES)}"
                    + did_you_mean(str(role), ADMIN_ROLES),
                )
            table[role] = _role_rights(rights, source, f"roles.{role}")
        return cls(_frozen(table), source)

    def scope(self, role: str, right: str) -> Scope:
        """The scope `role` has for `right` (`none` for an unlisted role or right)."""
        return self.roles.get(role, {}).get(right, Scope.NONE)

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """Why `actor` may not use `right` (on a job `owner` submitted), or "" when it may."""
        if right not in RIGHTS:
            return f"unknown right '{right}'; rights are {', '.join(RIGHTS)}"
        if not actor.name:
            return f"no identity: '{right}' needs an admin's certificate"
        if actor.role not in self.roles:
            listed = ", ".join(self.roles) or "none"
            return (
                f"{describe_actor(actor)} has no right '{right}' "
                f"(roles with rights on this server: {listed})"
            )
        return scope_refusal(actor, right, self.scope(actor.role, right), owner)


def _role_rights(value: object, source: str, key: str) -> dict[str, Scope]:
    if isinstance(value, str):  # `member: none`: one scope for every right
        return dict.fromkeys(RIGHTS, _scope(value, source, key))
    if value is None:
        return dict.fromkeys(RIGHTS, Scope.NONE)
    if not isinstance(value, dict):
        raise ConfigError(
            source, key, f"expected a mapping of right: scope, or one scope, got {_kind(value)}"
        )
    rights = dict.fromkeys(RIGHTS, Scope.NONE)  # a right not listed is not granted
    for right, scope in value.items():
        if right not in RIGHTS:
            raise ConfigError(
                source,
                f"{key}.{right}",
                f"unknown right; rights are {', '.join(RIGHTS)}" + did_you_mean(str(right), RIGHTS),
            )
        rights[right] = _scope(scope, source, f"{key}.{right}")
    return rights


def _scope(value: object, source: str, key: str) -> Scope:
    if isinstance(value, str) and value in _SCOPES:
        return Scope(value)
    raise ConfigError(source, key, f"expected a scope ({', '.join(_SCOPES)}), got {_kind(value)}")


_SCOPES: Final = tuple(scope.value for scope in Scope)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return f"{text[:57]}..." if len(text) > 60 else text


class RightsFile(PolicyFile[Rights]):
    """The server kit's `authorization.yaml`, as it is now (see `PolicyFile`)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, Rights.parse, Rights(), "rights")

    def rights(self) -> Rights:
        """The rights in force."""
        return self.current()

    def refusal(self, actor: Identity, right: str, owner: Identity | None = None) -> str:
        """`Rights.refusal` by the rights in force now."""
        return self.current().refusal(actor, right, owner)


def authorization_yaml_text(rights: Mapping[str, Mapping[str, Scope]] = DEFAULT_RIGHTS) -> str:
    """The text of a server kit's `authorization.yaml`: `rights` (the defaults), explained."""
    lines = [
        "# Who may do what on this server: admin role -> right -> scope.",
        "# The role is the OU of the admin's certificate. Scopes:",
        "#   any   every job",
        "#   org   jobs submitted by an admin of the same org",
        "#   own   jobs the admin submitted",
        "#   none  no right at all",
        "# Actions not about one job (submit_job, list_sites, shutdown) need any scope but none.",
        "# A role not listed has no rights; `member: none` gives one scope to every right.",
        "#",
        "# Edit freely: the server reads this file again at the next admin action. A broken",
        "# edit is logged as a WARNING naming the key, and the rights in force stay as they were.",
        "# Each site decides for itself too (its site_policy.yaml).",
        "#",
        "# Rights:",
        *(f"#   {right:<13} {_RIGHT_HELP[right]}" for right in RIGHTS),
        "roles:",
    ]
    for role, scopes in rights.items():
        lines.append(f"  {role}:")
        lines.extend(f"    {right}: {scopes.get(right, Scope.NONE)}" for right in RIGHTS)
    return "\n".join(lines) + "\n"

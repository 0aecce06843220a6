"""`provision()`: the CA and the startup kits of a project, made, extended or revoked.

    provision("PROJECT.yml", "out")                    # the CA and every missing kit
    provision("PROJECT.yml", "out", add="site-3")      # one more kit, from the same CA
    provision("PROJECT.yml", "out", revoke="site-2")   # a new CRL, copied into every kit
    provision("PROJECT.yml", "out", new_ca=True)       # start over: new CA, every kit new

Re-running never replaces the CA or a kit that exists, so kits already handed
out keep working; only `new_ca` does, and it says so.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fl_core.config._checks import load_yaml
from fl_core.pki.kit import CRL_FILE, KIT_FILE
from fl_core.provision.ca import (
    CA_KEY_FILE,
    CertificateAuthority,
    Issued,
    ProvisionError,
)
from fl_core.provision.files import make_folder, write_file
from fl_core.provision.kits import write_kit
from fl_core.provision.project import Participant, Project, load_project, project_yaml

__all__ = ["CA_DIR", "PROJECT_COPY", "KitWritten", "ProvisionResult", "provision"]

CA_DIR: Final = "ca"
PROJECT_COPY: Final = "project.yml"


@dataclass(frozen=True, slots=True)
class KitWritten:
    """A kit `provision` wrote."""

    name: str
    role: str
    org: str
    folder: Path
    serial: int


@dataclass(slots=True)
class ProvisionResult:
    """What `provision` did."""

    project: str
    root: Path
    """`OUT/<project>/`."""
    ca_dir: Path
    ca_created: bool = False
    kits: list[KitWritten] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Participants whose kit existed and was left alone."""
    removed: list[Path] = field(default_factory=list)
    """Kits and CA that `new_ca` deleted."""
    revoked: list[Issued] = field(default_factory=list)
    crl_copies: list[Path] = field(default_factory=list)
    """Kits a new `crl.pem` was copied into."""
    warnings: list[str] = field(default_factory=list)


def _kit_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / KIT_FILE).is_file())


def provision(
    project_file: str | Path,
    out: str | Path,
    *,
    add: str | None = None,
    revoke: str | None = None,
    new_ca: bool = False,
    passphrase: bytes | None = None,
) -> ProvisionResult:
    """Make or extend the CA and kits of the project in `project_file` under `out`.

    `add` issues the kit of one participant already listed in the file;
    `revoke` revokes every certificate issued to a name; `new_ca` replaces
    the CA and every kit. `passphrase` encrypts the keys of the kits written.
    Raises `ConfigError` for a bad project file and `ProvisionError` when the
    request does not fit what is already provisioned.
    """
    if sum((add is not None, revoke is not None, new_ca)) > 1:
        raise ProvisionError("--add, --revoke and --new-ca go one at a time")
    project = load_project(project_file)
    root = Path(out).resolve() / project.name
    result = ProvisionResult(project.name, root, root / CA_DIR)
    if new_ca:
        result.removed = [
            *(_kit_folders(root)),
            *([result.ca_dir] if result.ca_dir.exists() else []),
        ]
        for folder in result.removed:
            shutil.rmtree(folder)
    if not root.exists():
        make_folder(root, 0o755)  # not left to the umask: others must not swap kits in it
    ca = _open_ca(project, result, add=add, revoke=revoke)
    if revoke is not None:
        _revoke(ca, revoke, result)
        return result
    targets = _targets(project, ca, root, add, result)
    ca_pem, crl_pem = ca.certificate_pem, ca.crl_file.read_bytes()
    for participant in targets:
        host = project.host if participant.role == "server" else None
        issued = ca.issue(participant, project.valid_days, host=host)
        ca.save()  # before the kit: a kit must never hold a certificate the CA forgot
        folder = write_kit(root, project, issued, ca_pem, crl_pem, passphrase=passphrase)
        result.kits.append(
            KitWritten(
                participant.name, participant.role, participant.org, folder, issued.record.serial
            )
        )
    provisioned = [p for p in project.participants if (root / p.name / KIT_FILE).is_file()]
    write_file(root / PROJECT_COPY, project_yaml(project, provisioned), 0o644)
    return result


def _open_ca(
    project: Project, result: ProvisionResult, *, add: str | None, revoke: str | None
) -> CertificateAuthority:
    if (result.ca_dir / CA_KEY_FILE).exists():
        ca = CertificateAuthority.load(result.ca_dir)
        _check_unchanged(project, result.root)
        return ca
    if add is not None or revoke is not None:
        flag = "--add" if add is not None else "--revoke"
        raise ProvisionError(
            f"no CA in {result.ca_dir}: provision the project first (without {flag})"
        )
    kits = _kit_folders(result.root)
    if kits:
        raise ProvisionError(
            f"{result.root} holds kits ({', '.join(k.name for k in kits)}) but no CA to extend; "
            "restore ca/ from a backup, or start over with --new-ca (every kit is replaced)"
        )
    result.ca_created = True
    return CertificateAuthority.create(result.ca_dir, project.name)


def _check_unchanged(project: Project, root: Path) -> None:
    """Refuse a PROJECT.yml whose server or transport differ from the kits handed out."""
    copy = root / PROJECT_COPY
    try:
        earlier = load_yaml(copy.read_bytes())
    except (OSError, ValueError):
        return  # nothing to compare with; the kits themselves are the record
    if not isinstance(earlier, dict):
        return
    server = project.server
    now = {"name": server.name, "host": project.host, "port": project.port, "org": server.org}
    changed = [
        f"{key}: {earlier.get(key)!r} -> {value!r}"
        for key, value in (("transport", project.transport), ("server", now))
        if earlier.get(key) != value
    ]
    if changed:
        raise ProvisionError(
            f"{project.source} changes what the kits in {root} were made with "
            f"({'; '.join(changed)}); those kits would not reach the server. Undo the change, "
            "or replace every kit with --new-ca"
        )


def _active(ca: CertificateAuthority, name: str) -> bool:
    return any(r.name == name and not r.revoked for r in ca.issued)


def _targets(
    project: Project, ca: CertificateAuthority, root: Path, add: str | None, result: ProvisionResult
) -> list[Participant]:
    if add is not None:
        participant = project.participant(add)
        if participant is None:
            raise ProvisionError(
                f"{add!r} is not in {project.source}; add its entry (under sites: or admins:) "
                "first, then run --add again"
            )
        if (root / add / KIT_FILE).is_file() and _active(ca, add):
            raise ProvisionError(
                f"{add!r} already has a kit ({root / add}) with a valid certificate; to issue "
                f"a new one, revoke it first (--revoke {add}), then --add {add}"
            )
        return [participant]
    targets = []
    for participant in project.participants:
        if not (root / participant.name / KIT_FILE).is_file():
            targets.append(participant)
            continue
        result.kept.append(participant.name)
        last = [r for r in ca.issued if r.name == participant.name][-1:]
        if last and (last[0].org, last[0].role) != (participant.org, participant.role):
            result.warnings.append(
                f"{participant.name}: PROJECT.yml says org {participant.org!r}, role "
                f"{participant.role!r}, but its kit certifies org {last[0].org!r}, role "
                f"{last[0].role!r}; to change them, --revoke {participant.name} then "
                f"--add {participant.name}"
            )
    return targets


def _revoke(ca: CertificateAuthority, name: str, result: ProvisionResult) -> None:
    if not any(r.name == name for r in ca.issued):
        issued = ", ".join(sorted({r.name for r in ca.issued})) or "none"
        raise ProvisionError(f"{name!r} holds no certificate of this CA (issued to: {issued})")
    result.revoked = ca.revoke(name)
    if not result.revoked:
        result.warnings.append(f"{name} was already revoked; the CRL is written and copied again")
    crl = ca.write_crl()
    for folder in _kit_folders(result.root):
        write_file(folder / CRL_FILE, crl, 0o644)
        result.crl_copies.append(folder)

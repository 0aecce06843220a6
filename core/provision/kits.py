"""Writing one participant's startup kit (layout: `fl_core.pki.kit`).

A kit is everything one participant needs and nothing more: its own
certificate and key, the root certificate to check its peers with, the
revocation list, its config, its policy file and a README. The CA's key never
goes into a kit.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

import yaml

from fl_core.config.federation import FEDERATION_FILE
from fl_core.pki.kit import (
    AUTHORIZATION_FILE,
    CA_FILE,
    CERT_FILE,
    CREDENTIALS_DIR,
    CRL_FILE,
    DEFAULT_RIGHTS,
    KEY_FILE,
    KIT_FILE,
    README_FILE,
    SITE_POLICY_FILE,
)
from fl_core.provision.ca import IssuedCertificate, ProvisionError
from fl_core.provision.files import make_folder, write_file
from fl_core.provision.project import Participant, Project

__all__ = ["DEFAULT_RIGHTS", "authorization_text", "site_policy_text", "write_kit"]

PRIVATE: Final = 0o600
PUBLIC: Final = 0o644


def authorization_text() -> str:
    """The server kit's `authorization.yaml`: the default rights, spelled out to edit."""
    lines = [
        "# Which admin may do what on this server: role -> right -> scope.",
        "# An admin's role is the OU of its certificate (project_admin, org_admin, lead, member).",
        "# Scopes: any (every job), org (jobs submitted by an admin of the same org),",
        "#         own (jobs the admin submitted), none.",
        "# Rights: submit_job, abort_job, view_job (list, status, logs), download_job,",
        "#         list_sites, shutdown.",
        "# A role not listed here has no rights. You may edit this file while the server runs;",
        "# a broken edit is reported and the server keeps the rights it had.",
        "roles:",
    ]
    for role, rights in DEFAULT_RIGHTS.items():
        lines.append(f"  {role}:")
        lines.extend(f"    {right}: {scope}" for right, scope in rights.items())
    return "\n".join(lines) + "\n"


def site_policy_text(site: str) -> str:
    """A site kit's `site_policy.yaml`: who may do what on this site, commented."""
    run = "[{role: project_admin}, {role: lead}]"
    manage = "[{role: project_admin}, {role: org_admin, jobs: org}, {role: lead, jobs: own}]"
    return f"""\
# What admins may do on {site}. The site checks every action itself, against the
# identity in the requesting admin's signed request: the server cannot act for an admin.
# Each action takes any, none, or a list of rules; a rule allows the admins it matches.
# A rule matches when every key it gives does:
#   name: alice@example.org     that admin (the email in its certificate)
#   org: hospital-a             admins of that org
#   role: lead                  admins with that role (project_admin, org_admin, lead, member)
#   jobs: own | org | any       only jobs the admin submitted, or its org did (default any)
# The defaults let the admins do here what the server's default rights let them do.
run_job: {run}        # run a job on this site
byoc: {run}           # run a job that brings its own code (any .py file in the job)
read_results: {manage}   # read this site's logs and results
abort_job: {manage}      # abort this site's part of a job
launchers: [process]  # what may start this site's job processes (process, docker)
images: any           # container images jobs may use here (names; * and ? match)
"""


def _kit_yaml(project: Project, participant: Participant) -> str:
    data: dict[str, Any] = {
        "project": project.name,
        "name": participant.name,
        "org": participant.org,
        "role": participant.role,
        "server": {"name": project.server.name, "host": project.host, "port": project.port},
        "transport": project.transport,
    }
    return yaml.safe_dump(data, sort_keys=False)


def _federation_yaml(project: Project) -> str:
    scheme = project.transport
    data: dict[str, Any] = {
        "name": project.name,
        "mode": "production",
        "transport": scheme,
        "security": {"name": "pki"},
        "launcher": "process",
        "server": {
            "listen": f"{scheme}://0.0.0.0:{project.port}",
            "url": f"{scheme}://{project.host}:{project.port}",
        },
        "sites": [],
    }
    return yaml.safe_dump(data, sort_keys=False)


def readme_text(project: Project, participant: Participant, encrypted: bool) -> str:
    """The kit's README: what it is and how to start it."""
    kit = participant.name
    role = participant.role
    server = f"{project.host}:{project.port}"
    what = {
        "server": f"the server of the federation {project.name!r}",
        "site": f"the site {kit!r} ({participant.org}) of the federation {project.name!r}",
    }.get(role, f"the admin {kit} ({role}, {participant.org}) of the federation {project.name!r}")
    lines = [
        f"# Startup kit: {kit}",
        "",
        f"This folder is {what}.",
        "Keep it private: `credentials/` holds the private key that proves who you are.",
        "It must stay mode 0700 (its files 0600), owned by the user who runs fl-core;",
        "fl-core refuses a key that others could read.",
        "",
    ]
    if role in ("server", "site"):
        lines += [
            "Start, watch and stop it (from the folder holding the kit):",
            "",
            f"    fl-core start {kit}",
            f"    fl-core status {kit}",
            f"    fl-core stop {kit}",
            "",
        ]
    if role == "server":
        lines += [
            f"Sites and admins connect to {server} over {project.transport} with mutual TLS:",
            f"open TCP port {project.port} on this machine's firewall, and only that one.",
            f"Who may do what is in `{AUTHORIZATION_FILE}`; you may edit it while the server runs.",
        ]
    elif role == "site":
        lines += [
            f"The site connects out to the server at {server} ({project.transport}, mutual TLS);",
            "it needs no open port. What admins may do on this site is in",
            f"`{SITE_POLICY_FILE}`; edit it to restrict them.",
        ]
    else:
        lines += [
            f"Run every job command with this kit, from any machine that reaches {server}:",
            "",
            f"    fl-core job submit JOB --kit {kit}",
            f"    fl-core job list --kit {kit}",
            "",
            "Jobs you submit are signed with your key; sites refuse a job nobody signed.",
        ]
    if encrypted:
        lines += [
            "",
            "The private key is encrypted. Put its passphrase in an environment variable and",
            "name it (`--passphrase-env VAR`, or the security option `passphrase_env`).",
        ]
    lines += [
        "",
        f"`{CRL_FILE}` lists revoked certificates. When the provisioner revokes one, copy",
        f"the new `{CRL_FILE}` into this folder; a running server or site reads it again",
        "without a restart.",
    ]
    return "\n".join(lines) + "\n"


def write_kit(
    root: Path,
    project: Project,
    issued: IssuedCertificate,
    ca_pem: bytes,
    crl_pem: bytes,
    *,
    passphrase: bytes | None = None,
) -> Path:
    """Write `root/<name>/` for the participant `issued` certifies; returns the folder.

    An existing folder of that name is replaced.
    """
    participant = next(p for p in project.participants if p.name == issued.record.name)
    folder = root / participant.name
    if folder.exists():
        if not (folder / KIT_FILE).is_file():
            # Only ever replace what provisioning wrote: this could be anything of the user's.
            raise ProvisionError(
                f"{folder} exists and is not a startup kit; move it away, then provision again"
            )
        shutil.rmtree(folder)
    make_folder(folder)
    private = folder / CREDENTIALS_DIR
    make_folder(private)
    write_file(private / CERT_FILE, issued.certificate_pem(), PRIVATE)
    write_file(private / KEY_FILE, issued.key_pem(passphrase), PRIVATE)
    write_file(private / CA_FILE, ca_pem, PRIVATE)
    write_file(folder / CRL_FILE, crl_pem, PUBLIC)
    write_file(folder / KIT_FILE, _kit_yaml(project, participant), PUBLIC)
    write_file(folder / FEDERATION_FILE, _federation_yaml(project), PUBLIC)
    if participant.role == "server":
        write_file(folder / AUTHORIZATION_FILE, authorization_text(), PUBLIC)
    elif participant.role == "site":
        write_file(folder / SITE_POLICY_FILE, site_policy_text(participant.name), PUBLIC)
    write_file(folder / README_FILE, readme_text(project, participant, bool(passphrase)), PUBLIC)
    return folder

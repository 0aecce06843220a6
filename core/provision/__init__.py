"""Provisioning a production federation: its CA and one startup kit per participant.

`fl-core provision PROJECT.yml --out DIR` calls `provision`; `project` reads
PROJECT.yml, `ca` is the certificate authority, `kits` writes a kit (whose
layout `fl_core.pki.kit` describes and reads).
"""

from __future__ import annotations

from fl_core.provision.ca import ProvisionError
from fl_core.provision.project import Participant, Project, load_project
from fl_core.provision.provisioner import KitWritten, ProvisionResult, provision

__all__ = [
    "KitWritten",
    "Participant",
    "Project",
    "ProvisionError",
    "ProvisionResult",
    "load_project",
    "provision",
]

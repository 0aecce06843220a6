"""Who a certificate names, and which cells that name may be.

A production certificate says its holder's name (CN), org (O) and role (OU):
`server`, `site`, or an admin role. The cells a certificate may claim when it
joins the federation:

- a site certificate: the site's cell and the cells under it (`site-1`,
  `site-1.job7`, `site-1.job7.trainer`);
- the server certificate: `server` and the cells under it (whatever the
  server's host name, its cell is `server`);
- an admin certificate: cells named after its email, `admin_cell_prefix(email)`
  or that prefix followed by `-...` (an email is not a valid cell name, and
  one admin must not be able to pose as another).
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from fl_core.config.kit import ADMIN_ROLES, ROLES
from fl_core.spec.security import Identity, admin_cell_prefix

__all__ = [
    "ADMIN_ROLES",
    "ROLES",
    "SERVER_CELL",
    "admin_cell_prefix",
    "grant_refusal",
    "identity_of",
]

SERVER_CELL: Final = "server"


def _under(cell: str, root: str, separator: str) -> bool:
    return cell == root or cell.startswith(root + separator)


def grant_refusal(identity: Identity, cell: str) -> str:
    """Why `identity`'s certificate may not be the cell `cell`, or "" when it may."""
    role, name = identity.role, identity.name
    if role == "site":
        if _under(cell, name, "."):
            return ""
        return f"a site certificate grants only {name} and cells under it"
    if role == "server":
        if _under(cell, SERVER_CELL, "."):
            return ""
        return f"a server certificate grants only {SERVER_CELL!r} and cells under it"
    if role in ADMIN_ROLES:
        prefix = admin_cell_prefix(name)
        if _under(cell, prefix, "-"):
            return ""
        return f"an admin certificate grants only cells named {prefix}[-...] (from its email)"
    return f"the role {role!r} grants no cell (roles: {', '.join(ROLES)})"


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def identity_of(certificate: x509.Certificate) -> Identity:
    """The identity a certificate states: CN, O, OU and serial number."""
    subject = certificate.subject
    return Identity(
        name=_attribute(subject, NameOID.COMMON_NAME),
        org=_attribute(subject, NameOID.ORGANIZATION_NAME),
        role=_attribute(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        serial=certificate.serial_number,
    )

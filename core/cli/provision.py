"""`fl-core provision`: a production project's CA and startup kits (wired in by `fl_core.cli`).

fl-core provision PROJECT.yml --out DIR [--add NAME | --revoke NAME | --new-ca]
                  [--passphrase-env VAR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Final, TextIO

from fl_core.cli.usage import UsageError

__all__ = ["add_provision_parser", "provision_command"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


def add_provision_parser(sub: Any) -> None:
    """Add `fl-core provision ...` to the top-level subparsers."""
    parser = sub.add_parser(
        "provision",
        help="make a production project's CA and one startup kit per participant",
        description="Make (or extend) the CA of the project in PROJECT.yml and a startup kit "
        "for each participant, under OUT/<project>/. Kits that exist are left alone.",
    )
    parser.add_argument("project", type=Path, help="the PROJECT.yml")
    parser.add_argument("--out", type=Path, required=True, help="where OUT/<project>/ goes")
    once = parser.add_mutually_exclusive_group()
    once.add_argument(
        "--add", metavar="NAME", help="issue the kit of NAME (already added to PROJECT.yml) only"
    )
    once.add_argument(
        "--revoke",
        metavar="NAME",
        help="revoke NAME's certificate: a new crl.pem in ca/ and every kit",
    )
    once.add_argument(
        "--new-ca",
        action="store_true",
        help="start over: a new CA and new kits for everyone (every kit handed out stops working)",
    )
    parser.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the kits' private keys with the passphrase in the environment variable VAR",
    )


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        # Never on the command line: argv is visible to every user of the machine.
        raise UsageError(
            f"--passphrase-env {variable}: the environment variable {variable} is not set "
            "or empty; put the passphrase in it"
        )
    return value.encode()


def provision_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run `fl-core provision`; prints one line per kit, then where the CA is."""
    from fl_core.config._checks import ConfigErrors
    from fl_core.provision import provision

    passphrase = _passphrase(args.passphrase_env)
    if passphrase is not None and args.revoke is not None:
        raise UsageError("--passphrase-env encrypts new kits; --revoke writes none")
    try:
        result = provision(
            args.project,
            args.out,
            add=args.add,
            revoke=args.revoke,
            new_ca=args.new_ca,
            passphrase=passphrase,
        )
    except ConfigErrors as exc:
        for error in exc.errors:  # every problem of PROJECT.yml, each naming its key
            print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if result.removed:
        out.write(
            f"--new-ca: removed the old CA and {len(result.removed) - 1} kit(s); every kit "
            "handed out before no longer works and must be replaced by the new ones\n"
            if any(p.name == "ca" for p in result.removed)
            else f"--new-ca: removed {len(result.removed)} kit(s)\n"
        )
    if result.ca_created:
        out.write(f"new CA for project {result.project}\n")
    for kit in result.kits:
        locked = ", key encrypted" if passphrase else ""
        out.write(f"kit {kit.folder}  ({kit.role}, org {kit.org}{locked})\n")
    if result.kept:
        out.write(f"kept {len(result.kept)} existing kit(s): {', '.join(result.kept)}\n")
    for record in result.revoked:
        out.write(f"revoked {record.name} ({record.role}, serial {record.serial:x})\n")
    if result.crl_copies:
        out.write(
            f"wrote {result.ca_dir / 'crl.pem'} and copied it into {len(result.crl_copies)} "
            "kit(s); copy it to each kit on its own machine too (running participants read it "
            "again without a restart)\n"
        )
    for warning in result.warnings:
        out.write(f"warning: {warning}\n")
    out.write(
        f"CA: {result.ca_dir}  (it signs every certificate: keep it on this machine, back it "
        "up, and never ship ca/ with a kit)\n"
    )
    return EXIT_OK

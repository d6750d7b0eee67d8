"""``bloomlink certs init``: a local CA and a certificate for every role of a deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

from linkage_unit.pki import init_certificates

NAME = "certs"
HELP = "create a local CA and mutual-TLS certificates for the LU, operator, parties, auditor"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="certs_action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create a CA and one certificate per role")
    init.add_argument("--dir", type=Path, required=True, help="new directory for the files")
    init.add_argument("--parties", required=True, help="comma-separated party names, e.g. moj,dfe")
    init.add_argument("--auditor", action="store_true", help="also issue an auditor certificate")
    init.add_argument("--host", action="append", default=None, help="LU DNS name (repeatable)")
    init.add_argument("--address", action="append", default=None, help="LU IP address (repeatable)")
    init.add_argument("--days", type=int, default=365, help="certificate validity in days")


def run(args: argparse.Namespace) -> int:
    parties = tuple(name.strip() for name in args.parties.split(",") if name.strip())
    created = init_certificates(
        args.dir,
        parties=parties,
        auditor=args.auditor,
        hosts=tuple(args.host or ("localhost",)),
        addresses=tuple(args.address or ("127.0.0.1",)),
        days=args.days,
    )
    roles = ["linkage-unit", "operator", *(f"party-{p}" for p in parties)]
    roles += ["auditor"] if created.auditor else []
    print(f"certificates written to {created.directory}: CA + {', '.join(roles)} (keys 0600)")
    return 0

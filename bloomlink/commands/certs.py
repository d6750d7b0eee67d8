"""``bloomlink certs init``: a local CA and a certificate for every role of a deployment.

It ends by printing the next commands with the file names it wrote: start the linkage unit
with its pair, check it is up, hand each party its own pair, create the project.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomlink.commands._output import add_json_flag, emit
from linkage_unit.pki import CertificateSet, TlsPair, init_certificates

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
    add_json_flag(init)


def next_steps(created: CertificateSet, host: str) -> list[str]:
    """The commands to run next, with the files just written."""
    ca = created.ca_certificate
    lu = created.linkage_unit
    operator = (
        f"--ca {ca} --cert {created.operator.certificate} --key {created.operator.private_key}"
    )
    target = f"--target {host}:50051"
    members = ",".join(created.parties)
    lines = [
        "next:",
        "  1. linkage unit: put these in its lu.toml (bloomlink serve --example-config prints a "
        "documented one), then run bloomlink serve --config lu.toml",
        f'       ca_certificate = "{ca}"',
        f'       certificate = "{lu.certificate}"',
        f'       private_key = "{lu.private_key}"',
        f"  2. check it is up: bloomlink health {target} {operator}",
        "  3. give each party its own pair and the CA certificate (never another party's key):",
    ]
    lines += [
        f"       {party}: {pair.certificate} {pair.private_key} + {ca}"
        for party, pair in created.parties.items()
    ]
    if created.auditor is not None:
        lines.append(
            f"     and the auditor: {created.auditor.certificate} {created.auditor.private_key} "
            f"+ {ca}"
        )
    lines += [
        "  4. operator: bloomlink schema check   (prints the schema fingerprint), then",
        f"     bloomlink project create PROJECT --parties {members} --schema-fingerprint HEX "
        f"{target} {operator}",
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    parties = tuple(name.strip() for name in args.parties.split(",") if name.strip())
    hosts = tuple(args.host or ("localhost",))
    created = init_certificates(
        args.dir,
        parties=parties,
        auditor=args.auditor,
        hosts=hosts,
        addresses=tuple(args.address or ("127.0.0.1",)),
        days=args.days,
    )
    roles = ["linkage-unit", "operator", *(f"party-{p}" for p in parties)]
    roles += ["auditor"] if created.auditor else []

    def pair(files: TlsPair) -> dict[str, str]:
        return {"certificate": str(files.certificate), "private_key": str(files.private_key)}

    record = {
        "directory": str(created.directory),
        "ca_certificate": str(created.ca_certificate),
        "linkage_unit": pair(created.linkage_unit),
        "operator": pair(created.operator),
        "parties": {party: pair(files) for party, files in created.parties.items()},
        "auditor": pair(created.auditor) if created.auditor else None,
    }
    emit(
        args,
        record,
        [
            f"certificates written to {created.directory}: CA + {', '.join(roles)} (keys 0600)",
            *next_steps(created, hosts[0]),
        ],
    )
    return 0

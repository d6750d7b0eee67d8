"""`bloomlink keygen`: create a new 256-bit linkage secret, or a party's manifest signing key."""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomlink.commands._output import add_json_flag, emit
from party.manifest import create_party_signing_key, party_public_key_pem
from protocol.atomic_file import atomic_output
from protocol.secret import write_secret
from protocol.signing import public_key_fingerprint

NAME = "keygen"
HELP = (
    "create a new linkage secret file (256 bits, mode 0600; share it only with the parties), "
    "or with --signing a party's own manifest signing key"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=Path, help="path of the new key file (must not exist)"
    )
    parser.add_argument(
        "--signing",
        action="store_true",
        help="create this party's Ed25519 manifest signing key (never shared) and its public "
        "key OUT.pub (the LU operator registers it under [party_keys] in the LU config; "
        "auditors get it too), instead of a linkage secret",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    if args.signing:
        key = create_party_signing_key(args.out)
        public = args.out.with_name(args.out.name + ".pub")
        with atomic_output(public, mode=0o644) as handle:
            handle.write(party_public_key_pem(key))
        emit(
            args,
            {
                "kind": "signing-key",
                "private_key": str(args.out),
                "public_key": str(public),
                "public_key_fingerprint": public_key_fingerprint(key.public_key()),
            },
            [
                f"wrote this party's manifest signing key to {args.out} (mode 0600; keep it in "
                f"the department) and its public key to {public}: give that to the LU "
                "operator, who adds it to the LU config's [party_keys] (e.g. "
                f'moj = "{public.name}", or serve --party-key PARTY=FILE), and to the auditor '
                "(audit verify --party-key); bloomlink encode signs every manifest with it"
            ],
        )
        return 0
    path = write_secret(args.out)
    emit(
        args,
        {"kind": "linkage-secret", "path": str(path), "bits": 256},
        [
            f"wrote a new 256-bit linkage secret to {path} (mode 0600); give it to the other "
            "parties over a secure channel, never to the linkage unit"
        ],
    )
    return 0

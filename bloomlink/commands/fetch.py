"""``bloomlink fetch``: download your link keys and join them to your own record ids."""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomlink.commands._connection import add_client_arguments, client_from_args
from party.link_key_file import join_link_keys

NAME = "fetch"
HELP = "download your party's link keys and write own_record_id,link_key CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project_id")
    parser.add_argument("--party", required=True, help="your party name (must match your cert)")
    parser.add_argument("--positions", type=Path, required=True, help="your private positions CSV")
    parser.add_argument("--output", type=Path, required=True, help="CSV to write (atomically)")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        fetched = client.fetch_link_keys(args.project_id, args.party)
    count = join_link_keys(args.positions, fetched.positions, fetched.link_keys, args.output)
    print(f"wrote {count} link keys to {args.output}; keys sha256 {fetched.keys_sha256}")
    return 0

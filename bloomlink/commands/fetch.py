"""``bloomlink fetch``: download your link keys and join them to your own record ids.

The positions file names the project and payload digest of the encoded file it was written
with; before any key is joined, ``fetch`` asks the linkage unit whether that is the payload
this party submitted, and refuses a positions file that belongs to another encode (joining
it would give every record someone else's key, silently).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bloomlink.commands._connection import add_client_arguments, client_from_args
from bloomlink.commands._output import add_json_flag, emit, progress_bar
from party.client import LinkageClient
from party.link_key_file import join_link_keys
from party.positions_file import read_binding
from protocol.errors import ConfigurationError
from protocol.messages import UploadState

NAME = "fetch"
HELP = "download your party's link keys and write own_record_id,link_key CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project_id")
    parser.add_argument("--party", required=True, help="your party name (must match your cert)")
    parser.add_argument("--positions", type=Path, required=True, help="your private positions CSV")
    parser.add_argument("--output", type=Path, required=True, help="CSV to write (atomically)")
    add_client_arguments(parser)
    add_json_flag(parser)


def check_positions_file(
    client: LinkageClient, positions: Path, project_id: str, party: str
) -> bool:
    """Refuse a positions file bound to another project or payload; False if it carries no
    binding (a version 1 file) and so could not be checked."""
    binding = read_binding(positions)
    if binding is None:
        return False
    if binding.project_id != project_id:
        raise ConfigurationError(
            f"{positions} belongs to project {binding.project_id}, not {project_id}: give the "
            "positions file written when you encoded for this project"
        )
    state = client.submission_state(project_id, party, bytes.fromhex(binding.payload_sha256))
    if state not in (UploadState.COMPLETE, UploadState.DELETED):
        raise ConfigurationError(
            f"{positions} belongs to the encoded file with payload sha256 "
            f"{binding.payload_sha256[:12]}, which is not the file party {party} submitted to "
            f"project {project_id}: joining it would give records the wrong keys. Use the "
            "positions file written with the submitted file (a re-encode replaces it)"
        )
    return True


def run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.check_party(args.party)
        checked = check_positions_file(client, args.positions, args.project_id, args.party)
        if not checked:
            print(
                f"warning: {args.positions} has no binding line (written by an older "
                "bloomlink): cannot check it belongs to the submitted file",
                file=sys.stderr,
            )
        bar: Any = progress_bar("fetch", total=None, unit="keys")
        try:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            fetched = client.fetch_link_keys(args.project_id, args.party, progress=progress)
        finally:
            bar.close()
    count = join_link_keys(args.positions, fetched.positions, fetched.link_keys, args.output)
    emit(
        args,
        {
            "project_id": args.project_id,
            "party": args.party,
            "link_keys": count,
            "keys_sha256": fetched.keys_sha256,
            "output": str(args.output),
            "positions_checked": checked,
        },
        [f"wrote {count} link keys to {args.output}; keys sha256 {fetched.keys_sha256}"],
    )
    return 0

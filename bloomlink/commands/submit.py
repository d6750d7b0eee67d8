"""``bloomlink submit``: send a party's encoded file to the linkage unit (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomlink.commands._connection import add_client_arguments, client_from_args
from protocol.clk_file import read_header
from protocol.messages import UploadState

NAME = "submit"
HELP = "upload an encoded (CLK) file to the linkage unit; resumes an interrupted upload"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("encoded_file", type=Path, help="the .clk file the encoder wrote")
    parser.add_argument("--party", required=True, help="your party name (must match your cert)")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    header = read_header(args.encoded_file)

    def progress(done: int, total: int) -> None:
        print(f"uploaded {done}/{total} bytes", flush=True)

    with client_from_args(args) as client:
        result = client.upload_file(args.encoded_file, party_id=args.party, progress=progress)
    if result.state is not UploadState.COMPLETE:
        print(
            f"upload incomplete at {result.committed_bytes}/{result.payload_bytes} bytes; "
            "rerun to resume"
        )
        return 1
    print(
        f"submitted {header.record_count} CLKs ({header.clk_bits} bits) to project "
        f"{header.project_id} as {args.party}; payload sha256 {header.payload_sha256.hex()}"
    )
    return 0

"""``bloomlink submit``: send a party's encoded file to the linkage unit (resumable).

The file goes only with a signed manifest that records a clean leak scan of exactly its
payload (``bloomlink encode`` writes one beside it). Without one, give ``--extract`` (with
the mapping and your signing key) to scan the file now; a finding stops the upload.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import bloomlink
from bloomlink.commands._connection import add_client_arguments, client_from_args
from party.manifest import (
    SIGNING_KEY_ENV_VAR,
    check_manifest_for_file,
    load_party_signing_key,
    manifest_path_for,
    vouch_for_encoded_file,
)
from party.mapping import load_mapping, shipped_mapping
from party.sensitive_strings import sensitive_strings
from protocol.clk_file import read_header
from protocol.errors import ConfigurationError
from protocol.messages import UploadState
from protocol.schema import default_schema, load_schema

NAME = "submit"
HELP = "leak-check and upload an encoded (CLK) file with its signed manifest; resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("encoded_file", type=Path, help="the .clk file the encoder wrote")
    parser.add_argument("--party", required=True, help="your party name (must match your cert)")
    parser.add_argument(
        "--manifest", type=Path, help="its signed manifest (default: FILE.manifest.json)"
    )
    parser.add_argument(
        "--extract",
        type=Path,
        help="scan the file now against this extract (with --mapping or --layout) and sign a "
        "fresh manifest, instead of trusting the one beside it",
    )
    mapping = parser.add_mutually_exclusive_group()
    mapping.add_argument("--mapping", type=Path, help="the department's mapping file (TOML)")
    mapping.add_argument("--layout", help="a shipped mapping for a synth layout")
    parser.add_argument("--schema", type=Path, help="linkage schema (default: the shipped one)")
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get(SIGNING_KEY_ENV_VAR),
        help=f"your manifest signing key, for --extract (or set {SIGNING_KEY_ENV_VAR})",
    )
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    header = read_header(args.encoded_file)
    manifest_path = args.manifest or manifest_path_for(args.encoded_file)
    if args.extract:
        if not (args.mapping or args.layout) or args.signing_key is None:
            raise ConfigurationError("--extract needs --mapping (or --layout) and --signing-key")
        schema = load_schema(args.schema) if args.schema else default_schema()
        mapping = load_mapping(args.mapping) if args.mapping else shipped_mapping(args.layout)
        strings = sensitive_strings(args.extract, mapping, schema)
        _, report = vouch_for_encoded_file(
            args.encoded_file,
            signing_key=load_party_signing_key(args.signing_key),
            party=args.party,
            strings=strings,
            software_version=bloomlink.__version__,
            manifest_path=manifest_path,
        )
        print(f"leak scan clean: {report.strings_checked} sensitive strings; manifest re-signed")
    elif not manifest_path.exists():
        raise ConfigurationError(
            f"{manifest_path} not found: a file goes only with the signed manifest of its leak "
            "scan. Re-run bloomlink encode with your signing key, or give --extract to scan now"
        )
    signed = check_manifest_for_file(args.encoded_file, manifest_path, party=args.party)

    def progress(done: int, total: int) -> None:
        print(f"uploaded {done}/{total} bytes", flush=True)

    with client_from_args(args) as client:
        result = client.upload_file(
            args.encoded_file, party_id=args.party, manifest=signed, progress=progress
        )
    if result.state is not UploadState.COMPLETE:
        print(
            f"upload incomplete at {result.committed_bytes}/{result.payload_bytes} bytes; "
            "rerun to resume"
        )
        return 1
    print(
        f"submitted {header.record_count} CLKs ({header.clk_bits} bits) to project "
        f"{header.project_id} as {args.party} with manifest sha256 {signed.manifest.sha256[:12]}; "
        f"payload sha256 {header.payload_sha256.hex()}"
    )
    return 0

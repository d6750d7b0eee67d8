"""``bloomlink submit``: send a party's encoded file to the linkage unit (resumable).

Before a byte of the payload is sent (and after its manifest is checked), the file is checked against the project the linkage
unit holds: your certificate is the party you name, you are a member, and the file was
encoded under the project's schema (its fingerprint fixes the fields, the CLK length and the
hardening) with the project's layout, if it has one (each group's bits and hardening). A
mismatch is refused here, in plain words, not at the run.

The file goes only with a signed manifest that records a clean leak scan of exactly its
payload, including the check that its CLKs were made with the linkage secret (``bloomlink
encode`` writes one beside it). Without one, give ``--extract`` (with the mapping, your
signing key and the private positions file) to scan the file now; a finding stops it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import bloomlink
from bloomlink.commands._connection import add_client_arguments, client_from_args
from bloomlink.commands._output import add_json_flag, emit, progress_bar
from party.client import LinkageClient
from party.known_keys import known_key_reencoder
from party.manifest import (
    SIGNING_KEY_ENV_VAR,
    check_manifest_for_file,
    load_party_signing_key,
    manifest_path_for,
    vouch_for_encoded_file,
)
from party.mapping import load_mapping, shipped_mapping
from party.prepare import default_positions_path
from party.sensitive_strings import sensitive_strings
from protocol.clk_file import GROUPED_FORMAT_VERSION, ClkFileHeader, read_header
from protocol.errors import CompatibilityError, ConfigurationError, NotFoundError
from protocol.messages import UploadState
from protocol.schema import default_schema, load_schema
from protocol.vocabulary import CheckAspect

NAME = "submit"
HELP = "check against the project, then upload an encoded (CLK) file with its signed manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("encoded_file", type=Path, help="the .clk file the encoder wrote")
    parser.add_argument("--party", required=True, help="your party name (must match your cert)")
    parser.add_argument(
        "--manifest", type=Path, help="its signed manifest (default: FILE.manifest.json)"
    )
    parser.add_argument(
        "--extract",
        type=Path,
        help="scan the file now against this extract (with --mapping or --layout, and the "
        "positions file) and sign a fresh manifest, instead of trusting the one beside it",
    )
    mapping = parser.add_mutually_exclusive_group()
    mapping.add_argument("--mapping", type=Path, help="the department's mapping file (TOML)")
    mapping.add_argument("--layout", help="a shipped mapping for a synth layout")
    parser.add_argument("--schema", type=Path, help="linkage schema (default: the shipped one)")
    parser.add_argument(
        "--positions",
        type=Path,
        help="with --extract: the private positions file (default: FILE.positions.csv)",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get(SIGNING_KEY_ENV_VAR),
        help=f"your manifest signing key, for --extract (or set {SIGNING_KEY_ENV_VAR})",
    )
    add_client_arguments(parser)
    add_json_flag(parser)


def check_against_project(client: LinkageClient, header: ClkFileHeader, party: str) -> None:
    """Refuse, before uploading, a file the project would refuse at its run."""
    client.check_party(party)
    try:
        settings = client.project_settings(header.project_id)
    except NotFoundError:
        raise NotFoundError(
            f"project {header.project_id} (named in the encoded file) does not exist at the "
            f"linkage unit, or party {party} is not one of its members: check the --project "
            "given to encode and ask the operator for the project's members"
        ) from None
    if header.schema_fingerprint != settings.schema_fingerprint:
        raise CompatibilityError(
            f"the file was encoded under schema {header.schema_fingerprint.hex()[:12]}, but "
            f"project {header.project_id} expects schema "
            f"{settings.schema_fingerprint.hex()[:12]}; nothing was sent",
            party=party,
            aspect=CheckAspect.SCHEMA_FINGERPRINT,
        )
    # The layout (each group's bits and hardening) as the linkage unit will check it at
    # upload: a project created from a fingerprint alone has none and takes format 1 only.
    layout = header.clk_layout if header.format_version == GROUPED_FORMAT_VERSION else None
    expected = settings.layout
    if expected is None and layout is not None:
        raise CompatibilityError(
            f"the file is a grouped encoding (file format 2), but project {header.project_id} "
            "was created without a layout (from a schema fingerprint alone); ask the operator "
            "to create the project with --schema; nothing was sent",
            party=party,
            aspect=CheckAspect.LAYOUT,
        )
    if expected is not None and (layout is None or layout.geometry != expected.geometry):
        raise CompatibilityError(
            f"the file's field groups (names, order or lengths) are not project "
            f"{header.project_id}'s; re-encode with the project's schema; nothing was sent",
            party=party,
            aspect=CheckAspect.LAYOUT,
        )
    if expected is not None and layout != expected:
        raise CompatibilityError(
            f"the file's groups are hardened differently from project {header.project_id}'s "
            "(method or parameters); re-encode with the project's schema; nothing was sent",
            party=party,
            aspect=CheckAspect.HARDENING,
        )


def _rescan(args: argparse.Namespace, manifest_path: Path) -> str:
    if not (args.mapping or args.layout) or args.signing_key is None:
        raise ConfigurationError("--extract needs --mapping (or --layout) and --signing-key")
    positions = args.positions or default_positions_path(args.encoded_file)
    if not positions.exists():
        raise ConfigurationError(
            f"{positions} not found: the scan checks the CLKs were made with the secret by "
            "re-encoding records found through the positions file; give --positions"
        )
    schema = load_schema(args.schema) if args.schema else default_schema()
    mapping = load_mapping(args.mapping) if args.mapping else shipped_mapping(args.layout)
    _, report = vouch_for_encoded_file(
        args.encoded_file,
        signing_key=load_party_signing_key(args.signing_key),
        party=args.party,
        strings=sensitive_strings(args.extract, mapping, schema),
        software_version=bloomlink.__version__,
        manifest_path=manifest_path,
        unkeyed_reencoder=known_key_reencoder(
            encoded_path=args.encoded_file,
            positions_path=positions,
            extract_path=args.extract,
            mapping=mapping,
            schema=schema,
        ),
    )
    return (
        f"leak scan clean: {report.strings_checked} sensitive strings, and the CLKs are unlike "
        "a known-key encoding; manifest re-signed"
    )


def run(args: argparse.Namespace) -> int:
    header = read_header(args.encoded_file)
    manifest_path = args.manifest or manifest_path_for(args.encoded_file)
    lines: list[str] = []
    # The file is vouched for locally first (a leak stops it even with the LU unreachable),
    # then checked against the project before a byte of it is sent.
    if args.extract:
        lines.append(_rescan(args, manifest_path))
    elif not manifest_path.exists():
        raise ConfigurationError(
            f"{manifest_path} not found: a file goes only with the signed manifest of its "
            "leak scan. Re-run bloomlink encode with your signing key, or give --extract to "
            "scan now"
        )
    signed = check_manifest_for_file(args.encoded_file, manifest_path, party=args.party)
    with client_from_args(args) as client:
        check_against_project(client, header, args.party)
        bar: Any = progress_bar("upload", total=header.payload_length, unit="B")
        try:
            result = client.upload_file(
                args.encoded_file,
                party_id=args.party,
                manifest=signed,
                progress=lambda done, total: bar.update(done - bar.n),
            )
        finally:
            bar.close()
    record = {
        "project_id": header.project_id,
        "party": args.party,
        "state": str(result.state),
        "committed_bytes": result.committed_bytes,
        "payload_bytes": result.payload_bytes,
        "record_count": header.record_count,
        "clk_bits": header.clk_bits,
        "payload_sha256": header.payload_sha256.hex(),
        "manifest_sha256": signed.manifest.sha256,
    }
    if result.state is not UploadState.COMPLETE:
        lines.append(
            f"upload incomplete at {result.committed_bytes}/{result.payload_bytes} bytes; "
            "rerun to resume"
        )
        emit(args, record, lines)
        return 1
    lines.append(
        f"submitted {header.record_count} CLKs ({header.clk_bits} bits) to project "
        f"{header.project_id} as {args.party} with manifest sha256 {signed.manifest.sha256[:12]}; "
        f"payload sha256 {header.payload_sha256.hex()}"
    )
    emit(args, record, lines)
    return 0

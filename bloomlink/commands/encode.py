"""`bloomlink encode`: the department-side encoder run (extract -> encoded file + positions).

Every encode ends by leak-scanning its own output for a sample of the extract's raw values,
normalised values and tokens, and, if clean, signing a manifest beside the encoded file
(``<out>.manifest.json``) that records the scan and the payload digest. A signing key is
required (flag or ``BLOOMLINK_SIGNING_KEY``): a department cannot forget the manifest
silently, and ``bloomlink submit`` will not send a file without one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import bloomlink
from party.encoder_run import BAD_ROW_POLICIES, encode_extract
from party.known_keys import known_key_reencoder
from party.manifest import SIGNING_KEY_ENV_VAR, load_party_signing_key, vouch_for_encoded_file
from party.mapping import load_mapping, shipped_mapping
from party.sensitive_strings import DEFAULT_MAX_ROWS, sensitive_strings
from protocol.errors import ConfigurationError
from protocol.labels import check_label
from protocol.schema import default_schema, load_schema
from protocol.secret import SECRET_ENV_VAR, read_secret

NAME = "encode"
HELP = "encode an extract (CSV or Parquet) into CLKs under the linkage secret"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("extract", type=Path, help="the department's extract (.csv or .parquet)")
    parser.add_argument("--project", required=True, help="the linkage project id")
    mapping = parser.add_mutually_exclusive_group(required=True)
    mapping.add_argument("--mapping", type=Path, help="the department's mapping file (TOML)")
    mapping.add_argument("--layout", help="a shipped mapping for a synth layout: moj, dfe or hmpps")
    parser.add_argument(
        "--schema", type=Path, help="linkage schema file (default: the shipped one)"
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        help=f"file holding the linkage secret (or set {SECRET_ENV_VAR}); never the secret itself",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="encoded file to write (sent to the LU)"
    )
    parser.add_argument(
        "--positions",
        type=Path,
        help="private positions file to write (default: OUT with .positions.csv); never send it",
    )
    parser.add_argument(
        "--on-bad-row",
        choices=BAD_ROW_POLICIES,
        default="fail",
        help="fail (default): stop at the first unusable row; skip: leave such rows "
        "out; blank: treat an unusable value as missing",
    )
    parser.add_argument("--workers", type=int, help="processes to use (default: every core)")
    parser.add_argument("--party", required=True, help="your party name (signed into the manifest)")
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get(SIGNING_KEY_ENV_VAR),
        help=f"your manifest signing key (bloomlink keygen --signing; or set {SIGNING_KEY_ENV_VAR})",
    )
    parser.add_argument(
        "--scan-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help=f"rows sampled for the leak scan's sensitive strings (default {DEFAULT_MAX_ROWS})",
    )


class _ProgressLine:
    """Progress on stderr: overwritten in a terminal, a line every few seconds otherwise."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, rows: int) -> None:
        now = time.perf_counter()
        if now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        rate = rows / max(now - self.started, 1e-9)
        text = f"encoding: {rows:,} rows read ({rate:,.0f} rows/s)"
        print(f"\r{text}" if self.tty else text, end="" if self.tty else "\n", file=sys.stderr)

    def done(self) -> None:
        if self.tty and self.last:
            print(file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    party = check_label(args.party, what="--party")
    if args.signing_key is None:
        raise ConfigurationError(
            "encode signs a manifest for every encoded file and needs your signing key: give "
            f"--signing-key or set {SIGNING_KEY_ENV_VAR} (create one once with bloomlink keygen "
            "--signing --out FILE)"
        )
    signing_key = load_party_signing_key(args.signing_key)
    schema = load_schema(args.schema) if args.schema else default_schema()
    mapping = load_mapping(args.mapping) if args.mapping else shipped_mapping(args.layout)
    secret = read_secret(args.secret_file)
    positions = args.positions or args.out.with_name(args.out.name + ".positions.csv")
    progress = _ProgressLine()
    summary = encode_extract(
        extract_path=args.extract,
        mapping=mapping,
        schema=schema,
        secret=secret,
        project_id=args.project,
        encoded_path=args.out,
        positions_path=positions,
        bad_rows=args.on_bad_row,
        workers=args.workers,
        progress=progress,
    )
    progress.done()
    print(summary.one_line())
    strings = sensitive_strings(args.extract, mapping, schema, max_rows=args.scan_rows)
    signed, report = vouch_for_encoded_file(
        summary.encoded_path,
        signing_key=signing_key,
        party=party,
        strings=strings,
        software_version=bloomlink.__version__,
        unkeyed_reencoder=known_key_reencoder(
            encoded_path=summary.encoded_path,
            positions_path=summary.positions_path,
            extract_path=args.extract,
            mapping=mapping,
            schema=schema,
        ),
    )
    print(
        f"leak scan clean: {report.strings_checked} sensitive strings from {strings.rows_sampled} "
        f"sampled rows ({report.patterns_checked} byte forms); signed manifest "
        f"{summary.encoded_path.name}.manifest.json (sha256 {signed.manifest.sha256[:12]})"
    )
    print(f"private positions file: {summary.positions_path} (keep it in the department)")
    return 0

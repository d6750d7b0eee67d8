"""`bloomlink encode`: the department-side encoder run (extract -> encoded file + positions).

Every encode ends by leak-scanning its own output for a sample of the extract's raw values,
normalised values and tokens, and for CLKs made without the secret (a re-encoding of sampled
records under a known key), and, if clean, signing a manifest beside the encoded file
(``<out>.manifest.json``) that records the scan, the encode's counts and the payload digest.
All of it is one call, :func:`party.prepare.prepare_upload`, with one pass over the extract.
A signing key is required (flag or ``BLOOMLINK_SIGNING_KEY``): a department cannot forget the
manifest silently, and ``bloomlink submit`` will not send a file without one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import bloomlink
from bloomlink.commands._output import add_json_flag, emit, progress_bar
from party.encoder_run import DEFAULT_BAD_ROW_LIMIT, BadRowLimit, BadRowPolicy, EncodeProgress
from party.manifest import SIGNING_KEY_ENV_VAR, load_party_signing_key
from party.mapping import load_mapping, shipped_mapping
from party.prepare import prepare_upload
from party.sensitive_strings import DEFAULT_MAX_ROWS
from protocol.errors import ConfigurationError
from protocol.keys import spine_key_context
from protocol.labels import check_label
from protocol.schema import default_schema, load_schema
from protocol.secret import SECRET_ENV_VAR, read_secret

NAME = "encode"
HELP = "encode an extract (CSV or Parquet) into CLKs under the linkage secret"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("extract", type=Path, help="the department's extract (.csv or .parquet)")
    parser.add_argument("--project", required=True, help="the linkage project id")
    parser.add_argument(
        "--spine",
        metavar="NAME",
        help="the project joins this spine: derive the field keys for the spine, not the "
        "project, so encodings compare across every project of the spine (docs/spine.md)",
    )
    parser.add_argument(
        "--same-positions",
        type=Path,
        metavar="POSITIONS_CSV",
        help="put each record at the position it had in this earlier positions file of the "
        "same extract and project, instead of a fresh shuffle: a spine's key rotation "
        "(docs/spine.md)",
    )
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
        "--force",
        action="store_true",
        help="replace an existing encoded file, positions file and manifest (a new encode "
        "reshuffles: never replace files already submitted)",
    )
    parser.add_argument(
        "--on-bad-row",
        choices=[policy.value for policy in BadRowPolicy],
        default=BadRowPolicy.FAIL.value,
        help="fail (default): stop at the first unusable row; skip: leave such rows "
        "out; blank: treat an unusable value as missing",
    )
    parser.add_argument(
        "--max-bad-rows",
        type=_bad_row_limit,
        default=DEFAULT_BAD_ROW_LIMIT,
        metavar="N|P%",
        help="with skip or blank: stop (writing nothing) if more rows than this are unusable, "
        # argparse %-formats help text: a percentage limit's "%" must be doubled.
        "a count or a percentage of the rows read (default "
        + str(DEFAULT_BAD_ROW_LIMIT).replace("%", "%%")
        + ")",
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
    add_json_flag(parser)


def _bad_row_limit(text: str) -> BadRowLimit:
    try:
        return BadRowLimit.parse(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(error.message) from None


class _EncodeBar:
    """Encode progress as a bar over the extract's bytes (CSV) or rows (Parquet)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, progress: EncodeProgress) -> None:
        read = progress.read
        if self.bar is None:
            total = read.total if read else None
            self.bar = progress_bar("encode", total=total, unit=read.unit if read else "rows")
        if read is not None:
            self.bar.update(read.done - self.bar.n)
        else:
            self.bar.update(progress.rows_read - self.bar.n)
        self.bar.set_postfix_str(f"{progress.rows_read:,} rows", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _ScanBar:
    """The leak scan's bar; it starts when encoding has ended, so it closes that bar first."""

    def __init__(self, encode_bar: _EncodeBar) -> None:
        self.bar: Any = None
        self.encode_bar = encode_bar

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.encode_bar.close()
            self.bar = progress_bar("leak scan", total=total, unit="B")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    encode_bar = _EncodeBar()
    scan_bar = _ScanBar(encode_bar)
    try:
        prepared = prepare_upload(
            extract_path=args.extract,
            mapping=mapping,
            schema=schema,
            secret=secret,
            project_id=args.project,
            key_context=None if args.spine is None else spine_key_context(args.spine),
            same_positions=args.same_positions,
            party=party,
            signing_key=signing_key,
            software_version=bloomlink.__version__,
            encoded_path=args.out,
            positions_path=args.positions,
            bad_rows=args.on_bad_row,
            max_bad_rows=args.max_bad_rows,
            workers=args.workers,
            overwrite=args.force,
            scan_rows=args.scan_rows,
            progress=encode_bar,
            scan_progress=scan_bar,
        )
    finally:
        encode_bar.close()
        scan_bar.close()
    summary, report = prepared.summary, prepared.scan
    lines = [summary.one_line(), "fields (share of records with a value; counts only):"]
    lines += summary.field_lines()
    lines += [
        f"leak scan clean: {report.strings_checked} sensitive strings from "
        f"{prepared.strings.rows_sampled} sampled rows ({report.patterns_checked} byte forms), "
        "and the CLKs are unlike a known-key encoding of the same records; signed manifest "
        f"{prepared.manifest_path.name} (sha256 {prepared.manifest.manifest.sha256[:12]})",
        f"private positions file: {summary.positions_path} (keep it in the department)",
    ]
    emit(args, prepared.to_record(), lines)
    return 0

"""``bloomlink scan``: check an encoded file for identifiers before it leaves the department.

The sensitive strings come from the extract itself (``--extract`` with ``--mapping`` or
``--layout``: raw values, normalised values and tokens of a random sample of rows, see
``party/sensitive_strings.py``) and/or from a file (one per line, UTF-8). The report names kinds and byte
offsets, never a value.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bloomlink.commands._output import progress_bar
from bloomlink.exit_codes import ExitCode
from party.known_keys import known_key_reencoder
from party.leak_scan import UnkeyedReencoder, scan_encoded_file
from party.mapping import load_mapping, shipped_mapping
from party.sensitive_strings import DEFAULT_MAX_ROWS, sensitive_strings
from protocol.atomic_file import atomic_output
from protocol.errors import ClkFileError, ConfigurationError
from protocol.schema import default_schema, load_schema

NAME = "scan"
HELP = "check an encoded file for raw identifiers, unkeyed hashes and extra bytes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoded", required=True, type=Path, help="the encoded (CLK) file")
    parser.add_argument("--extract", type=Path, help="the extract the file was encoded from")
    mapping = parser.add_mutually_exclusive_group()
    mapping.add_argument("--mapping", type=Path, help="the department's mapping file (TOML)")
    mapping.add_argument("--layout", help="a shipped mapping for a synth layout")
    parser.add_argument("--schema", type=Path, help="linkage schema (default: the shipped one)")
    parser.add_argument(
        "--positions",
        type=Path,
        help="the private positions file (default: next to --encoded); with --extract, the "
        "CLKs are also checked against a re-encoding under a known all-zero key",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help=f"extract rows sampled for sensitive strings (default {DEFAULT_MAX_ROWS})",
    )
    parser.add_argument(
        "--sensitive-strings",
        type=Path,
        metavar="FILE",
        help="values that must not appear, one per line (UTF-8); kept private to the department",
    )
    parser.add_argument(
        "--false-alarm-rate",
        type=float,
        default=1e-6,
        help="chance a clean file is flagged (default 1e-6); short values repeated by chance "
        "in random bytes are judged against this",
    )
    parser.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=Path("-"),
        metavar="OUT",
        help="the report as JSON: alone, on stdout instead of the text; with OUT, also to OUT",
    )


def _lines(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for line in handle:
                value = line.rstrip("\r\n")
                if value:
                    yield value
    except OSError as error:
        raise ConfigurationError(
            f"{path}: cannot read sensitive strings: {error.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: sensitive strings must be UTF-8 text") from None


def run(args: argparse.Namespace) -> int:
    strings: list[str] = []
    reencoder: UnkeyedReencoder | None = None
    if args.extract:
        if not (args.mapping or args.layout):
            raise ConfigurationError("--extract needs --mapping or --layout")
        schema = load_schema(args.schema) if args.schema else default_schema()
        mapping = load_mapping(args.mapping) if args.mapping else shipped_mapping(args.layout)
        strings.extend(sensitive_strings(args.extract, mapping, schema, max_rows=args.rows).strings)
        positions = args.positions or args.encoded.with_name(args.encoded.name + ".positions.csv")
        if positions.exists():
            reencoder = known_key_reencoder(
                encoded_path=args.encoded,
                positions_path=positions,
                extract_path=args.extract,
                mapping=mapping,
                schema=schema,
            )
        elif args.positions:
            raise ConfigurationError(f"{positions}: positions file not found")
    if args.sensitive_strings:
        strings.extend(_lines(args.sensitive_strings))
    if not args.extract and not args.sensitive_strings:
        raise ConfigurationError("give --extract (with --mapping) or --sensitive-strings")
    bar: Any = progress_bar("leak scan", total=None, unit="B")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = scan_encoded_file(
            args.encoded,
            strings,
            false_alarm_rate=args.false_alarm_rate,
            unkeyed_reencoder=reencoder,
            progress=progress,
        )
    finally:
        bar.close()
    if report.truncated_only:
        raise ClkFileError(
            f"{report.findings[0].message}; it is damaged (an interrupted copy or write?), "
            "not a leak: scan the complete file, or encode again",
            path=str(args.encoded),
        )
    lines = []
    for finding in report.findings:
        where = f" at byte {finding.offset}" if finding.offset is not None else ""
        lines.append(f"LEAK  {finding.kind}{where}: {finding.message}")
    verdict = "clean" if report.clean else f"{len(report.findings)} finding(s)"
    lines.append(
        f"scanned {report.file_bytes} bytes for {report.strings_checked} sensitive strings "
        f"({report.patterns_checked} byte forms): {verdict}; {report.undetectable} too short "
        "to tell from chance if seen once"
    )
    if reencoder is None:
        lines.append(
            "not checked: whether the CLKs were made without the secret (needs --extract and "
            "the private positions file)"
        )
    record = {**report.to_record(), "unkeyed_check": reencoder is not None}
    to_stdout = args.json is not None and str(args.json) == "-"
    if to_stdout:
        print(json.dumps(record, sort_keys=True))
    else:
        for line in lines:
            print(line)
    if args.json is not None and not to_stdout:
        with atomic_output(args.json, mode=0o600) as handle:
            handle.write((json.dumps(record, indent=2) + "\n").encode("utf-8"))
    if not report.clean:
        print(
            "error: AuditError: the encoded file must not be sent; see the findings",
            file=sys.stderr,
        )
        return ExitCode.AUDIT_FAILED
    return ExitCode.OK

"""`bloomlink schema check`: validate a linkage schema and print its fingerprint, the value the
operator registers with the project and the linkage unit compares across parties."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol.schema import default_schema, load_schema

NAME = "schema"
HELP = "validate a linkage schema and print its fingerprint (for `project create`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("check",), help="check: validate and print the fingerprint"
    )
    parser.add_argument("--schema", type=Path, help="schema file (default: the shipped one)")


def run(args: argparse.Namespace) -> int:
    schema = load_schema(args.schema) if args.schema else default_schema()
    if schema.grouped:
        groups = "; ".join(
            f"{group.name} {group.bits} bits, hardening {group.hardening}"
            for group in schema.layout.groups
        )
        shape = f"{schema.encoded_bits}-bit encodings of {len(schema.groups)} groups ({groups})"
    else:
        shape = f"{schema.encoded_bits}-bit CLKs, hardening {schema.hardening}"
    print(
        f"{schema.fingerprint.hex()}  schema {schema.name!r}: {len(schema.fields)} fields, "
        f"{shape}, {schema.hashing}"
    )
    return 0

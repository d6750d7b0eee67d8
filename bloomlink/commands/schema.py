"""`bloomlink schema check`: validate a linkage schema and print its fingerprint, the value the
operator registers with the project and the linkage unit compares across parties."""

from __future__ import annotations

import argparse
from pathlib import Path

from bloomlink.commands._output import add_json_flag, emit
from protocol.schema import default_schema, load_schema

NAME = "schema"
HELP = "validate a linkage schema and print its fingerprint (for `project create`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("check",), help="check: validate and print the fingerprint"
    )
    parser.add_argument("--schema", type=Path, help="schema file (default: the shipped one)")
    add_json_flag(parser)


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
    emit(
        args,
        {
            "fingerprint": schema.fingerprint.hex(),
            "name": schema.name,
            "schema_version": schema.schema_version,
            "fields": [spec.name for spec in schema.fields],
            "clk_bits": schema.clk_bits,
            "encoded_bits": schema.encoded_bits,
            "hashing": str(schema.hashing),
            # Version 1 hardens the whole record; version 2 each group (in "layout").
            "hardening": None if schema.grouped else str(schema.hardening),
            "layout": schema.layout.to_record() if schema.grouped else None,
        },
        [
            f"{schema.fingerprint.hex()}  schema {schema.name!r}: {len(schema.fields)} fields, "
            f"{shape}, {schema.hashing}"
        ],
    )
    return 0

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
    emit(
        args,
        {
            "fingerprint": schema.fingerprint.hex(),
            "name": schema.name,
            "fields": [spec.name for spec in schema.fields],
            "clk_bits": schema.clk_bits,
            "encoded_bits": schema.encoded_bits,
            "hashing": str(schema.hashing),
            "hardening": str(schema.hardening),
        },
        [
            f"{schema.fingerprint.hex()}  schema {schema.name!r}: {len(schema.fields)} fields, "
            f"{schema.encoded_bits}-bit CLKs, {schema.hashing}, hardening {schema.hardening}"
        ],
    )
    return 0

"""`bloomlink schema check`: validate a linkage schema and print its fingerprint, the value the
operator registers with the project and the linkage unit compares across parties.
`bloomlink schema init`: write the shipped default schema to a file, to register as it is or
to start your own from (a schema holds no secret)."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from bloomlink.commands._output import add_json_flag, emit
from protocol.atomic_file import atomic_output
from protocol.errors import ConfigurationError
from protocol.schema import default_schema, load_schema

NAME = "schema"
HELP = (
    "validate a linkage schema and print its fingerprint (for `project create`), or write the "
    "shipped one to a file (init)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("check", "init"),
        help="check: validate and print the fingerprint; init: write the shipped default "
        "schema to --out (e.g. schema.toml)",
    )
    parser.add_argument("--schema", type=Path, help="schema file (default: the shipped one)")
    parser.add_argument("--out", type=Path, help="init: the new schema file (must not exist)")
    add_json_flag(parser)


def _init(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ConfigurationError("schema init needs --out FILE (e.g. --out schema.toml)")
    if args.schema is not None:
        raise ConfigurationError("schema init writes the shipped schema; --schema is for check")
    out: Path = args.out
    if out.exists():
        raise ConfigurationError(f"{out} exists; schema init does not replace a file")
    text = (resources.files("protocol") / "data" / "default_schema.toml").read_bytes()
    with atomic_output(out, mode=0o644) as handle:
        handle.write(text)
    schema = load_schema(out)
    emit(
        args,
        {"schema": str(out), "fingerprint": schema.fingerprint.hex(), "name": schema.name},
        [
            f"wrote the shipped schema {schema.name!r} to {out} (fingerprint "
            f"{schema.fingerprint.hex()[:12]}...); give every party the same file "
            "(docs/schema.md says what to change, if anything)"
        ],
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "init":
        return _init(args)
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

"""`bloomlink keygen`: create a new 256-bit linkage secret in a file only its owner can read."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol.secret import write_secret

NAME = "keygen"
HELP = "create a new linkage secret file (256 bits, mode 0600); share it only with the parties"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=Path, help="path of the new secret file (must not exist)"
    )


def run(args: argparse.Namespace) -> int:
    path = write_secret(args.out)
    print(
        f"wrote a new 256-bit linkage secret to {path} (mode 0600); give it to the other parties "
        "over a secure channel, never to the linkage unit"
    )
    return 0

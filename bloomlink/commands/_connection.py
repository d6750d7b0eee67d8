"""Shared flags for commands that talk to the linkage unit (not a command itself)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from party.client import LinkageClient
from protocol.errors import ConfigurationError
from protocol.identity import Identity
from protocol.tls import TlsFiles


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get("BLOOMLINK_TARGET", "localhost:50051"),
        help="linkage unit address host:port (env BLOOMLINK_TARGET)",
    )
    parser.add_argument("--ca", type=Path, help="the deployment's CA certificate (PEM)")
    parser.add_argument("--cert", type=Path, help="your client certificate (PEM)")
    parser.add_argument("--key", type=Path, help="your client private key (PEM)")
    parser.add_argument(
        "--insecure-identity",
        metavar="IDENTITY",
        help="RISK: plaintext, unauthenticated; claim party:<name>/operator against "
        "'serve --insecure' (local tests only, never with real data)",
    )
    parser.add_argument(
        "--server-name",
        help="the name to expect in the linkage unit's certificate, when --target uses "
        "another (e.g. an IP address or a tunnel)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")


def client_from_args(args: argparse.Namespace) -> LinkageClient:
    if args.insecure_identity:
        return LinkageClient(
            args.target,
            insecure_identity=Identity.from_text(args.insecure_identity),
            timeout=args.timeout,
        )
    if not (args.ca and args.cert and args.key):
        raise ConfigurationError("give --ca, --cert and --key (mutual TLS)")
    files = TlsFiles(ca_certificate=args.ca, certificate=args.cert, private_key=args.key)
    return LinkageClient(args.target, tls=files, timeout=args.timeout, server_name=args.server_name)

"""``bloomlink health``: ask a linkage unit's gRPC health service whether it is serving.

The linkage unit runs the standard gRPC health service (``grpc.health.v1.Health``): the
overall status (service ``""``) and ``bloomlink.v1.LinkageUnit`` are ``SERVING`` once it has
started, and ``NOT_SERVING`` while it shuts down. Like every call it needs mutual TLS, so
give any certificate of the deployment (a monitor can have an auditor's). Load balancers and
orchestrators that speak the protocol (``grpc_health_probe``, Kubernetes gRPC probes) can
ask the same service directly.
"""

from __future__ import annotations

import argparse

from bloomlink.commands._connection import add_client_arguments, client_from_args
from bloomlink.commands._output import add_json_flag, emit
from bloomlink.exit_codes import ExitCode
from party.client import SERVICE_NAME

NAME = "health"
HELP = "check that a linkage unit is up and serving (gRPC health service); exit 0 if so"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--service",
        default=SERVICE_NAME,
        help=f'the service to ask about: {SERVICE_NAME} (default) or "" for the server overall',
    )
    add_client_arguments(parser)
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        status = client.health(args.service)
    serving = status == "SERVING"
    emit(
        args,
        {"target": args.target, "service": args.service, "status": status, "serving": serving},
        [f"{args.target} {args.service or '(overall)'}: {status}"],
    )
    return ExitCode.OK if serving else ExitCode.UNAVAILABLE

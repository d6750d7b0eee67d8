"""``bloomlink project create|status|run``: the operator's (and members') project commands."""

from __future__ import annotations

import argparse

from bloomlink.commands._connection import add_client_arguments, client_from_args
from protocol.errors import ConfigurationError
from protocol.messages import (
    BlockingMode,
    LinkKeyMode,
    ProjectSettings,
    ProjectStatus,
    RunState,
)

NAME = "project"
HELP = "create a linkage project, show its status, or start its run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="project_action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="register a project (operator)")
    create.add_argument("project_id")
    create.add_argument("--parties", required=True, help="comma-separated member parties")
    create.add_argument("--schema-fingerprint", required=True, help="hex SHA-256 of the schema")
    create.add_argument("--threshold", type=float, help="Dice threshold; omit for automatic")
    create.add_argument(
        "--blocking",
        choices=[mode.value for mode in BlockingMode],
        default=BlockingMode.LSH.value,
        help="lsh: always block; none: compare every pair; auto: every pair up to 20k x 20k",
    )
    create.add_argument(
        "--link-key-mode", choices=[mode.value for mode in LinkKeyMode], default="shared"
    )
    create.add_argument("--retention-days", type=int, default=0, help="0: delete CLKs after run")
    create.add_argument("--no-auto-run", action="store_true", help="wait for 'project run'")
    status = sub.add_parser("status", help="who has uploaded, checks, run progress")
    status.add_argument("project_id")
    start = sub.add_parser("run", help="start the run (operator)")
    start.add_argument("project_id")
    start.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the result")
    for action in (create, status, start):
        add_client_arguments(action)


def describe(status: ProjectStatus) -> str:
    """A status summary a person can paste into a ticket (states and counts only)."""
    uploads = ", ".join(f"{party.party_id}={party.upload_state}" for party in status.parties)
    line = f"project {status.project_id}: run {status.run_state}; uploads {uploads}"
    if status.run_state is RunState.RUNNING and status.progress_stage:
        line += f"; {status.progress_stage} {status.progress_done}/{status.progress_total}"
    if status.run_state is RunState.FAILED and status.progress_stage:
        line += f"; {status.progress_stage}"
    if status.run_state is RunState.REFUSED:
        line += f"; checks refused: party {status.check_party_id}, {status.check_aspect}"
    if status.run_state is RunState.FINISHED:
        line += (
            f"; {status.cluster_count} clusters, {status.linked_record_count} linked records, "
            f"{status.comparisons} comparisons"
        )
        if status.threshold is not None:
            line += f"; threshold {status.threshold:.3f} ({status.threshold_method})"

    return line


def run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if args.project_action == "create":
            try:
                fingerprint = bytes.fromhex(args.schema_fingerprint)
            except ValueError:
                raise ConfigurationError("--schema-fingerprint must be hex") from None
            settings = ProjectSettings(
                project_id=args.project_id,
                members=tuple(p.strip() for p in args.parties.split(",") if p.strip()),
                schema_fingerprint=fingerprint,
                threshold=args.threshold,
                blocking=BlockingMode(args.blocking),
                link_key_mode=LinkKeyMode(args.link_key_mode),
                retention_days=args.retention_days,
                auto_run=not args.no_auto_run,
            )
            digest = client.create_project(settings)
            print(f"project {args.project_id} created; settings fingerprint {digest}")
        elif args.project_action == "status":
            print(describe(client.project_status(args.project_id)))
        else:
            ticket = client.start_run(args.project_id)
            print(f"run {ticket.run_id} {ticket.state}")
            if args.wait > 0:
                status = client.wait_for_run(args.project_id, timeout=args.wait)
                print(describe(status))
                return 0 if status.run_state is RunState.FINISHED else 1
    return 0

"""``bloomlink project create|status|run|report``: the operator's (and members') project commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bloomlink.commands._connection import add_client_arguments, client_from_args
from bloomlink.commands._explain import explain_aspect
from bloomlink.commands._output import add_json_flag, emit, progress_bar
from bloomlink.report_html import render_report
from party.client import LinkageClient
from protocol.clk_layout import ClkLayout
from protocol.errors import ConfigurationError, UnavailableError
from protocol.messages import (
    DEFAULT_MAX_CLUSTER_SIZE,
    BlockingMode,
    LinkKeyMode,
    ProjectSettings,
    ProjectStatus,
    RunState,
)
from protocol.schema import default_schema, load_schema_identity, single_clk_schema

NAME = "project"
HELP = "create a linkage project, show its status, start its run, or report on it"

_DONE = (RunState.FINISHED, RunState.REFUSED, RunState.FAILED)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="project_action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="register a project (operator)")
    create.add_argument("project_id")
    create.add_argument("--parties", required=True, help="comma-separated member parties")
    create.add_argument(
        "--dedupe",
        default="",
        metavar="PARTIES",
        help="comma-separated members whose extracts may hold several records of one person "
        "(deduplicated and linked as one cluster per person; the others are duplicate-free); "
        "one party alone with --dedupe is a deduplication-only project. Default: one-to-one",
    )
    create.add_argument(
        "--max-cluster-size",
        type=int,
        help=f"with --dedupe: a run fails rather than give one person more records of one "
        f"party than this (default {DEFAULT_MAX_CLUSTER_SIZE})",
    )
    schema = create.add_mutually_exclusive_group(required=True)
    schema.add_argument(
        "--schema",
        type=Path,
        help="the project's linkage schema file (or schema check --json's output for it): its "
        "fingerprint, and for a grouped (v2) schema its layout and hardening, which every "
        "upload must then have (holds no secret)",
    )
    schema.add_argument(
        "--schema-fingerprint",
        help="hex SHA-256 of a single-CLK (v1) schema or of a schema bloomlink ships (its layout "
        "is known), instead of --schema",
    )
    schema.add_argument(
        "--schema-fingerprint-file",
        type=Path,
        metavar="JSON",
        help="read the fingerprint (and a grouped schema's layout) from the output of "
        "bloomlink schema check --json (or the schema file), instead of --schema",
    )
    create.add_argument(
        "--threshold",
        type=float,
        help="Dice threshold (a grouped schema: the record-level Dice cut for candidate pairs); "
        "omit for automatic",
    )
    create.add_argument(
        "--match-probability",
        type=float,
        metavar="P",
        help="grouped (v2) schemas only: link pairs whose Fellegi-Sunter match probability is "
        "at least P, in (0, 1); default 0.5",
    )
    create.add_argument(
        "--blocking",
        choices=[mode.value for mode in BlockingMode],
        default=BlockingMode.LSH.value,
        help="lsh: always block; none: compare every pair; auto: every pair up to 20k x 20k",
    )
    create.add_argument(
        "--link-key-mode", choices=[mode.value for mode in LinkKeyMode], default="shared"
    )
    create.add_argument(
        "--spine",
        metavar="NAME",
        help="link into this spine: people it holds keep their link keys (docs/spine.md)",
    )
    create.add_argument("--retention-days", type=int, default=0, help="0: delete CLKs after run")
    create.add_argument("--no-auto-run", action="store_true", help="wait for 'project run'")
    status = sub.add_parser("status", help="who has uploaded, checks, run progress")
    status.add_argument("project_id")
    status.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="follow the run (a progress bar in a terminal) until it ends or SECONDS pass",
    )
    start = sub.add_parser("run", help="start the run (operator)")
    start.add_argument("project_id")
    start.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the result")
    report = sub.add_parser(
        "report",
        help="match-quality report of the finished run (operator): report.html, PNGs, report.json",
    )
    report.add_argument("project_id")
    report.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    for action in (create, status, start, report):
        add_client_arguments(action)
        add_json_flag(action)


def _schema_identity(args: argparse.Namespace) -> tuple[bytes, ClkLayout | None]:
    """The project's schema fingerprint and, for a grouped schema, its layout."""
    # The schema file, or schema check --json's summary of it (either flag takes either).
    source = args.schema if args.schema is not None else args.schema_fingerprint_file
    if source is not None:
        identity = load_schema_identity(source)
        if identity.layout is not None or args.schema is not None:
            return identity.fingerprint, identity.layout
        fingerprint = identity.fingerprint
    else:
        try:
            fingerprint = bytes.fromhex(str(args.schema_fingerprint))
        except ValueError:
            raise ConfigurationError("--schema-fingerprint must be hex") from None
    # The fingerprint of a schema bloomlink ships names its layout too (a schema holds no
    # secret), so the operator can name the default by its fingerprint alone.
    for shipped in (default_schema(), single_clk_schema()):
        if shipped.grouped and shipped.fingerprint == fingerprint:
            return fingerprint, shipped.layout
    return fingerprint, None


def describe(status: ProjectStatus) -> str:
    """A status summary a person can paste into a ticket (states and counts only)."""
    uploads = ", ".join(f"{party.party_id}={party.upload_state}" for party in status.parties)
    line = f"project {status.project_id}: run {status.run_state}; uploads {uploads}"
    if status.run_state is RunState.READY:
        line += "; every upload is complete: the operator starts the run with 'project run'"
    if status.run_state is RunState.RUNNING and status.progress_stage:
        line += f"; {status.progress_stage} {status.progress_done}/{status.progress_total}"
    if status.run_state is RunState.FAILED and status.progress_stage:
        line += f"; {status.progress_stage}"
    if status.run_state is RunState.REFUSED:
        line += f"; checks refused: party {status.check_party_id}, {status.check_aspect}"
        plain = explain_aspect(status.check_aspect, status.check_party_id)
        line += f" ({plain})" if plain else ""
    if status.run_state is RunState.FINISHED and status.cluster_count == 0:
        # A member party is never shown a figure that depends on another party's data.
        line += "; the run's figures are for the operator and auditors"
    elif status.run_state is RunState.FINISHED:
        line += (
            f"; {status.cluster_count} clusters, {status.linked_record_count} linked records, "
            f"{status.comparisons} comparisons"
        )
        if status.threshold is not None:
            line += f"; threshold {status.threshold:.3f} ({status.threshold_method})"
        if status.estimated_f1 is not None:
            line += (
                f"; the model expects precision {status.estimated_precision:.4f}, recall "
                f"{status.estimated_recall:.4f}, F1 {status.estimated_f1:.4f}"
            )

    return line


def status_record(status: ProjectStatus) -> dict[str, Any]:
    """The status as JSON-ready data (states, counts, ids; never a value)."""
    record: dict[str, Any] = {
        "project_id": status.project_id,
        "run_id": status.run_id,
        "run_state": str(status.run_state),
        "schema_fingerprint": status.schema_fingerprint.hex(),
        "settings_fingerprint": status.settings_fingerprint,
        "uploads": {party.party_id: str(party.upload_state) for party in status.parties},
        "progress": {
            "stage": status.progress_stage,
            "done": status.progress_done,
            "total": status.progress_total,
        },
        "cluster_count": status.cluster_count,
        "linked_record_count": status.linked_record_count,
        "comparisons": status.comparisons,
        "threshold": status.threshold,
        "threshold_method": status.threshold_method,
        # A model-scored run, seen by the operator or an auditor: the model's own estimate.
        "estimated": None
        if status.estimated_f1 is None
        else {
            "precision": status.estimated_precision,
            "recall": status.estimated_recall,
            "f1": status.estimated_f1,
        },
    }
    if status.run_state is RunState.REFUSED:
        record["refused"] = {
            "party": status.check_party_id,
            "aspect": status.check_aspect,
            "explanation": explain_aspect(status.check_aspect, status.check_party_id),
        }
    return record


def follow(
    client: LinkageClient, project_id: str, *, timeout: float, poll: float = 0.5
) -> ProjectStatus:
    """Poll the status until the run ends, showing its stage as a bar (in a terminal)."""
    deadline = time.monotonic() + timeout
    bar: Any = progress_bar("run", total=None, unit="step")
    stage = ""
    try:
        while True:
            status = client.project_status(project_id)
            if status.run_state in _DONE:
                return status
            if status.progress_stage and status.progress_stage != stage:
                stage = status.progress_stage
                bar.reset(total=status.progress_total or None)
                bar.set_description_str(f"run: {stage.split(' (')[0]}")
            if status.progress_total:
                bar.update(status.progress_done - bar.n)
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"the run did not end within {timeout:.0f}s (state {status.run_state}); "
                    "see bloomlink project status"
                )
            time.sleep(poll)
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if args.project_action == "create":
            fingerprint, layout = _schema_identity(args)
            members = _names(args.parties)
            dedupe = _names(args.dedupe)
            # Members first, in member order; names that are not members stay at the end so
            # that the settings refuse them by name.
            deduplicated = tuple(p for p in members if p in dedupe)
            deduplicated += tuple(p for p in dedupe if p not in members)
            cap = (
                {} if args.max_cluster_size is None else {"max_cluster_size": args.max_cluster_size}
            )
            settings = ProjectSettings(
                project_id=args.project_id,
                members=members,
                deduplicated=deduplicated,
                **cap,
                schema_fingerprint=fingerprint,
                threshold=args.threshold,
                blocking=BlockingMode(args.blocking),
                link_key_mode=LinkKeyMode(args.link_key_mode),
                retention_days=args.retention_days,
                auto_run=not args.no_auto_run,
                layout=layout,
                match_probability=args.match_probability,
                spine=args.spine,
            )
            digest = client.create_project(settings)
            lines = [
                f"project {args.project_id} created ({settings.describe_link_model()}); "
                f"settings fingerprint {digest}"
            ]
            if layout is not None:
                groups = ", ".join(
                    f"{group.name} {group.bits} bits ({group.hardening})" for group in layout.groups
                )
                lines.append(f"uploads must be grouped encodings: {groups}")
                probability = settings.match_probability
                lines.append(
                    "runs link pairs whose Fellegi-Sunter match probability is at least "
                    f"{0.5 if probability is None else probability:g}"
                )
            emit(
                args,
                {
                    "project_id": args.project_id,
                    "settings_fingerprint": digest,
                    "members": list(settings.members),
                    "auto_run": settings.auto_run,
                    "schema_fingerprint": fingerprint.hex(),
                    "layout": None if layout is None else layout.to_record(),
                    "link_model": str(settings.link_model),
                    "deduplicated": list(settings.deduplicated),
                    "max_cluster_size": settings.max_cluster_size,
                    "match_probability": settings.match_probability,
                },
                lines,
            )
            return 0
        if args.project_action == "status":
            if args.wait > 0:
                status = follow(client, args.project_id, timeout=args.wait)
            else:
                status = client.project_status(args.project_id)
            settings = client.project_settings(args.project_id)
            report = status_record(status)
            report["link_model"] = str(settings.link_model)
            report["deduplicated"] = list(settings.deduplicated)
            emit(args, report, [f"{describe(status)}; link model {settings.describe_link_model()}"])
            return 0
        if args.project_action == "report":
            run_id, data = client.project_report(args.project_id)
            written = render_report(run_id, data, args.out)
            f1 = data.get("estimated_f1")
            summary = (
                f"report of run {run_id} written to {args.out / 'report.html'}; threshold "
                f"{float(data['threshold']):.3f} ({data['threshold_method']}); estimated F1 "
                + ("unavailable (Dice run)" if f1 is None else f"{float(f1):.4f}")
            )
            untrusted = [str(party) for party in data.get("untrusted_models") or ()]
            if untrusted:
                summary += (
                    f"; WARNING: the model of {', '.join(untrusted)} was not trusted and "
                    "linked nothing (docs/quality.md)"
                )
            emit(
                args,
                {"run_id": run_id, "files": [str(path) for path in written], "report": data},
                [summary],
            )
            return 0
        ticket = client.start_run(args.project_id)
        lines = [f"run {ticket.run_id} {ticket.state}"]
        record: dict[str, Any] = {"run_id": ticket.run_id, "state": str(ticket.state)}
        code = 0
        if args.wait > 0:
            status = follow(client, args.project_id, timeout=args.wait)
            lines.append(describe(status))
            record["status"] = status_record(status)
            code = 0 if status.run_state is RunState.FINISHED else 1
        emit(args, record, lines)
        return code

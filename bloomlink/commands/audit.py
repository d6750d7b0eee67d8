"""``bloomlink audit fetch`` / ``verify``: the auditor downloads and checks the audit log.

``fetch`` downloads, with the auditor's certificate, the log (or one project's view), its
signed head, the LU's audit public key and the project's settings. ``verify`` reads the log,
the LU's public key and, optionally, the parties' signed manifests; prints a readable report,
writes it as JSON on request, and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.verify import AuditView, verify_audit_log
from bloomlink.commands._connection import add_client_arguments, client_from_args
from bloomlink.commands._output import add_json_flag, emit
from bloomlink.exit_codes import ExitCode
from protocol.atomic_file import atomic_output
from protocol.audit import head_from_json
from protocol.errors import ConfigurationError
from protocol.labels import check_label
from protocol.manifest import read_manifest
from protocol.signing import load_public_key, public_key_fingerprint

NAME = "audit"
HELP = "verify a linkage unit's audit log (for auditors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        help="download the audit log, its signed head, the LU's public key and project settings",
        description="Download the audit log (auditor or operator certificate; a member party "
        "may fetch its own project's view), its signed head and the LU's audit public key.",
    )
    fetch.add_argument("--project", help="one project's view (others redacted); default all")
    fetch.add_argument("--out", required=True, type=Path, help="folder to write into")
    add_client_arguments(fetch)
    add_json_flag(fetch)
    verify = actions.add_parser(
        "verify",
        help="check the hash chain, signatures, project rules, retention and manifests",
        description="Check the hash chain, signatures, project rules, retention and manifests.",
    )
    verify.add_argument("--log", required=True, type=Path, help="the audit log (JSON lines)")
    verify.add_argument(
        "--public-key", required=True, type=Path, help="the linkage unit's audit public key (PEM)"
    )
    verify.add_argument(
        "--manifest",
        action="append",
        default=[],
        type=Path,
        metavar="M",
        help="a party's signed upload manifest (repeatable)",
    )
    verify.add_argument(
        "--party-key",
        action="append",
        default=[],
        metavar="PARTY=PEM",
        help="a party's registered manifest public key; its manifests must be signed by it",
    )
    verify.add_argument(
        "--head",
        action="append",
        default=[],
        type=Path,
        metavar="H",
        help="a signed head collected earlier (repeatable; default: the one beside the log)",
    )
    verify.add_argument(
        "--project",
        help="the file is this project's view (other projects' entries as stubs), not the "
        "whole log",
    )
    verify.add_argument(
        "--party",
        help="with --project: the view is this member party's (other parties' figures withheld)",
    )
    verify.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=Path("-"),
        metavar="OUT",
        help="the report as JSON: alone, on stdout instead of the text; with OUT, also to OUT",
    )


def fetch(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with client_from_args(args) as client:
        log, head = client.fetch_audit_log(args.project)
        public_key = client.audit_public_key()
        settings = client.project_settings(args.project) if args.project else None
        identity = client.identity
    log_path = out / "audit.jsonl"
    writes = [(log_path, log), (out / "lu-audit-key.pem", public_key)]
    if head:
        writes.append((out / "audit.jsonl.head", head))
    if settings is not None:
        writes.append((out / "project-settings.json", settings.canonical_json().encode("ascii")))
    for path, data in writes:
        with atomic_output(path, mode=0o644) as handle:
            handle.write(data)
    lines = log.count(b"\n")
    fingerprint = public_key_fingerprint(load_public_key(public_key))
    # The verify command that fits what was fetched: a party's view withholds the other
    # parties' figures, and verify must be told so (--party), or it reads them as missing.
    verify_command = (
        f"bloomlink audit verify --log {log_path} --public-key {out / 'lu-audit-key.pem'}"
    )
    if args.project:
        verify_command += f" --project {args.project}"
        if identity is not None and identity.party is not None:
            verify_command += f" --party {identity.party}"
    emit(
        args,
        {
            "entries": lines,
            "log": str(log_path),
            "files": [str(path) for path, _ in writes],
            "lu_key_sha256": fingerprint,
            "verify_command": verify_command,
        },
        [
            f"fetched {lines} audit entries to {log_path} with its signed head and the LU key "
            f"(sha256:{fingerprint[:16]}); check the key against the one published out of "
            f"band, then run {verify_command}"
        ],
    )
    return ExitCode.OK


def run(args: argparse.Namespace) -> int:
    if args.audit_action == "fetch":
        return fetch(args)
    return verify(args)


def verify(args: argparse.Namespace) -> int:
    public_key = load_public_key(args.public_key)
    manifests = [read_manifest(path) for path in args.manifest]
    party_keys = {}
    for item in args.party_key:
        party, separator, pem = item.partition("=")
        if not separator:
            raise ConfigurationError("--party-key takes PARTY=PEM-FILE")
        party_keys[check_label(party, what="--party-key party")] = load_public_key(pem)
    heads = None
    if args.head:
        heads = []
        for path in args.head:
            try:
                data = path.read_bytes()
            except OSError as error:
                raise ConfigurationError(
                    f"{path}: cannot read signed head: {error.strerror}"
                ) from None
            heads.append(head_from_json(data))
    if args.party and not args.project:
        raise ConfigurationError("--party needs --project: a party reads one project's view")
    view = (
        AuditView(
            project_id=check_label(args.project, what="--project"),
            party=check_label(args.party, what="--party") if args.party else None,
        )
        if args.project
        else None
    )
    report = verify_audit_log(
        args.log, public_key, manifests=manifests, heads=heads, party_keys=party_keys, view=view
    )
    to_stdout = args.json is not None and str(args.json) == "-"
    print(report.to_json() if to_stdout else report.to_text())
    if args.json is not None and not to_stdout:
        with atomic_output(args.json, mode=0o644) as handle:
            handle.write((report.to_json() + "\n").encode("utf-8"))
    if not report.passed:
        print(
            f"error: AuditError: {len(report.failures)} audit check(s) failed; see above",
            file=sys.stderr,
        )
        return ExitCode.AUDIT_FAILED
    return ExitCode.OK

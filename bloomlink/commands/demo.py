"""`bloomlink demo`: the whole protocol on one machine, for real.

Creates certificates, starts a linkage unit on a loopback port with mutual TLS, synthesises
two department extracts with known truth, creates a linkage secret, encodes both extracts,
creates the project as the operator, submits both encoded files as their parties, waits for
the run, fetches each party's link keys and joins them with its private positions file, then
fetches the audit log as the auditor and verifies it (chain, rules, retention, manifests,
wire), and prints the linkage quality against the synthetic truth, the audit verdict, the
time of every stage, and where every output is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import bloomlink
from auditor.verify import verify_audit_log
from bloomlink.exit_codes import ExitCode
from bloomlink.synth import SynthConfig, generate, write
from bloomlink.synth.scoring import link_quality
from linkage_unit.pki import init_certificates
from linkage_unit.server import ServerConfig, create_server
from party.client import LinkageClient
from party.link_key_file import join_link_keys
from party.manifest import create_party_signing_key, party_public_key_pem
from party.mapping import shipped_mapping
from party.prepare import prepare_upload
from protocol.atomic_file import atomic_output
from protocol.errors import ConfigurationError, InvariantError
from protocol.messages import ProjectSettings
from protocol.schema import default_schema, load_schema
from protocol.secret import read_secret, write_secret
from protocol.signing import load_public_key

NAME = "demo"
HELP = "run an end-to-end linkage on synthetic data: real certificates, real mTLS, real files"

PARTIES = ("moj", "dfe")
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("bloomlink-demo"),
        help="where every output goes (a new run-<time> folder inside it; default ./bloomlink-demo)",
    )
    parser.add_argument(
        "--records", type=int, default=10_000, help="records per department (default 10000)"
    )
    parser.add_argument(
        "--difficulty",
        default="medium",
        choices=("none", "low", "medium", "hard"),
        help="how corrupted the synthetic records are (default medium)",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="share of DfE's people also at MoJ"
    )
    parser.add_argument("--schema", type=Path, help="linkage schema (default: the shipped one)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="Dice threshold; with the default grouped schema, the record-level Dice cut for "
        "candidate pairs (default: chosen automatically)",
    )
    parser.add_argument("--seed", type=int, help="seed for the synthetic data (default: fresh)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run")


class _Stages:
    """Times each stage and prints it as it finishes."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.times.append((name, elapsed))
        print(f"  {name:<44} {elapsed:7.2f} s", flush=True)

    def run(self, name: str, action: Callable[[], T]) -> T:
        with self.stage(name):
            return action()


def run(args: argparse.Namespace) -> int:
    if args.records < 2:
        raise ConfigurationError("--records must be at least 2")
    started = time.perf_counter()
    root = args.dir / dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    if root.exists():
        raise ConfigurationError(f"{root} exists already; wait a second or choose another --dir")
    department_dirs = {party: root / party for party in PARTIES}
    for directory in department_dirs.values():
        directory.mkdir(parents=True)
    schema = load_schema(args.schema) if args.schema else default_schema()
    project_id = "demo"
    stages = _Stages()
    print(f"bloomlink demo in {root}", flush=True)

    pki = stages.run(
        "certificates (CA, LU, operator, parties, auditor)",
        lambda: init_certificates(root / "certs", parties=PARTIES, auditor=True),
    )
    config = ServerConfig(
        data_dir=root / "linkage-unit",
        listen="127.0.0.1:0",
        ca_certificate=pki.ca_certificate,
        certificate=pki.linkage_unit.certificate,
        private_key=pki.linkage_unit.private_key,
        audit_log=root / "linkage-unit" / "audit.jsonl",
        grace_seconds=1.0,
    )
    server = create_server(config)
    port = stages.run("linkage unit started (mutual TLS, loopback)", server.start)
    target = f"127.0.0.1:{port}"
    try:
        synth = stages.run(
            f"synthesise {len(PARTIES)} x {args.records:,} records ({args.difficulty})",
            lambda: write(
                generate(
                    SynthConfig(
                        departments=PARTIES,
                        records=args.records,
                        overlap=args.overlap,
                        difficulty=args.difficulty,
                        seed=args.seed,
                    )
                ),
                root / "synth",
            ),
        )
        secret_path = root / "linkage-secret.key"
        stages.run("keygen (the parties' shared secret)", lambda: write_secret(secret_path))
        secret = read_secret(secret_path)
        summaries = {}
        manifests = {}
        for party in PARTIES:
            signing_key = create_party_signing_key(department_dirs[party] / "signing-key.pem")
            with atomic_output(department_dirs[party] / "signing-key.pem.pub", mode=0o644) as out:
                out.write(party_public_key_pem(signing_key))
            with stages.stage(f"encode, leak-scan and sign {party} (at {party})"):
                prepared = prepare_upload(
                    extract_path=root / "synth" / f"{party}.csv",
                    mapping=shipped_mapping(party),
                    schema=schema,
                    secret=secret,
                    project_id=project_id,
                    party=party,
                    signing_key=signing_key,
                    software_version=bloomlink.__version__,
                    encoded_path=department_dirs[party] / f"{party}.clk",
                    positions_path=department_dirs[party] / f"{party}.positions.csv",
                )
            summaries[party], manifests[party] = prepared.summary, prepared.manifest
        with LinkageClient(target, tls=pki.tls_files(pki.operator)) as operator:
            stages.run(
                "operator creates the project",
                lambda: operator.create_project(
                    ProjectSettings(
                        project_id=project_id,
                        members=PARTIES,
                        schema_fingerprint=schema.fingerprint,
                        threshold=args.threshold,
                        layout=schema.layout if schema.grouped else None,
                    )
                ),
            )
            for party in PARTIES:
                with LinkageClient(target, tls=pki.tls_files(pki.parties[party])) as client:
                    with stages.stage(f"{party} submits its encoded file"):
                        client.upload_file(
                            summaries[party].encoded_path,
                            party_id=party,
                            manifest=manifests[party],
                        )
            status = stages.run(
                "linkage unit checks, blocks, compares, solves",
                lambda: operator.wait_for_run(project_id, timeout=args.timeout),
            )
        keys_paths: dict[str, Path] = {}
        for party in PARTIES:
            with LinkageClient(target, tls=pki.tls_files(pki.parties[party])) as client:
                with stages.stage(f"{party} fetches its link keys"):
                    fetched = client.fetch_link_keys(project_id, party)
            keys_paths[party] = department_dirs[party] / f"{party}.link-keys.csv"
            join_link_keys(
                summaries[party].positions_path,
                fetched.positions,
                fetched.link_keys,
                keys_paths[party],
            )
        audit_dir = root / "auditor"
        if pki.auditor is None:
            raise InvariantError("the demo PKI issues an auditor certificate")
        with LinkageClient(target, tls=pki.tls_files(pki.auditor)) as auditor:
            stages.run("auditor fetches the audit log", lambda: _fetch_audit(auditor, audit_dir))
        report = stages.run(
            "auditor verifies it",
            lambda: verify_audit_log(
                audit_dir / "audit.jsonl",
                load_public_key(audit_dir / "lu-audit-key.pem"),
                manifests=[manifests[p] for p in PARTIES],
                party_keys={
                    p: load_public_key(department_dirs[p] / "signing-key.pem.pub") for p in PARTIES
                },
            ),
        )
    finally:
        server.stop(1.0)
        server.close_storage()

    quality = link_quality(synth.truth, keys_paths)
    total = time.perf_counter() - started
    print()
    print(
        f"link quality against the synthetic truth ({args.difficulty}, {args.records:,} records each):"
    )
    print(
        f"  precision {quality.precision:.4f}  recall {quality.recall:.4f}  F1 {quality.f1:.4f}"
        f"  ({quality.correct:,} of {quality.true_pairs:,} true pairs found, "
        f"{quality.linked_pairs:,} linked)"
    )
    cut = "match probability" if status.threshold_method.startswith("fellegi") else "Dice threshold"
    print(
        f"  run {status.run_id}: {status.comparisons:,} comparisons, {status.cluster_count:,} link keys, "
        f"{status.linked_record_count:,} records linked, {cut} "
        f"{status.threshold or 0.0:.3f} ({status.threshold_method})"
    )
    verdict = "PASSED" if report.passed else f"FAILED ({len(report.failures)} failure(s))"
    print(
        f"audit: {verdict} - {report.entry_count} signed entries; chain, rules, retention, "
        f"{len(PARTIES)} manifests and the wire allow-list checked "
        f"(bloomlink audit verify --log {audit_dir / 'audit.jsonl'} --public-key "
        f"{audit_dir / 'lu-audit-key.pem'})"
    )
    print(f"total {total:.1f} s")
    print()
    print("where everything is:")
    print(f"  certificates          {root / 'certs'}")
    print(f"  linkage unit state    {root / 'linkage-unit'} (SQLite, payloads, audit log)")
    print(f"  synthetic extracts    {root / 'synth'} (truth.csv is the answer key)")
    print(f"  auditor               {audit_dir} (audit log, signed head, LU public key)")
    print(f"  linkage secret        {secret_path} (mode 0600)")
    for party in PARTIES:
        print(
            f"  {party:<21} {department_dirs[party]} (encoded file, private positions, link keys)"
        )
    return 0 if report.passed else int(ExitCode.AUDIT_FAILED)


def _fetch_audit(client: LinkageClient, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log, head = client.fetch_audit_log()
    for name, data in (
        ("audit.jsonl", log),
        ("audit.jsonl.head", head),
        ("lu-audit-key.pem", client.audit_public_key()),
    ):
        with atomic_output(out / name, mode=0o644) as handle:
            handle.write(data)

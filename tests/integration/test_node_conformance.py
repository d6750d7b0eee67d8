"""A second client, in Node.js, written from docs/protocol.md and the .proto alone, against a
real linkage unit on loopback with real certificates, manifests required and the parties'
manifest keys registered: health, projects (defaults, a link model), a refusal per role when
the call starts, refusals at the upload header (schema, KCV) with their trailers, a resumed
upload after a client cancel and an idle cut, the run, what a party sees of it, link keys
with their digest, the audited-call rate limit, and the whole audit log and a member's view
(tests/interop/conformance.mjs).

The LU's limits are set here explicitly, not left to defaults the session would depend on:
a 4 s stream idle cut (the session waits one out) and an audited-call burst of 40 refilled
at 6 a minute (the non-member spends its burst on refused probes; every other identity's
session stays well inside it).

Afterwards the Python side checks what the Node client made: its manifests verify under the
parties' keys, `audit verify` passes on the log with them and on the member's view it
fetched (as that member's view), and the keys it saved are the ones the linkage unit holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from auditor.verify import AuditView, verify_audit_log
from linkage_unit.pki import CertificateSet
from linkage_unit.server import LinkageUnitServer
from protocol.clk_file import ClkFileWriter
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.manifest import read_manifest, verify_manifest
from protocol.signing import create_signing_key, load_public_key, public_key_pem
from tests.interop.node import install_packages, run_script
from tests.service_helpers import KCV, SCHEMA_FINGERPRINT, planted_party_clks

pytestmark = pytest.mark.integration

PROJECT = "interop"
PARTIES = ("moj", "dfe")
# A grouped (format 2) project, so the client parses a header of 204 + 192 x 3 bytes.
LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=128),
        GroupLayout(name="birth", bits=64),
        GroupLayout(name="postcode", bits=64),
    )
)
SENSITIVE = ["zoe", "obrien", "1985-12-03", "SW1A 1AA"]
IDLE_SECONDS = 4
AUDITED_CALL_BURST = 40


def _encoded_files(directory: Path) -> tuple[dict[str, Path], list[list[int]]]:
    clks = planted_party_clks(list(PARTIES), seed=18, records=300, shared=60)
    paths = {}
    for party in PARTIES:
        paths[party] = directory / f"{party}.clk"
        with ClkFileWriter(
            paths[party],
            project_id=PROJECT,
            schema_fingerprint=SCHEMA_FINGERPRINT,
            kcv=KCV,
            clk_bits=LAYOUT.total_bits,
            layout=LAYOUT,
        ) as writer:
            writer.write(clks[party])
    first, second = (clks[party] for party in PARTIES)
    rows = {row.tobytes(): position for position, row in enumerate(second)}
    truth = [[a, rows[row.tobytes()]] for a, row in enumerate(first) if row.tobytes() in rows]
    assert len(truth) == 60
    return paths, truth


def test_the_node_client_conforms(
    pki: CertificateSet,
    start_server: Callable[..., LinkageUnitServer],
    tmp_path: Path,
) -> None:
    install_packages()
    files, truth = _encoded_files(tmp_path)
    signing, public = {}, {}
    for party in PARTIES:
        signing[party] = tmp_path / f"{party}-signing.pem"
        public[party] = tmp_path / f"{party}-signing.pub"
        public[party].write_bytes(public_key_pem(create_signing_key(signing[party])))
    server = start_server(
        require_manifest=True,
        party_keys=public,
        stream_idle_seconds=IDLE_SECONDS,
        audited_call_burst=AUDITED_CALL_BURST,
        audited_calls_per_minute=6,
    )

    def pair(name: str) -> dict[str, str]:
        if name == "operator":
            chosen = pki.operator
        elif name == "auditor":
            assert pki.auditor is not None
            chosen = pki.auditor
        else:
            chosen = pki.parties[name]
        return {"cert": str(chosen.certificate), "key": str(chosen.private_key)}

    out = tmp_path / "node-out"
    config = {
        "target": f"127.0.0.1:{server.port}",
        "ca": str(pki.ca_certificate),
        "identities": {name: pair(name) for name in ("operator", "auditor", *PARTIES, "hmrc")},
        "parties": {
            party: {"encoded": str(files[party]), "signing_key": str(signing[party])}
            for party in PARTIES
        },
        "non_member": "hmrc",
        "project_id": PROJECT,
        "defaults_project_id": "interop-defaults",
        "dedupe_project_id": "interop-dedupe",
        "stream_idle_seconds": IDLE_SECONDS,
        "audited_call_burst": AUDITED_CALL_BURST,
        "truth": truth,
        "sensitive_strings": SENSITIVE,
        "out": str(out),
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config), "utf-8")

    done = run_script("conformance.mjs", str(config_path))
    print(done.stdout)  # the checks, one per line (pytest -s shows them)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert all(step["ok"] for step in report)
    names = " / ".join(step["name"] for step in report)
    for expected in (
        "health",
        "create project",
        "dedupe-only",
        "refused per role when the call starts",
        "another schema (CompatibilityError",
        "the client cancels keeps",
        "cut by the LU's idle watchdog",
        "resume from before the committed offset",
        "under another key is refused",
        "READY",
        "StartRun",
        "party view",
        "count and digest",
        "rate limit",
        "the whole log verifies",
        "a member's project view verifies",
    ):
        assert expected in names, names

    # What the Node client signed verifies here, under each party's registered key.
    manifests = []
    for party in PARTIES:
        signed = read_manifest(out / f"{party}.manifest.json")
        verify_manifest(signed, expected_public_key=load_public_key(public[party]))
        manifests.append(signed)
    # The auditor's verification of the whole log, with the client's manifests.
    assert server.audit_log is not None
    audit = verify_audit_log(
        server.audit_log.path,
        load_public_key(server.audit_log.public_key_pem()),
        manifests=manifests,
        party_keys={party: load_public_key(public[party]) for party in PARTIES},
    )
    assert audit.passed, audit.to_text()
    # The view the first party fetched, checked as that party's view of the project.
    first = PARTIES[0]
    view = verify_audit_log(
        out / f"{first}.view.jsonl",
        load_public_key(server.audit_log.public_key_pem()),
        view=AuditView(project_id=PROJECT, party=first),
    )
    assert view.passed, view.to_text()
    # The keys the client saved are the ones the linkage unit released.
    for party in PARTIES:
        held = [
            f"{position},{key}\n"
            for rows in server.storage.iter_link_keys(PROJECT, party, batch_size=1000)
            for position, key in zip(rows.positions, rows.link_keys, strict=True)
        ]
        assert (out / f"{party}.keys.csv").read_text("ascii") == "".join(held)
    assert np.unique([pair[0] for pair in truth]).size == len(truth)

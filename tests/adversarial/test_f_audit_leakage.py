"""Group F, audit and leakage (security.md section 6, cases 30-34).

Case 30 tampers with the real signed log a real mutual-TLS LU wrote and an auditor fetched
over the wire. Case 32 seeds leaks into files made by the real encoder and runs the
department's own pre-send path (``vouch_for_encoded_file``, what ``bloomlink encode`` and
``submit`` use) and the scanner's unkeyed-encoding check. The linkage-unit side of the same
guarantee (no free-text field on the wire) is case 17 in group C.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import pickle
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.verify import verify_audit_log
from party.leak_scan import scan_encoded_file
from party.manifest import manifest_path_for, vouch_for_encoded_file
from party.mapping import shipped_mapping
from party.positions_file import read_positions
from party.sensitive_strings import sensitive_strings
from protocol.clk_file import ClkFileWriter, read_clks, read_header
from protocol.errors import AuditError, InvalidRequestError, NotFoundError, PermissionDeniedError
from protocol.messages import ProjectSettings, RunState
from protocol.schema import default_schema
from protocol.secret import LinkageSecret, read_secret, write_secret
from protocol.signing import load_public_key
from tests.adversarial.conftest import (
    MOJ_HEADER,
    TEST_SECRET,
    create_project,
    encode_rows,
    raw_stub,
    send,
    signed_manifest,
    upload_all,
    upload_messages,
)
from tests.service_helpers import planted_party_clks

pytestmark = pytest.mark.integration

CANARY_FORENAME = "Quillonwyth"
CANARY_SURNAME = "Zabrowskaya"
CANARY_DOB = "17/03/1983"


def _needles(clk: bytes) -> list[bytes]:
    values = [
        CANARY_FORENAME,
        CANARY_SURNAME,
        CANARY_SURNAME.lower(),
        CANARY_SURNAME.upper(),
        "1983-03-17",
        CANARY_DOB,
    ]
    needles = [value.encode("utf-8") for value in values] + [
        value.encode("utf-16-le") for value in values
    ]
    needles += [base64.b64encode(value.encode()) for value in values]
    needles += [
        TEST_SECRET.hex().encode(),
        clk.hex().encode(),
        clk[:16],
        base64.b64encode(clk)[:24],
    ]
    return needles


def test_case_31_no_canary_value_clk_or_key_in_logs_audit_or_error_details(
    start_server, connect, pki, tmp_path: Path, caplog
) -> None:
    """Case 31: a canary person is encoded and uploaded, then refusals are provoked (a digest
    mismatch, an upload as another party, a stale manifest, a fetch of someone else's keys). Neither the audit
    file, nor any log record at DEBUG, nor any error message contains the canary's names (UTF-8,
    UTF-16, base64, case variants), date of birth, the linkage secret or the canary's CLK."""
    caplog.set_level(logging.DEBUG)
    rows = [
        ("c1", CANARY_FORENAME, CANARY_SURNAME, CANARY_DOB, "Female", "SW1A 1AA"),
        ("c2", "Ann", "Lee", "01/02/1990", "Female", "M1 1AE"),
    ]
    by_id, _ = encode_rows(tmp_path / "moj", "moj", rows, project_id="p1")
    server = start_server()  # the default JSON-lines audit file in the data directory
    connect(server, "operator").create_project(
        ProjectSettings(
            project_id="p1",
            members=("moj", "dfe"),
            schema_fingerprint=default_schema().fingerprint,
            layout=default_schema().layout,
        )
    )
    errors: list[str] = []
    path = tmp_path / "moj" / "moj.clk"
    messages = upload_messages(path, "moj", chunk=64)
    messages[0].header.payload_sha256 = bytes(32)
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(InvalidRequestError) as digest:
        send(stub, messages)
    errors.append(str(digest.value))
    moj = connect(server, "moj")
    with pytest.raises(PermissionDeniedError) as other_party:
        moj.upload_file(path, party_id="dfe")
    errors.append(str(other_party.value))
    stale = signed_manifest(
        path,
        "moj",
        Ed25519PrivateKey.generate(),
        created_at=(datetime.now(UTC) - timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    with pytest.raises(InvalidRequestError) as stale_manifest:
        moj.upload_file(path, party_id="moj", manifest=stale)
    errors.append(str(stale_manifest.value))
    moj.upload_file(path, party_id="moj")
    with pytest.raises(NotFoundError) as not_found:
        moj.fetch_link_keys("p1", "dfe")
    errors.append(str(not_found.value))
    server.stop(0)
    haystacks = {
        "audit": (server.config.data_dir / "audit.jsonl").read_bytes(),
        "logs": "\n".join(
            record.getMessage() + str(record.exc_info or "") for record in caplog.records
        ).encode(),
        "errors": "\n".join(errors).encode(),
    }
    assert haystacks["audit"] and haystacks["errors"]
    for name, haystack in haystacks.items():
        found = [needle for needle in _needles(by_id["c1"]) if needle in haystack]
        assert not found, f"{name} leaks {len(found)} canary form(s)"


def _fetched_log(start_server, connect, tmp_path: Path):
    """A finished two-party project on a real LU; the auditor fetches its log and head over
    the wire. Returns (server, log lines, LU public key)."""
    server = start_server()
    create_project(connect(server, "operator"))
    upload_all(server, connect, tmp_path, planted_party_clks(["moj", "dfe"], seed=61, records=12))
    assert connect(server, "operator").wait_for_run("p1", timeout=30).run_state is (
        RunState.FINISHED
    )
    connect(server, "moj").fetch_link_keys("p1", "moj")
    auditor = connect(server, "auditor")
    log, head = auditor.fetch_audit_log()
    (tmp_path / "lu.pem").write_bytes(auditor.audit_public_key())
    (tmp_path / "fetched.jsonl.head").write_bytes(head)
    return server, log.splitlines(keepends=True), load_public_key(tmp_path / "lu.pem")


def _chain_failure(tmp_path: Path, name: str, lines: list[bytes], key) -> tuple[int, str]:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(lines))
    path.with_name(path.name + ".head").write_bytes((tmp_path / "fetched.jsonl.head").read_bytes())
    report = verify_audit_log(path, key, check_wire=False)
    chain = [check for check in report.failures if check.name == "chain"]
    assert chain, f"{name}: tampering went unnoticed"
    return chain[0].entry, chain[0].message


def test_case_30_tampered_deleted_reordered_or_truncated_entries_fail_at_that_index(
    start_server, connect, tmp_path: Path
) -> None:
    """Case 30: in the log a real LU wrote (fetched by the auditor over mTLS), editing one
    entry, deleting one, swapping two or cutting the last one off fails verification at that
    entry (edited / deleted / reordered / truncated against the signed head). The untouched
    log passes, and the LU itself refuses to start on its own edited log, naming the entry."""
    server, lines, key = _fetched_log(start_server, connect, tmp_path)
    target = next(
        number for number, line in enumerate(lines) if b'"event":"upload_committed"' in line
    )
    assert 2 <= target < len(lines) - 2
    path = tmp_path / "fetched.jsonl"
    path.write_bytes(b"".join(lines))
    assert verify_audit_log(path, key, check_wire=False).passed
    edited = list(lines)
    edited[target] = edited[target].replace(b'"record_count":12', b'"record_count":13')
    assert edited[target] != lines[target]
    deleted = lines[:target] + lines[target + 1 :]
    swapped = lines[:target] + [lines[target + 1], lines[target]] + lines[target + 2 :]
    for name, tampered, index, word in (
        ("edited", edited, target, "edited"),
        ("deleted", deleted, target, "deleted"),
        ("reordered", swapped, target, "reordered"),
        ("truncated", lines[:-1], len(lines) - 1, "head"),
    ):
        entry, message = _chain_failure(tmp_path, name, tampered, key)
        assert entry == index and word in message, (name, entry, message)
    # The LU re-verifies its own log at start and will not append to a damaged one.
    server.stop(0)
    server.audit_log.close()
    own = server.audit_log.path
    own.write_bytes(own.read_bytes().replace(b'"record_count":12', b'"record_count":13', 1))
    with pytest.raises(AuditError, match=f"audit entry {target}"):
        start_server(data_dir=server.config.data_dir)


_FORENAMES = ("Ann", "Bilal", "Chloe", "Dmitri", "Eve", "Farah", "Gareth", "Hana")
_SURNAMES = ("Lee", "Okafor", "Nowak", "Patel", "Quinn", "Rossi", "Singh", "Tran", "Ueda")
_LEAK_ROWS = [("c1", CANARY_FORENAME, CANARY_SURNAME, CANARY_DOB, "Female", "SW1A 1AA")] + [
    (
        f"r{number}",
        _FORENAMES[number % 8],
        _SURNAMES[number % 9],
        f"{1 + number % 28:02d}/{1 + number % 12:02d}/{1950 + number}",
        ("Female", "Male")[number % 2],
        f"M{1 + number % 9} {number % 10}AE",
    )
    for number in range(59)
]


def _seeded_copy(source: Path, target: Path, leak: bytes, *, position: int = 7) -> Path:
    """``source`` with ``leak`` written into one CLK, in a valid container (header digest
    recomputed), as a broken or careless encoder would write it."""
    header = read_header(source)
    _, clks = read_clks(source)
    flat = clks.view(np.uint8).reshape(clks.shape[0], -1).copy()
    flat[position, 3 : 3 + len(leak)] = np.frombuffer(leak, dtype=np.uint8)
    with ClkFileWriter(
        target,
        project_id=header.project_id,
        schema_fingerprint=header.schema_fingerprint,
        kcv=header.kcv,
        clk_bits=header.clk_bits,
    ) as writer:
        writer.write(flat)
    return target


@pytest.mark.parametrize(
    ("name", "leak", "kind"),
    [
        ("surname-utf-8", CANARY_SURNAME.encode("utf-8"), "raw-utf-8"),
        ("surname-utf-16", CANARY_SURNAME.encode("utf-16-le"), "raw-utf-16-le"),
        ("dob-base64", base64.b64encode(b"1983-03-17"), "base64"),
        ("name-md5", hashlib.md5(b"zabrowskaya").digest(), "md5-raw"),
        ("name-sha256", hashlib.sha256(b"zabrowskaya").hexdigest().encode(), "sha256-hex"),
    ],
)
def test_case_32_the_department_scan_blocks_a_seeded_payload(
    tmp_path: Path, name: str, leak: bytes, kind: str
) -> None:
    """Case 32: a file from the real encoder with one leak seeded into one CLK (a raw
    surname in UTF-8 or UTF-16, a base64 date of birth, an MD5 or SHA-256 of the normalised
    surname) -> the pre-send scan refuses it: AuditError naming the kind, no manifest, so
    ``submit`` will not send it. The clean file gets its manifest."""
    encode_rows(tmp_path, "moj", _LEAK_ROWS)
    strings = sensitive_strings(tmp_path / "moj.csv", shipped_mapping("moj"), default_schema())
    key = Ed25519PrivateKey.generate()
    clean = tmp_path / "moj.clk"
    vouch_for_encoded_file(
        clean, signing_key=key, party="moj", strings=strings, software_version="0.1.0"
    )
    assert manifest_path_for(clean).exists()
    seeded = _seeded_copy(clean, tmp_path / f"{name}.clk", leak)
    with pytest.raises(AuditError, match=kind) as caught:
        vouch_for_encoded_file(
            seeded, signing_key=key, party="moj", strings=strings, software_version="0.1.0"
        )
    assert not manifest_path_for(seeded).exists()
    assert CANARY_SURNAME.lower() not in str(caught.value).lower()


def _positions(directory: Path) -> dict[int, str]:
    return {
        position: record_id
        for _, record_id, position in read_positions(directory / "moj.positions.csv")
    }


def test_case_32_an_unkeyed_encoding_is_flagged(tmp_path: Path) -> None:
    """Case 32: CLKs made under a known default key (all-zero secret) are flagged
    ``unkeyed-encoding`` against their default-key re-encoding (mean Dice near 1); the same
    records under the project's real secret pass (Dice near background)."""
    default, _ = encode_rows(tmp_path / "default", "moj", _LEAK_ROWS, secret=bytes(32))
    encode_rows(tmp_path / "keyed", "moj", _LEAK_ROWS)

    def reencoder(directory: Path):
        ids = _positions(directory)
        return lambda positions: np.stack(
            [np.frombuffer(default[ids[int(p)]], dtype=np.uint64) for p in positions]
        )

    def kinds(directory: Path) -> list[str]:
        report = scan_encoded_file(
            directory / "moj.clk",
            [],
            unkeyed_reencoder=reencoder(directory),
            rng=np.random.default_rng(5),
        )
        return [finding.kind for finding in report.findings]

    assert kinds(tmp_path / "default") == ["unkeyed-encoding"]
    assert kinds(tmp_path / "keyed") == []


def test_case_32_bloomlink_scan_flags_a_default_key_file_from_its_extract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 32 through the CLI: ``bloomlink scan --extract`` re-encodes a sample of the
    department's records under the known all-zero key (through the private positions file):
    a file made under that key is refused as ``unkeyed-encoding``; the keyed file is clean."""
    from bloomlink import cli
    from bloomlink.exit_codes import ExitCode

    encode_rows(tmp_path / "default", "moj", _LEAK_ROWS, secret=bytes(32))
    encode_rows(tmp_path / "keyed", "moj", _LEAK_ROWS)

    def scan(directory: Path) -> tuple[int, str]:
        argv = ["scan", "--encoded", str(directory / "moj.clk")]
        argv += ["--extract", str(directory / "moj.csv"), "--layout", "moj"]
        argv += ["--positions", str(directory / "moj.positions.csv")]
        code = cli.main(argv)
        return code, capsys.readouterr().out

    code, out = scan(tmp_path / "default")
    assert code == ExitCode.AUDIT_FAILED and "LEAK  unkeyed-encoding" in out
    code, out = scan(tmp_path / "keyed")
    assert code == ExitCode.OK and "clean" in out


def test_case_33_the_secret_is_never_printed_pickled_or_left_readable(tmp_path: Path) -> None:
    """Case 33: the linkage secret's repr and str hide it, it refuses to be pickled, its file is
    created owner-only (0600) and an error about it does not contain the material."""
    secret = LinkageSecret(TEST_SECRET)
    assert TEST_SECRET.hex() not in repr(secret) and TEST_SECRET.hex() not in str(secret)
    with pytest.raises(Exception) as caught:
        pickle.dumps(secret)
    assert TEST_SECRET.hex() not in str(caught.value)
    path = write_secret(tmp_path / "secret", token_bytes=lambda count: TEST_SECRET[:count])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_secret(path) == secret
    path.write_text("not a secret file\n" + TEST_SECRET.hex(), encoding="ascii")
    with pytest.raises(Exception) as bad:
        read_secret(path)
    assert TEST_SECRET.hex() not in str(bad.value)


def test_case_34_positions_are_shuffled_not_row_order(tmp_path: Path) -> None:
    """Case 34: record ids never cross the wire; what does (a CLK's position) is a uniform
    shuffle: positions are not row order and their rank correlation with it is near zero."""
    rows = [
        (f"r{i:04d}", f"Name{i}", "Lee", "01/02/1990", "Female", "SW1A 1AA") for i in range(400)
    ]
    encode_rows(tmp_path, "moj", rows)
    lines = list(read_positions(tmp_path / "moj.positions.csv"))
    positions = np.array([position for _, _, position in lines])
    assert len(lines) == 400 and MOJ_HEADER[0] == "person_id"
    assert not np.array_equal(positions, np.arange(400))
    assert abs(np.corrcoef(positions, np.arange(400))[0, 1]) < 0.2

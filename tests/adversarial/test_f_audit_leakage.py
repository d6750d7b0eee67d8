"""Group F, audit and leakage (security.md section 6, cases 30-34).

Pending the audit log (branch ``audit``, being built now): case 30, tampering with,
deleting or reordering an audit entry must fail verification at that index.
Not built yet: case 32, the department-side leak scanner (security.md section 4.4) does not
exist in the tree; docs/adversarial.md lists it as open work. The linkage-unit side of the
same guarantee (no free-text field on the wire) is case 17 in group C.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from protocol.messages import ProjectSettings
from protocol.schema import default_schema
from protocol.secret import LinkageSecret, read_secret, write_secret
from tests.adversarial.conftest import (
    MOJ_HEADER,
    TEST_SECRET,
    encode_rows,
    raw_stub,
    send,
    upload_messages,
)

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
    mismatch, an upload as another party, a fetch of someone else's keys). Neither the audit
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
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=default_schema().fingerprint
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
    lines = (tmp_path / "moj.positions.csv").read_text().splitlines()[1:]
    positions = np.array([int(line.split(",")[1]) for line in lines])
    assert len(lines) == 400 and MOJ_HEADER[0] == "person_id"
    assert not np.array_equal(positions, np.arange(400))
    assert abs(np.corrcoef(positions, np.arange(400))[0, 1]) < 0.2

"""Group B, schema / key / protocol binding (security.md section 6, cases 8-13), against a
real mutual-TLS server on 127.0.0.1:0. The manifest cases (10, 12) run with the real signed
audit log and ``require_manifest`` on, as in production: every refusal must leave an
``upload_refused`` entry with its reason code and store nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.verify import verify_audit_log
from protocol import serde
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    InvalidRequestError,
    PermissionDeniedError,
)
from protocol.keys import key_check_value
from protocol.messages import RunState, UploadState
from protocol.secret import LinkageSecret
from protocol.signing import public_key_pem
from tests.adversarial.conftest import (
    REPOSITORY,
    audit_events,
    create_project,
    encode_rows,
    raw_stub,
    send,
    signed_manifest,
    upload_all,
    upload_messages,
)
from tests.service_helpers import MemoryAuditSink, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


@pytest.fixture
def audited(start_server, connect):
    audit = MemoryAuditSink()
    server = start_server(audit=audit)
    create_project(connect(server, "operator"))
    return server, audit


def _refused(server, connect, audit, tmp_path, aspect, clks=None, **files) -> None:
    """MoJ uploads; DfE's upload is refused when its header arrives (CompatibilityError
    naming DfE and the aspect): nothing of it stored, no run, no comparison, audited."""
    clks = clks or planted_party_clks(["moj", "dfe"], seed=21, records=10, shared=4)
    upload_all(server, connect, tmp_path, {"moj": clks["moj"]}, moj=files.get("moj", {}))
    with pytest.raises(CompatibilityError) as caught:
        upload_all(server, connect, tmp_path, {"dfe": clks["dfe"]}, dfe=files.get("dfe", {}))
    assert (caught.value.party, caught.value.aspect) == ("dfe", aspect)
    assert server.storage.upload("p1", "dfe") is None
    status = connect(server, "operator").project_status("p1")
    assert status.run_state is RunState.WAITING_FOR_UPLOADS and status.comparisons == 0
    assert not audit.named("run_started")
    assert audit.named("upload_refused") == [{"party": "dfe", "reason": aspect}]


def test_case_8_schema_mismatch_refuses_before_any_comparison(audited, connect, tmp_path) -> None:
    """Case 8: a party encoded under another schema (fingerprint) -> its upload is refused
    when the header arrives, naming the party and aspect schema_fingerprint; nothing stored,
    zero comparisons, no run_started audit event. (The run checks the same again.)"""
    server, audit = audited
    _refused(
        server, connect, audit, tmp_path, "schema_fingerprint",
        dfe={"schema_fingerprint": bytes(32)},
    )  # fmt: skip


def test_case_9_kcv_mismatch_refuses_the_run(audited, connect, tmp_path) -> None:
    """Case 9: a party encoded under another linkage secret (KCV) than the party that
    uploaded first -> refused at the header, aspect kcv ("a different linkage secret?")."""
    server, audit = audited
    _refused(server, connect, audit, tmp_path, "kcv", dfe={"kcv": bytes(16)})


def test_case_9_bit_density_far_from_the_others_refuses_the_run(audited, connect, tmp_path) -> None:
    """Case 9 (statistical check): same KCV but a party whose mean bit density is far from
    the others' (different encoder settings) -> REFUSED, aspect bit_density."""
    server, audit = audited
    clks = planted_party_clks(["moj", "dfe"], seed=22, records=20, shared=0)
    clks["dfe"] = clks["dfe"] & (clks["dfe"] >> 1) & (clks["dfe"] >> 2)  # density 0.5 -> ~0.12
    upload_all(server, connect, tmp_path, clks)
    status = connect(server, "operator").wait_for_run("p1", timeout=20)
    assert status.run_state is RunState.REFUSED and status.check_aspect == "bit_density"
    assert status.comparisons == 0


def test_case_10_replayed_upload_is_an_idempotent_no_op(audited, connect, tmp_path) -> None:
    """Case 10: replaying the same upload (same header and bytes) reports COMPLETE and is
    never counted twice: one upload_committed event, one payload."""
    server, audit = audited
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=23)["moj"], project_id="p1"
    )
    moj = connect(server, "moj")
    for _ in range(3):
        assert moj.upload_file(path, party_id="moj").state is UploadState.COMPLETE
    assert len(audit.named("upload_committed")) == 1
    assert len(list((server.config.data_dir / "payloads" / "p1").glob("*.clk"))) == 1


def test_case_10_a_manifest_nonce_vouches_for_one_upload_only(
    start_server, connect, pki, tmp_path
) -> None:
    """Case 10 (manifests): re-sending an upload with the manifest that vouched for it is a
    no-op (one upload_committed). A different manifest reusing that nonce - for another
    project's upload, or for the same upload - is ALREADY_EXISTS, audited as upload_refused
    (reason manifest_nonce), and stores nothing."""
    server = start_server(require_manifest=True)
    operator = connect(server, "operator")
    create_project(operator, project_id="p1")
    create_project(operator, project_id="p2")
    key = Ed25519PrivateKey.generate()
    clks = planted_party_clks(["moj"], seed=27)["moj"]
    first = write_clk_file(tmp_path / "p1.clk", clks, project_id="p1")
    vouched = signed_manifest(first, "moj", key)
    moj = connect(server, "moj")
    for _ in range(2):
        assert (
            moj.upload_file(first, party_id="moj", manifest=vouched).state is UploadState.COMPLETE
        )
    assert len(audit_events(server, "upload_committed")) == 1

    other = write_clk_file(tmp_path / "p2.clk", clks[::-1].copy(), project_id="p2")
    reused = signed_manifest(other, "moj", key, nonce=vouched.manifest.nonce)
    with pytest.raises(AlreadyExistsError, match="nonce"):
        moj.upload_file(other, party_id="moj", manifest=reused)
    assert server.storage.upload("p2", "moj") is None
    # The real client skips a COMPLETE upload, so the same bytes go by a raw stub.
    again = signed_manifest(first, "moj", key, nonce=vouched.manifest.nonce)
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel:
        resent = send(stub, upload_messages(first, "moj", manifest=vouched))
        assert serde.upload_progress_from_proto(resent).state is UploadState.COMPLETE
        with pytest.raises(AlreadyExistsError, match="nonce"):
            send(stub, upload_messages(first, "moj", manifest=again))
    refused = audit_events(server, "upload_refused")
    assert [event["reason"] for event in refused] == ["manifest_nonce", "manifest_nonce"]
    assert len(audit_events(server, "upload_committed")) == 1
    # A fresh manifest (new nonce) for the p2 file is accepted.
    fresh = signed_manifest(other, "moj", key)
    assert moj.upload_file(other, party_id="moj", manifest=fresh).state is UploadState.COMPLETE
    # The auditor's verifier accepts the refusals as the LU doing its job, and notes them.
    log = server.audit_log
    report = verify_audit_log(log.path, log._key.public_key(), check_wire=False)
    assert report.passed, [check.message for check in report.failures]
    notes = [check.message for check in report.checks if check.name == "uploads"]
    assert len(notes) == 2 and all("manifest_nonce" in note for note in notes)


def test_case_11_cross_project_kcv_refuses_the_run(audited, connect, tmp_path) -> None:
    """Case 11: a file encoded for another project carries that project's KCV (the KCV binds
    the project id), so relabelling it for this project is refused at the header (kcv)."""
    server, audit = audited
    secret = LinkageSecret(bytes(range(32)))
    this, other = (key_check_value(secret, project_id=p) for p in ("p1", "p2"))
    assert this != other
    clks = planted_party_clks(["moj", "dfe"], seed=24, records=10, shared=4)
    _refused(server, connect, audit, tmp_path, "kcv", clks, moj={"kcv": this}, dfe={"kcv": other})


def test_case_11_upload_to_a_project_the_party_is_not_in_is_not_found(
    audited, connect, tmp_path
) -> None:
    """Case 11: a header naming a project the caller is not a member of looks exactly like a
    project that does not exist (NOT_FOUND); nothing is stored."""
    server, _ = audited
    path = write_clk_file(
        tmp_path / "h.clk", planted_party_clks(["hmrc"], seed=25)["hmrc"], project_id="p1"
    )
    from protocol.errors import NotFoundError

    with pytest.raises(NotFoundError):
        connect(server, "hmrc").upload_file(path, party_id="hmrc")
    assert server.storage.upload("p1", "hmrc") is None


def test_case_12_header_party_must_be_the_certificate_identity(audited, connect, tmp_path) -> None:
    """Case 12 (the mTLS half): MoJ's certificate uploading a header that says DfE ->
    PERMISSION_DENIED; nothing stored for DfE."""
    server, _ = audited
    path = write_clk_file(
        tmp_path / "d.clk", planted_party_clks(["dfe"], seed=26)["dfe"], project_id="p1"
    )
    with pytest.raises(PermissionDeniedError):
        connect(server, "moj").upload_file(path, party_id="dfe")
    assert server.storage.upload("p1", "dfe") is None


@pytest.fixture
def keyed_server(start_server, connect, tmp_path):
    """A production-like LU: manifests required, MoJ's and DfE's manifest keys registered
    (HMRC is a member with no registered key)."""
    keys = {party: Ed25519PrivateKey.generate() for party in ("moj", "dfe", "hmrc")}
    registered = {}
    for party in ("moj", "dfe"):
        registered[party] = tmp_path / f"{party}.pub"
        registered[party].write_bytes(public_key_pem(keys[party]))
    server = start_server(require_manifest=True, party_keys=registered)
    create_project(connect(server, "operator"), members=("moj", "dfe", "hmrc"))
    path = write_clk_file(
        tmp_path / "m.clk", planted_party_clks(["moj"], seed=28)["moj"], project_id="p1"
    )
    return server, keys, path


def _refused_for(server, connect, path, manifest, reason: str, who: str = "moj") -> None:
    with pytest.raises(PermissionDeniedError):
        connect(server, who).upload_file(path, party_id=who, manifest=manifest)
    assert server.storage.upload("p1", who) is None
    assert [event["reason"] for event in audit_events(server, "upload_refused")] == [reason]
    assert not audit_events(server, "upload_committed")


def test_case_12_manifest_signed_by_another_departments_key(keyed_server, connect) -> None:
    """Case 12: MoJ's upload with a manifest that names MoJ but is signed by DfE's key ->
    PERMISSION_DENIED (reason manifest_signature); the same file with MoJ's key succeeds."""
    server, keys, path = keyed_server
    _refused_for(
        server, connect, path, signed_manifest(path, "moj", keys["dfe"]), "manifest_signature"
    )
    good = signed_manifest(path, "moj", keys["moj"])
    assert connect(server, "moj").upload_file(path, party_id="moj", manifest=good).state is (
        UploadState.COMPLETE
    )


def test_case_12_manifest_with_an_invalid_signature(keyed_server, connect) -> None:
    """Case 12: a manifest whose signature does not verify (one bit flipped) ->
    PERMISSION_DENIED (reason manifest_signature); nothing stored."""
    server, keys, path = keyed_server
    signed = signed_manifest(path, "moj", keys["moj"])
    broken = type(signed)(
        manifest=signed.manifest,
        signature=bytes([signed.signature[0] ^ 1]) + signed.signature[1:],
        public_key=signed.public_key,
    )
    _refused_for(server, connect, path, broken, "manifest_signature")


def test_case_12_manifest_party_is_not_the_mtls_identity(keyed_server, connect) -> None:
    """Case 12: MoJ's certificate and header, with DfE's validly signed manifest for the same
    bytes -> PERMISSION_DENIED (reason manifest_party)."""
    server, keys, path = keyed_server
    _refused_for(server, connect, path, signed_manifest(path, "dfe", keys["dfe"]), "manifest_party")


def test_case_12_party_without_a_registered_key_is_refused(keyed_server, connect, tmp_path) -> None:
    """Case 12: once the operator registers manifest keys, a member with none registered
    cannot vouch for an upload -> PERMISSION_DENIED (reason manifest_key)."""
    server, keys, _ = keyed_server
    path = write_clk_file(
        tmp_path / "h.clk", planted_party_clks(["hmrc"], seed=29)["hmrc"], project_id="p1"
    )
    _refused_for(
        server, connect, path, signed_manifest(path, "hmrc", keys["hmrc"]), "manifest_key", "hmrc"
    )


def test_case_12_a_header_edited_to_another_key_context_is_refused(
    keyed_server, connect, tmp_path
) -> None:
    """Case 12: MoJ's encoding for spine "people", its header edited to say no key context
    (the header digest is unkeyed: anyone can recompute it), sent to a one-off project with
    the genuine signed manifest. The context is signed, so the manifest no longer vouches for
    the header: INVALID_ARGUMENT (reason manifest_mismatch) naming the party and the aspect,
    never a value; nothing stored. Before the manifest bound it, this upload was taken."""
    server, keys, _ = keyed_server
    clks = planted_party_clks(["moj"], seed=30)["moj"]
    spined = write_clk_file(tmp_path / "s.clk", clks, project_id="p1", key_context="spine:people")
    manifest = signed_manifest(spined, "moj", keys["moj"])
    assert manifest.manifest.key_context == "spine:people"
    edited = write_clk_file(tmp_path / "e.clk", clks, project_id="p1")
    with pytest.raises(InvalidRequestError) as caught:
        connect(server, "moj").upload_file(edited, party_id="moj", manifest=manifest)
    assert "party moj's upload manifest disagrees with its header on key_context;" in (
        caught.value.message
    )
    assert "people" not in caught.value.message
    assert server.storage.upload("p1", "moj") is None
    assert [event["reason"] for event in audit_events(server, "upload_refused")] == [
        "manifest_mismatch"
    ]
    assert not audit_events(server, "upload_committed")
    # The same file unedited, with a manifest stating no context, is taken: the project
    # joins no spine; the committed entry records no spine.
    good = signed_manifest(edited, "moj", keys["moj"])
    assert connect(server, "moj").upload_file(edited, party_id="moj", manifest=good).state is (
        UploadState.COMPLETE
    )
    assert "spine" not in audit_events(server, "upload_committed")[0]


_ENCODE_IN_CHILD = """
import sys
from pathlib import Path
from tests.adversarial.conftest import encode_rows
rows = [tuple(line.split("|")) for line in sys.argv[2].split(";")]
by_id, _ = encode_rows(Path(sys.argv[1]), "moj", rows)
print(";".join(f"{key}={value.hex()}" for key, value in sorted(by_id.items())))
"""

_ROWS = [
    ("r1", "Zoë", "O'Brien", "29/02/2000", "Female", "sw1a 1aa"),
    ("r2", "İsmail", "Straße", "01/01/1970", "Male", "M1 1AE"),
    ("r3", "Ольга", "李", "31/12/1999", "Female", "EH1 1YZ"),
]


def test_case_13_encoding_is_bit_identical_across_processes_locales_and_hash_seeds(
    tmp_path,
) -> None:
    """Case 13: the same records with the same test key encode bit-identically in this
    process and in child processes under other locales, time zones and hash seeds."""
    expected, _ = encode_rows(tmp_path / "here", "moj", _ROWS)
    argument = ";".join("|".join(row) for row in _ROWS)
    for number, environment in enumerate(
        (
            {"LC_ALL": "C", "LANG": "C", "PYTHONHASHSEED": "0", "TZ": "UTC"},
            {
                "LC_ALL": "tr_TR.UTF-8",
                "LANG": "tr_TR.UTF-8",
                "PYTHONHASHSEED": "4242",
                "TZ": "Asia/Kolkata",
                "PYTHONUTF8": "1",
            },
        )
    ):
        output = subprocess.run(
            [sys.executable, "-c", _ENCODE_IN_CHILD, str(tmp_path / f"child{number}"), argument],
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY), **environment},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        got = dict(item.split("=") for item in output.split(";"))
        assert got == {key: value.hex() for key, value in expected.items()}

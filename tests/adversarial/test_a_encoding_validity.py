"""Group A, encoding / data validity at the linkage unit (security.md section 6, cases 1-7),
against a real mutual-TLS server on 127.0.0.1:0.

Not applicable to this design, by construction:
- case 2 "bad base64": CLKs travel as protobuf ``bytes`` (binary), never base64 text;
- case 2 "padding bits set when l is not a multiple of 8": ``clk_bits`` must be a multiple of
  64 (protocol.clk_file.check_clk_bits), so there are no padding bits to set; a length that is
  not such a multiple is refused (``test_case_1_wrong_clk_length_is_invalid_argument``);
- case 4 "duplicate record ids within an upload": record ids never reach the linkage unit
  (only CLKs by position), so the check is the encoder's, tested here through ``encode_extract``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    InvalidRequestError,
    PreconditionError,
    RecordError,
)
from protocol.messages import RunState, UploadState
from protocol.pb import linkage_pb2 as pb
from tests.adversarial.conftest import (
    create_project,
    raw_stub,
    send,
    upload_all,
    upload_messages,
)
from tests.service_helpers import (
    CLK_BITS,
    KCV,
    SCHEMA_FINGERPRINT,
    MemoryAuditSink,
    planted_party_clks,
    write_clk_file,
)

pytestmark = pytest.mark.integration


def _header(**changes: object) -> pb.UploadRequest:
    values: dict[str, object] = {
        "project_id": "p1",
        "party_id": "moj",
        "format_version": 1,
        "schema_fingerprint": SCHEMA_FINGERPRINT,
        "kcv": KCV,
        "clk_bits": CLK_BITS,
        "record_count": 4,
        "payload_sha256": hashlib.sha256(b"x").digest(),
    }
    values.update(changes)
    return pb.UploadRequest(header=pb.UploadHeader(**values))


@pytest.fixture
def server(start_server, connect):
    audit = MemoryAuditSink()
    started = start_server(audit=audit)
    create_project(connect(started, "operator"))
    started.test_audit = audit
    return started


@pytest.mark.parametrize(
    "clk_bits", [1023, 1016, 0, 65536 + 64], ids=["1023", "127B", "0", "over-max"]
)
def test_case_1_wrong_clk_length_is_invalid_argument(server, pki, clk_bits) -> None:
    """Case 1 (and 7, bounds): a CLK length that is not a multiple of 64 in 64..65536 bits is
    refused at the header with INVALID_ARGUMENT; nothing is stored."""
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(InvalidRequestError):
        send(stub, [_header(clk_bits=clk_bits)])
    assert server.storage.upload("p1", "moj") is None


def test_case_1_payload_of_twice_the_length_is_refused(server, pki, tmp_path: Path) -> None:
    """Case 1: bytes beyond what the header promises (2x the length) are INVALID_ARGUMENT and
    the stored prefix is not extended past the promised size."""
    clks = planted_party_clks(["moj"], seed=1, records=4, shared=0)["moj"]
    path = write_clk_file(tmp_path / "m.clk", clks, project_id="p1")
    messages = upload_messages(path, "moj", chunk=10_000)
    doubled = pb.UploadRequest(chunk=pb.UploadChunk(offset=0, data=messages[1].chunk.data * 2))
    doubled.chunk.chunk_sha256 = hashlib.sha256(doubled.chunk.data).digest()
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(InvalidRequestError, match="runs past"):
        send(stub, [messages[0], doubled])
    assert server.storage.upload("p1", "moj").committed_bytes == 0


def test_case_2_trailing_garbage_after_the_payload_is_refused(server, pki, tmp_path: Path) -> None:
    """Case 2: a complete payload followed by one more chunk of garbage is INVALID_ARGUMENT."""
    clks = planted_party_clks(["moj"], seed=2, records=4, shared=0)["moj"]
    path = write_clk_file(tmp_path / "m.clk", clks, project_id="p1")
    messages = upload_messages(path, "moj", chunk=10_000)
    garbage = pb.UploadRequest(
        chunk=pb.UploadChunk(offset=len(messages[1].chunk.data), data=b"\x00junk")
    )
    garbage.chunk.chunk_sha256 = hashlib.sha256(garbage.chunk.data).digest()
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(InvalidRequestError):
        send(stub, [*messages, garbage])


@pytest.mark.parametrize("kind", ["all-zero", "all-one", "near-all-one"])
def test_case_3_degenerate_clks_refuse_the_run(server, connect, tmp_path: Path, kind) -> None:
    """Case 3: one all-zero, all-one or near-all-one (probe) CLK refuses the run before any
    comparison (REFUSED, aspect degenerate_clks, no run_started in the audit)."""
    clks = planted_party_clks(["moj", "dfe"], seed=3, records=12, shared=4)
    probe = clks["dfe"].copy()
    if kind == "all-zero":
        probe[5] = 0
    elif kind == "all-one":
        probe[5] = np.uint64(2**64 - 1)
    else:
        probe[5] = np.uint64(2**64 - 1)
        probe[5, 0] = np.uint64(2**64 - 1) ^ np.uint64(0b11111)  # 251 of 256 bits set
    clks["dfe"] = probe
    upload_all(server, connect, tmp_path, clks)
    status = connect(server, "operator").wait_for_run("p1", timeout=20)
    assert status.run_state is RunState.REFUSED
    assert (status.check_party_id, status.check_aspect) == ("dfe", "degenerate_clks")
    assert status.comparisons == 0 and not server.test_audit.named("run_started")


def test_case_4_duplicate_record_ids_are_refused_by_the_encoder(tmp_path: Path) -> None:
    """Case 4: two rows with one record id stop the encoder (RecordError naming the rows, never
    the id); no encoded file is written."""
    from party.encoder_run import encode_extract
    from party.mapping import shipped_mapping
    from protocol.schema import default_schema
    from protocol.secret import LinkageSecret

    extract = tmp_path / "moj.csv"
    extract.write_text(
        "person_id,forename,surname,date_of_birth,gender,postcode\n"
        "a1,Ann,Lee,01/02/1990,Female,SW1A 1AA\n"
        "a1,Bob,Ray,03/04/1985,Male,SW1A 2AA\n",
        encoding="utf-8",
    )
    with pytest.raises(RecordError) as caught:
        encode_extract(
            extract_path=extract,
            mapping=shipped_mapping("moj"),
            schema=default_schema(),
            secret=LinkageSecret(bytes(32)),
            project_id="p1",
            encoded_path=tmp_path / "moj.clk",
            positions_path=tmp_path / "moj.positions.csv",
            workers=1,
        )
    assert "a1" not in str(caught.value)
    assert not (tmp_path / "moj.clk").exists()


def test_case_4_a_second_different_upload_is_refused(server, connect, tmp_path: Path) -> None:
    """Case 4 (versions): a different payload for a party that has completed its upload is
    ALREADY_EXISTS; only the first is kept (no implicit versioning)."""
    moj = connect(server, "moj")
    first = write_clk_file(
        tmp_path / "a.clk", planted_party_clks(["moj"], seed=4)["moj"], project_id="p1"
    )
    second = write_clk_file(
        tmp_path / "b.clk", planted_party_clks(["moj"], seed=5)["moj"], project_id="p1"
    )
    assert moj.upload_file(first, party_id="moj").state is UploadState.COMPLETE
    with pytest.raises(AlreadyExistsError):
        moj.upload_file(second, party_id="moj")
    assert (
        server.storage.upload("p1", "moj").header.payload_sha256
        == hashlib.sha256(first.read_bytes()[200:]).digest()
    )


def test_case_5_fewer_records_than_the_header_never_complete(
    server, connect, pki, tmp_path: Path
) -> None:
    """Case 5: a stream carrying fewer records than its header's count stays PARTIAL; the run
    cannot start (FAILED_PRECONDITION) until the rest arrives."""
    clks = planted_party_clks(["moj"], seed=6, records=8, shared=0)["moj"]
    path = write_clk_file(tmp_path / "m.clk", clks, project_id="p1")
    messages = upload_messages(path, "moj", chunk=CLK_BITS // 8)
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel:
        response = send(stub, messages[:-1])  # one record short
    assert response.upload_state == pb.UPLOAD_STATE_PARTIAL
    with pytest.raises(PreconditionError):
        connect(server, "operator").start_run("p1")


def test_case_5_payload_digest_mismatch_is_refused_and_deleted(server, pki, tmp_path: Path) -> None:
    """Case 5: bytes that do not hash to the header's payload SHA-256 are INVALID_ARGUMENT,
    the partial payload is deleted and the deletion audited."""
    clks = planted_party_clks(["moj"], seed=7, records=4, shared=0)["moj"]
    path = write_clk_file(tmp_path / "m.clk", clks, project_id="p1")
    messages = upload_messages(path, "moj", chunk=10_000)
    messages[0].header.payload_sha256 = hashlib.sha256(b"another payload").digest()
    channel, stub = raw_stub(server.port, pki, "moj")
    with channel, pytest.raises(InvalidRequestError, match="digest"):
        send(stub, messages)
    assert [d["reason"] for d in server.test_audit.named("payload_deleted")] == ["digest_mismatch"]
    assert not list((server.config.data_dir / "payloads" / "p1").iterdir())


def _raw_status_call(server, pki, payload: bytes) -> grpc.RpcError:
    channel, _ = raw_stub(server.port, pki, "moj")
    with channel:
        call = channel.unary_unary(
            "/bloomlink.v1.LinkageUnit/GetProjectStatus",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(payload, timeout=5)
    return caught.value


def test_case_6_unknown_protobuf_fields_are_invalid_argument(server, pki) -> None:
    """Case 6: a request carrying a field this protocol version does not define (here field 99,
    a string smuggled next to the project id) is INVALID_ARGUMENT, never silently ignored."""
    known = pb.GetProjectStatusRequest(project_id="p1").SerializeToString()
    smuggled = known + bytes([(99 << 3 | 2) & 0x7F | 0x80, 99 >> 4, 5]) + b"Smith"
    error = _raw_status_call(server, pki, smuggled)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Smith" not in (error.details() or "")


def test_case_6_non_utf8_text_where_a_label_is_expected_is_refused(server, pki) -> None:
    """Case 6: bytes that are not UTF-8 in a string field fail to parse; the call is refused
    (not OK) and the raw bytes are not echoed."""
    bad = bytes([1 << 3 | 2, 4]) + b"\xff\xfe\xfd\xfc"
    error = _raw_status_call(server, pki, bad)
    assert error.code() is not grpc.StatusCode.OK
    assert "\\xff" not in (error.details() or "")


def test_case_7_parties_with_different_clk_lengths_refuse_the_run(
    server, connect, tmp_path: Path
) -> None:
    """Case 7: a party whose CLK length differs from the party that uploaded first is
    refused when its header arrives (CompatibilityError, aspect clk_bits): nothing stored,
    no run, zero comparisons."""
    generator = np.random.default_rng(8)
    clks = {
        "moj": generator.integers(0, 1 << 63, size=(6, 4), dtype=np.uint64) | np.uint64(1),
        "dfe": generator.integers(0, 1 << 63, size=(6, 8), dtype=np.uint64) | np.uint64(1),
    }
    upload_all(server, connect, tmp_path, {"moj": clks["moj"]})
    with pytest.raises(CompatibilityError) as caught:
        upload_all(server, connect, tmp_path, {"dfe": clks["dfe"]}, dfe={"clk_bits": 512})
    assert (caught.value.party, caught.value.aspect) == ("dfe", "clk_bits")
    assert server.storage.upload("p1", "dfe") is None
    status = connect(server, "operator").project_status("p1")
    assert status.run_state is RunState.WAITING_FOR_UPLOADS and status.comparisons == 0

"""The linkage unit's logic called directly, without gRPC: runs, restarts, link keys, checks."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from linkage_unit import matching
from linkage_unit.checks import check_clks, check_headers
from linkage_unit.link_keys import issue_link_keys
from linkage_unit.run import RunManager
from linkage_unit.service import Caller, LinkageService
from linkage_unit.storage import Storage
from protocol.clk_file import HEADER_LENGTH, read_header
from protocol.errors import CompatibilityError, NotFoundError
from protocol.identity import Identity, Role
from protocol.messages import (
    LinkKeyMode,
    ProjectSettings,
    RunState,
    UploadChunk,
    UploadHeader,
    link_keys_digest,
)
from tests.service_helpers import (
    CLK_WORDS,
    SCHEMA_FINGERPRINT,
    MemoryAuditSink,
    planted_party_clks,
    write_clk_file,
)
from tests.strategies import random_clks

OPERATOR = Caller(
    identity=Identity(role=Role.OPERATOR), certificate_fingerprint=hashlib.sha256(b"op").hexdigest()
)


def party(name: str) -> Caller:
    return Caller(
        identity=Identity(role=Role.PARTY, party=name),
        certificate_fingerprint=hashlib.sha256(name.encode()).hexdigest(),
    )


def build(data_dir: Path, **run_options) -> LinkageService:
    storage = Storage(data_dir)
    audit = MemoryAuditSink()
    return LinkageService(storage, audit, RunManager(storage, audit, **run_options))


def upload(service: LinkageService, path: Path, name: str) -> None:
    header = UploadHeader.from_clk_file_header(read_header(path), party_id=name)
    session = service.open_upload(party(name), header)
    try:
        session.accept(UploadChunk.of(0, path.read_bytes()[HEADER_LENGTH:]))
        session.finish()
    finally:
        session.close()


def test_a_run_interrupted_by_shutdown_completes_after_restart(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking_link(clks, settings, *, progress):
        entered.set()
        release.wait(5)
        progress("compare", 1, 2)  # the stopping service interrupts here
        return matching.link(clks, settings, progress=progress)

    service = build(tmp_path, link_function=blocking_link)
    service.create_project(
        OPERATOR,
        ProjectSettings(
            project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
        ),
    )
    clks = planted_party_clks(["moj", "dfe"], seed=3, records=12, shared=4)
    for name in ("moj", "dfe"):
        upload(service, write_clk_file(tmp_path / f"{name}.clk", clks[name], project_id="p1"), name)
    assert entered.wait(5)
    assert service.project_status(OPERATOR, "p1").run_state is RunState.RUNNING
    stopper = threading.Thread(target=service.runs.shutdown)
    stopper.start()
    release.set()
    stopper.join(5)
    service.storage.close()

    restarted = build(tmp_path)
    assert restarted.project_status(OPERATOR, "p1").run_state is RunState.RUNNING
    restarted.start()
    restarted.runs.wait_idle(10)
    status = restarted.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FINISHED and status.linked_record_count == 8
    # A finished run reports its last stage complete, not "0 of 1".
    assert status.progress_total > 0 and status.progress_done == status.progress_total
    batches = list(restarted.fetch_link_keys(party("moj"), "p1", "moj"))
    assert sum(len(batch.link_keys) for batch in batches) == 12
    with pytest.raises(NotFoundError):
        restarted.fetch_link_keys(party("moj"), "p1", "dfe")
    restarted.runs.shutdown()
    restarted.storage.close()


def test_link_keys_are_shared_within_clusters_and_fresh_otherwise() -> None:
    clusters = {
        "moj": np.array([0, 1, 2], dtype=np.int64),
        "dfe": np.array([3, 1, 4], dtype=np.int64),
    }
    keys = issue_link_keys(clusters, LinkKeyMode.SHARED)
    by_position = {p: dict(zip(k.positions, k.link_keys, strict=True)) for p, k in keys.items()}
    assert by_position["moj"][1] == by_position["dfe"][1]
    assert len({*by_position["moj"].values(), *by_position["dfe"].values()}) == 5
    assert all(len(key) == 26 for key in by_position["moj"].values())
    for party_keys in keys.values():
        assert party_keys.keys_sha256 == link_keys_digest(
            party_keys.positions, party_keys.link_keys
        )
    per_party = issue_link_keys(clusters, LinkKeyMode.PER_PARTY)
    assert dict(zip(per_party["moj"].positions, per_party["moj"].link_keys, strict=True))[
        1
    ] not in (per_party["dfe"].link_keys)


def test_link_key_order_is_random_not_positional() -> None:
    clusters = {"moj": np.arange(200, dtype=np.int64)}
    orders = {
        tuple(issue_link_keys(clusters, LinkKeyMode.SHARED)["moj"].positions) for _ in range(3)
    }
    assert len(orders) == 3 and tuple(range(200)) not in orders


def _headers(**dfe_changes) -> dict[str, UploadHeader]:
    base = dict(project_id="p1", schema_fingerprint=SCHEMA_FINGERPRINT, kcv=bytes(16), clk_bits=256,
                record_count=5, payload_sha256=bytes(32))  # fmt: skip
    return {
        "moj": UploadHeader(party_id="moj", **base),
        "dfe": UploadHeader(party_id="dfe", **{**base, **dfe_changes}),
    }


def test_checks_name_the_differing_party_and_aspect_never_a_value() -> None:
    project = ProjectSettings(
        project_id="p1", members=("moj", "dfe"), schema_fingerprint=SCHEMA_FINGERPRINT
    )
    check_headers(project, _headers())
    for change, aspect in (({"kcv": b"\x01" * 16}, "kcv"), ({"clk_bits": 512}, "clk_bits"),
                           ({"schema_fingerprint": bytes(32)}, "schema_fingerprint")):  # fmt: skip
        with pytest.raises(CompatibilityError) as caught:
            check_headers(project, _headers(**change))
        assert (caught.value.party, caught.value.aspect) == ("dfe", aspect)
        assert (
            "0101" not in caught.value.message
            and SCHEMA_FINGERPRINT.hex() not in caught.value.message
        )


def test_clk_checks_catch_degenerate_and_implausible_density() -> None:
    generator = np.random.default_rng(1)
    headers = _headers()
    good = {
        "moj": random_clks(generator, 5, words=CLK_WORDS, density=0.5),
        "dfe": random_clks(generator, 5, words=CLK_WORDS, density=0.5),
    }
    check_clks(good, headers)
    zero = {**good, "dfe": np.zeros((5, 4), dtype=np.uint64)}
    with pytest.raises(CompatibilityError) as caught:
        check_clks(zero, headers)
    assert (caught.value.party, caught.value.aspect) == ("dfe", "degenerate_clks")
    sparse = np.zeros((5, 4), dtype=np.uint64)
    sparse[:, 0] = 1
    with pytest.raises(CompatibilityError) as caught:
        check_clks(
            {**good, "dfe": sparse}, {**headers, "hmrc": headers["moj"]} | {"dfe": headers["dfe"]}
        )
    assert caught.value.aspect == "bit_density"


def test_state_from_before_the_threshold_columns_opens_and_gains_them(tmp_path) -> None:
    """An LU upgraded in place keeps its state: the runs table gains the new columns."""
    import sqlite3

    from linkage_unit.storage import Storage

    directory = tmp_path / "lu"
    directory.mkdir()
    with sqlite3.connect(directory / "state.sqlite3") as old:
        old.execute(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, "
            "state TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL, "
            "stage TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, "
            "total INTEGER NOT NULL DEFAULT 0, check_party TEXT NOT NULL DEFAULT '', "
            "check_aspect TEXT NOT NULL DEFAULT '', cluster_count INTEGER NOT NULL DEFAULT 0, "
            "linked_record_count INTEGER NOT NULL DEFAULT 0, "
            "comparisons INTEGER NOT NULL DEFAULT 0)"
        )
        old.execute(
            "INSERT INTO runs (run_id, project_id, state, created_at) VALUES ('r1', 'p1', 'finished', 1.0)"
        )
    store = Storage(directory)
    try:
        run = store.latest_run("p1")
        assert run is not None and run.run_id == "r1"
        assert (run.threshold, run.threshold_method, run.estimated) == (None, "", None)
    finally:
        store.close()

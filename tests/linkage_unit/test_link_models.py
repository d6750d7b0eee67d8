"""Link models (one-to-one, dedupe-and-link, dedupe-only): the project setting end to end
through the wire, storage, the service, a run, the link keys and the audit log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from auditor.verify import verify_audit_log
from linkage_unit.link_keys import issue_link_keys
from linkage_unit.run import RunManager
from linkage_unit.service import LinkageService
from linkage_unit.storage import Storage
from protocol import serde
from protocol.errors import ConfigurationError, InvalidRequestError, NotFoundError
from protocol.messages import LinkKeyMode, ProjectSettings, RunState
from protocol.pb import linkage_pb2 as pb
from protocol.vocabulary import LinkModel
from tests.audit_fixtures import append, make_log
from tests.linkage_unit.test_service import OPERATOR, party, upload
from tests.service_helpers import CLK_WORDS, SCHEMA_FINGERPRINT, MemoryAuditSink, write_clk_file
from tests.strategies import random_clks

KEY_FORM = re.compile(r"^[a-z2-7]{26}$")


def settings(**changes) -> ProjectSettings:
    values = {
        "project_id": "p1",
        "members": ("moj", "dfe"),
        "schema_fingerprint": SCHEMA_FINGERPRINT,
    }
    return ProjectSettings(**{**values, **changes})


def test_the_link_model_follows_from_the_deduplicated_members() -> None:
    assert settings().link_model is LinkModel.ONE_TO_ONE
    assert settings(deduplicated=("moj",)).link_model is LinkModel.DEDUPE_AND_LINK
    assert settings(deduplicated=("moj", "dfe")).link_model is LinkModel.DEDUPE_AND_LINK
    alone = settings(members=("moj",), deduplicated=("moj",))
    assert alone.link_model is LinkModel.DEDUPE_ONLY
    assert "deduplicating moj" in alone.describe_link_model()
    line = settings(deduplicated=("moj",), max_cluster_size=50).describe_link_model()
    assert line == (
        "dedupe-and-link: deduplicating moj; at most one record per person from dfe; "
        "over 50 records of one party in a cluster fail the run"
    )


def test_bad_link_models_are_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="--dedupe names 'hmrc', not a member"):
        settings(deduplicated=("hmrc",))
    with pytest.raises(ConfigurationError, match="at least two member parties, or one"):
        settings(members=("moj",))
    with pytest.raises(ConfigurationError, match="only to a project that deduplicates"):
        settings(max_cluster_size=10)
    with pytest.raises(ConfigurationError, match="between 2 and"):
        settings(deduplicated=("moj",), max_cluster_size=1)
    with pytest.raises(ConfigurationError, match="twice"):
        settings(deduplicated=("moj", "moj"))


def test_a_one_to_one_projects_settings_document_has_no_link_model_keys() -> None:
    plain = settings()
    assert json.loads(plain.canonical_json()) == {
        "format": "bloomlink-settings-v2", "project_id": "p1", "members": ["dfe", "moj"],
        "schema_fingerprint": SCHEMA_FINGERPRINT.hex(), "threshold": None, "blocking": "lsh",
        "link_key_mode": "shared", "retention_days": 0, "auto_run": True,
    }  # fmt: skip
    deduplicating = settings(deduplicated=("moj",))
    recorded = json.loads(deduplicating.canonical_json())
    assert (recorded["deduplicated"], recorded["max_cluster_size"]) == (["moj"], 1000)
    assert deduplicating.fingerprint != plain.fingerprint
    assert settings(deduplicated=("moj",), max_cluster_size=9).fingerprint != (
        deduplicating.fingerprint
    )


@pytest.mark.parametrize(
    "value",
    [
        settings(),
        settings(deduplicated=("dfe",)),
        settings(deduplicated=("moj", "dfe"), max_cluster_size=40),
        settings(members=("moj",), deduplicated=("moj",)),
    ],
)
def test_link_models_cross_the_wire_and_storage_unchanged(value, tmp_path: Path) -> None:
    message = pb.CreateProjectRequest.FromString(
        serde.project_settings_to_proto(value).SerializeToString()
    )
    assert serde.project_settings_from_proto(message) == value
    store = Storage(tmp_path)
    try:
        store.create_project(value)
        assert store.project("p1") == value
        assert store.project("p1").fingerprint == value.fingerprint  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_wire_request_deduplicating_a_non_member_is_invalid() -> None:
    message = serde.project_settings_to_proto(settings())
    message.matching.deduplicated_party_ids.append("hmrc")
    with pytest.raises(InvalidRequestError, match="not a member"):
        serde.project_settings_from_proto(message)
    message = serde.project_settings_to_proto(settings())
    message.matching.deduplicated_party_ids.append("Not A Label")
    with pytest.raises(InvalidRequestError):
        serde.project_settings_from_proto(message)


def build(tmp_path: Path) -> tuple[LinkageService, MemoryAuditSink]:
    storage = Storage(tmp_path / "lu")
    audit = MemoryAuditSink()
    return LinkageService(storage, audit, RunManager(storage, audit)), audit


def keys_of(service: LinkageService, name: str) -> dict[int, str]:
    positions, keys = [], []
    for batch in service.fetch_link_keys(party(name), "p1", name):
        positions += batch.positions
        keys += batch.link_keys
    return dict(zip(positions, keys, strict=True))


def test_a_deduplication_only_project_gives_one_key_per_person_and_refuses_other_parties(
    tmp_path: Path,
) -> None:
    service, audit = build(tmp_path)
    project = settings(members=("moj",), deduplicated=("moj",), threshold=0.9)
    service.create_project(OPERATOR, project)
    created = audit.named("project_created")[0]
    assert (created["link_model"], created["deduplicated"], created["max_cluster_size"]) == (
        "dedupe-only", "moj", 1000,
    )  # fmt: skip
    generator = np.random.default_rng(31)
    people = random_clks(generator, 20, words=CLK_WORDS, density=0.5)
    # Records 20-24 repeat people 0-4, records 25-26 repeat person 0 again.
    moj = np.concatenate([people, people[:5], people[:1], people[:1]])
    path = write_clk_file(tmp_path / "moj.clk", moj, project_id="p1")
    # DfE is not a member: its upload is refused as if the project did not exist.
    with pytest.raises(NotFoundError):
        upload(service, write_clk_file(tmp_path / "dfe.clk", people, project_id="p1"), "dfe")
    upload(service, path, "moj")
    service.runs.wait_idle(20)
    status = service.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FINISHED, status
    assert status.cluster_count == 20
    keys = keys_of(service, "moj")
    assert all(KEY_FORM.match(key) for key in keys.values())
    assert keys[20] == keys[0] == keys[25] == keys[26] and keys[24] == keys[4]
    assert len({keys[position] for position in range(20)}) == 20
    service.runs.shutdown()
    service.storage.close()


def test_a_cluster_over_the_cap_fails_the_run_saying_why_and_issues_no_keys(
    tmp_path: Path,
) -> None:
    service, _ = build(tmp_path)
    service.create_project(
        OPERATOR,
        settings(members=("moj",), deduplicated=("moj",), threshold=0.9, max_cluster_size=5),
    )
    placeholder = np.tile(
        random_clks(np.random.default_rng(32), 1, words=CLK_WORDS, density=0.5), (8, 1)
    )
    moj = np.concatenate(
        [placeholder, random_clks(np.random.default_rng(33), 10, words=CLK_WORDS, density=0.5)]
    )
    upload(service, write_clk_file(tmp_path / "moj.clk", moj, project_id="p1"), "moj")
    service.runs.wait_idle(20)
    status = service.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FAILED
    assert "more than 5 records (the project's cap)" in status.progress_stage
    assert service.storage.key_set("p1", "moj") is None
    service.runs.shutdown()
    service.storage.close()


@pytest.mark.parametrize("mode", list(LinkKeyMode))
def test_link_keys_per_person_each_party_learns_only_its_own_repeats(mode: LinkKeyMode) -> None:
    # Cluster 0: moj 0, 1, 2 and dfe 0. Cluster 1: moj 3 and 4. Singletons: moj 5, dfe 1.
    clusters = {
        "moj": np.array([0, 0, 0, 1, 1, 2], np.int64),
        "dfe": np.array([0, 3], np.int64),
    }
    issued = issue_link_keys(clusters, mode)
    moj = dict(zip(issued["moj"].positions, issued["moj"].link_keys, strict=True))
    dfe = dict(zip(issued["dfe"].positions, issued["dfe"].link_keys, strict=True))
    assert moj[0] == moj[1] == moj[2] and moj[3] == moj[4]
    assert len({moj[0], moj[3], moj[5]}) == 3
    assert len(set(dfe.values())) == 2  # duplicate-free: every record its own key
    assert all(KEY_FORM.match(key) for key in [*moj.values(), *dfe.values()])
    # Shared keys join the parties; per-party keys say nothing about the other party.
    assert (dfe[0] == moj[0]) is (mode is LinkKeyMode.SHARED)
    if mode is LinkKeyMode.PER_PARTY:
        assert not set(dfe.values()) & set(moj.values())


def test_audit_verify_shows_the_link_model_and_fails_one_naming_a_non_member(
    tmp_path: Path,
) -> None:
    base = {"settings_fingerprint": "ab" * 32, "schema_fingerprint": "cd" * 32,
            "retention": "delete-after-run", "hold_days": 30}  # fmt: skip
    with make_log(tmp_path) as log:
        append(log, "project_created", project_id="good", details={
            **base, "members": "moj,dfe", "link_model": "dedupe-and-link",
            "deduplicated": "moj", "max_cluster_size": 1000})  # fmt: skip
        append(log, "project_created", project_id="old", details={**base, "members": "moj,dfe"})
        append(log, "project_created", project_id="bad", details={
            **base, "members": "moj", "link_model": "dedupe-only", "deduplicated": "dfe",
            "max_cluster_size": 1000})  # fmt: skip
        append(log, "project_created", project_id="wrong", details={
            **base, "members": "moj,dfe", "link_model": "one-to-one", "deduplicated": "moj",
            "max_cluster_size": 1000})  # fmt: skip
        append(log, "project_created", project_id="capped", details={
            **base, "members": "moj,dfe", "max_cluster_size": 1000})  # fmt: skip
        (tmp_path / "lu.pem").write_bytes(log.public_key_pem())
    from protocol.signing import load_public_key

    report = verify_audit_log(tmp_path / "audit.jsonl", load_public_key(tmp_path / "lu.pem"))
    notes = {check.project_id: check.message for check in report.checks if check.name == "model"}
    assert notes["good"] == (
        "link model dedupe-and-link: moj deduplicated, at most one record per person from dfe; "
        "clusters capped at 1000 records"
    )
    assert notes["old"] == "link model one-to-one"
    failed = {check.project_id: check.message for check in report.failures}
    assert failed == {
        "bad": "the link model deduplicates non-members ['dfe']",
        "wrong": "link model 'one-to-one' disagrees with the deduplicated members (moj)",
        "capped": "a cluster-size cap in a project that deduplicates none",
    }

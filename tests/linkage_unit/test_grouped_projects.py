"""Grouped encodings (file format 2) at the linkage unit: a project created with a layout runs
end to end and hands the layout to the engine; an upload whose layout or hardening differs
from the project's is refused before a byte is stored; the layout survives a restart (an older
state file gaining the column is tests/linkage_unit/test_storage.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linkage_unit import matching
from linkage_unit.checks import check_clks, check_headers
from linkage_unit.run import RunManager
from linkage_unit.service import LinkageService
from linkage_unit.storage import Storage
from protocol import serde
from protocol.clk_file import ClkFileWriter, read_header
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import CompatibilityError, ConfigurationError, InvalidRequestError
from protocol.messages import (
    ProjectSettings,
    ProjectStatus,
    RunState,
    UploadChunk,
    UploadHeader,
)
from tests.linkage_unit.test_service import OPERATOR, party
from tests.service_helpers import KCV, SCHEMA_FINGERPRINT, MemoryAuditSink

LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=128, hardening="diffusion:width=3,output_bits=128"),
        GroupLayout(name="birth", bits=128, hardening="none"),
    )
)


def settings(layout: ClkLayout | None = LAYOUT) -> ProjectSettings:
    return ProjectSettings(
        project_id="p1",
        members=("moj", "dfe"),
        schema_fingerprint=SCHEMA_FINGERPRINT,
        layout=layout,
    )


def grouped_file(path: Path, clks: np.ndarray, layout: ClkLayout | None = LAYOUT) -> Path:
    with ClkFileWriter(
        path,
        project_id="p1",
        schema_fingerprint=SCHEMA_FINGERPRINT,
        kcv=KCV,
        clk_bits=64 * clks.shape[1],
        layout=layout,
    ) as writer:
        writer.write(clks)
    return path


def planted(seed: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    common = generator.integers(0, 1 << 63, size=(6, 4), dtype=np.uint64) | np.uint64(1)
    return {
        name: np.concatenate(
            [common, generator.integers(0, 1 << 63, size=(10, 4), dtype=np.uint64) | np.uint64(1)]
        )
        for name in ("moj", "dfe")
    }


def upload(service: LinkageService, path: Path, name: str) -> None:
    header = read_header(path)
    session = service.open_upload(
        party(name), UploadHeader.from_clk_file_header(header, party_id=name)
    )
    try:
        session.accept(UploadChunk.of(0, path.read_bytes()[header.header_length :]))
        session.finish()
    finally:
        session.close()


def test_a_grouped_project_runs_and_the_engine_gets_its_layout(tmp_path: Path) -> None:
    seen: list[Any] = []

    def spying_link(clks: Any, match_settings: Any, **options: Any) -> matching.LinkResult:
        seen.append(options.get("layout"))
        return matching.link(clks, match_settings, **options)

    storage = Storage(tmp_path / "lu")
    audit = MemoryAuditSink()
    service = LinkageService(storage, audit, RunManager(storage, audit, link_function=spying_link))
    service.create_project(OPERATOR, settings())
    clks = planted(1)
    for name in ("moj", "dfe"):
        upload(service, grouped_file(tmp_path / f"{name}.clk", clks[name]), name)
    service.runs.wait_idle(20)  # the last upload starts the run (auto_run)
    status = service.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FINISHED and status.linked_record_count >= 12
    assert seen == [LAYOUT]
    assert audit.named("project_created")[0]["layout_sha256"] == LAYOUT.sha256
    assert {entry["layout_sha256"] for entry in audit.named("upload_committed")} == {LAYOUT.sha256}
    service.runs.shutdown()
    storage.close()


@pytest.mark.parametrize(
    ("project_layout", "file_layout", "aspect"),
    [
        (None, LAYOUT, "layout"),  # a single-CLK project takes no grouped upload
        (LAYOUT, ClkLayout.single(256), "layout"),  # a grouped project takes no single CLK
        (
            LAYOUT,
            ClkLayout(
                groups=(
                    GroupLayout(name="birth", bits=128),
                    GroupLayout(name="name", bits=128, hardening=LAYOUT.groups[0].hardening),
                )
            ),
            "layout",
        ),
        (
            LAYOUT,
            ClkLayout(
                groups=(
                    GroupLayout(
                        name="name", bits=128, hardening="diffusion:width=4,output_bits=128"
                    ),
                    GroupLayout(name="birth", bits=128),
                )
            ),
            "hardening",
        ),
        (
            LAYOUT,
            ClkLayout(
                groups=(GroupLayout(name="name", bits=128), GroupLayout(name="birth", bits=128))
            ),
            "hardening",
        ),
    ],
)
def test_an_upload_with_another_layout_or_hardening_is_refused_before_storing(
    tmp_path: Path, project_layout: ClkLayout | None, file_layout: ClkLayout, aspect: str
) -> None:
    storage = Storage(tmp_path / "lu")
    audit = MemoryAuditSink()
    service = LinkageService(storage, audit, RunManager(storage, audit))
    service.create_project(OPERATOR, settings(project_layout))
    single = file_layout == ClkLayout.single(256)
    path = grouped_file(tmp_path / "moj.clk", planted(2)["moj"], None if single else file_layout)
    header = UploadHeader.from_clk_file_header(read_header(path), party_id="moj")
    with pytest.raises(CompatibilityError) as refused:
        service.open_upload(party("moj"), header)
    assert (refused.value.party, refused.value.aspect) == ("moj", aspect)
    assert audit.named("upload_refused") == [{"party": "moj", "reason": aspect}]
    assert storage.upload("p1", "moj") is None
    assert not (storage.payload_dir / "p1").exists() or not any(
        (storage.payload_dir / "p1").iterdir()
    )
    with pytest.raises(CompatibilityError):  # and again at run time, before any comparison
        check_headers(settings(project_layout), {"moj": header})
    storage.close()


def test_layouts_survive_a_restart(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "lu")
    storage.create_project(settings())
    path = grouped_file(tmp_path / "moj.clk", planted(3)["moj"])
    header = UploadHeader.from_clk_file_header(read_header(path), party_id="moj")
    storage.begin_upload(header)
    storage.close()
    reopened = Storage(tmp_path / "lu")
    project = reopened.project("p1")
    assert project is not None and project.layout == LAYOUT
    assert project == settings()
    record = reopened.upload("p1", "moj")
    assert record is not None and record.header == header and record.header.layout == LAYOUT
    reopened.close()


def test_the_layout_crosses_the_wire_intact() -> None:
    assert serde.project_settings_from_proto(serde.project_settings_to_proto(settings())) == (
        settings()
    )
    assert serde.project_settings_from_proto(serde.project_settings_to_proto(settings(None))) == (
        settings(None)
    )
    header = UploadHeader(
        project_id="p1",
        party_id="moj",
        schema_fingerprint=SCHEMA_FINGERPRINT,
        kcv=KCV,
        clk_bits=256,
        record_count=3,
        payload_sha256=bytes(32),
        format_version=2,
        layout=LAYOUT,
    )
    message = serde.upload_header_to_proto(header).header
    assert serde.upload_header_from_proto(message) == header
    message.groups[0].hardening = "diffusion: width 3"  # off the grammar: refused
    with pytest.raises(Exception, match="layout is invalid"):
        serde.upload_header_from_proto(message)


def test_settings_fingerprint_is_unchanged_without_a_layout() -> None:
    assert "layout" not in settings(None).canonical_json()
    assert settings(None).fingerprint != settings().fingerprint


def test_a_probe_filling_one_group_is_refused_as_degenerate() -> None:
    clks = planted(4)["moj"].copy()
    clks[:, 0:2] = np.uint64(0)  # a missing name group is fine
    header = UploadHeader(
        project_id="p1",
        party_id="moj",
        schema_fingerprint=SCHEMA_FINGERPRINT,
        kcv=KCV,
        clk_bits=256,
        record_count=len(clks),
        payload_sha256=bytes(32),
        format_version=2,
        layout=LAYOUT,
    )
    check_clks({"moj": clks}, {"moj": header})
    clks[3, 2:4] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # one record's birth group all ones
    with pytest.raises(CompatibilityError) as refused:
        check_clks({"moj": clks}, {"moj": header})
    assert refused.value.aspect == "degenerate_clks"


def test_the_operators_match_probability_reaches_the_engine_status_and_audit(
    tmp_path: Path,
) -> None:
    chosen = ProjectSettings(
        project_id="p1",
        members=("moj", "dfe"),
        schema_fingerprint=SCHEMA_FINGERPRINT,
        layout=LAYOUT,
        match_probability=0.8,
    )
    # Recorded only when set: an existing project's fingerprint does not move.
    assert json.loads(chosen.canonical_json())["match_probability"] == 0.8
    assert "match_probability" not in settings().canonical_json()
    assert chosen.fingerprint != settings().fingerprint
    assert serde.project_settings_from_proto(serde.project_settings_to_proto(chosen)) == chosen
    seen: list[float] = []

    def spying_link(clks: Any, match_settings: Any, **options: Any) -> matching.LinkResult:
        seen.append(match_settings.model.match_probability)
        return matching.link(clks, match_settings, **options)

    storage = Storage(tmp_path / "lu")
    audit = MemoryAuditSink()
    service = LinkageService(storage, audit, RunManager(storage, audit, link_function=spying_link))
    service.create_project(OPERATOR, chosen)
    clks = planted(1)
    for name in ("moj", "dfe"):
        upload(service, grouped_file(tmp_path / f"{name}.clk", clks[name]), name)
    service.runs.wait_idle(20)
    assert seen == [0.8]
    status = service.project_status(OPERATOR, "p1")
    assert status.run_state is RunState.FINISHED
    assert (status.threshold, status.threshold_method) == (0.8, "fellegi-sunter")
    estimated = (status.estimated_precision, status.estimated_recall, status.estimated_f1)
    assert all(value is not None and 0.0 <= value <= 1.0 for value in estimated)
    assert serde.project_status_from_proto(serde.project_status_to_proto(status)) == status
    # Figures derived from every party's data: a party's view has none of them.
    seen_by_party = service.project_status(party("moj"), "p1")
    assert seen_by_party.estimated_f1 is None and seen_by_party.estimated_precision is None
    assert seen_by_party.estimated_recall is None
    (finished,) = audit.named("run_finished")
    assert finished["threshold_thousandths"] == 800
    assert finished["threshold_method"] == "fellegi-sunter"
    assert finished["estimated_f1_millionths"] == round(status.estimated_f1 * 1_000_000)
    assert {"estimated_precision_millionths", "estimated_recall_millionths"} <= set(finished)
    service.runs.shutdown()
    storage.close()
    reopened = Storage(tmp_path / "lu")
    assert reopened.project("p1") == chosen  # read back from the recorded settings
    run = reopened.latest_run("p1")
    assert run is not None and run.estimated is not None
    assert run.estimated.f1 == status.estimated_f1
    reopened.close()


def test_a_match_probability_needs_a_grouped_layout_and_a_probability() -> None:
    with pytest.raises(ConfigurationError, match="several field groups"):
        ProjectSettings(
            project_id="p1",
            members=("moj", "dfe"),
            schema_fingerprint=SCHEMA_FINGERPRINT,
            match_probability=0.6,
        )
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigurationError, match=r"in \(0, 1\)"):
            ProjectSettings(
                project_id="p1",
                members=("moj", "dfe"),
                schema_fingerprint=SCHEMA_FINGERPRINT,
                layout=LAYOUT,
                match_probability=bad,
            )
    # A status without a model estimate (a Dice run) crosses the wire without one.
    plain = ProjectStatus(
        project_id="p1",
        parties=(),
        run_state=RunState.FINISHED,
        schema_fingerprint=SCHEMA_FINGERPRINT,
        settings_fingerprint="0" * 64,
        threshold=0.81,
        threshold_method="null-model",
    )
    assert serde.project_status_from_proto(serde.project_status_to_proto(plain)) == plain


@pytest.mark.parametrize("format_version", [1, 2])
def test_the_key_context_crosses_the_wire_and_a_malformed_one_is_refused(
    format_version: int,
) -> None:
    header = UploadHeader(
        project_id="p1",
        party_id="moj",
        schema_fingerprint=SCHEMA_FINGERPRINT,
        kcv=KCV,
        clk_bits=256,
        record_count=3,
        payload_sha256=bytes(32),
        format_version=format_version,
        layout=LAYOUT if format_version == 2 else None,
        key_context="spine:people",
    )
    message = serde.upload_header_to_proto(header).header
    assert message.key_context == "spine:people"
    assert serde.upload_header_from_proto(message) == header
    # Empty on the wire: the project id's own context, as every header before the field.
    plain = serde.upload_header_to_proto(replace(header, key_context=None)).header
    assert plain.key_context == ""
    assert serde.upload_header_from_proto(plain).key_context is None
    # Free text cannot travel in it: refused as the caller's mistake (INVALID_ARGUMENT), not
    # an unexpected failure, and the refusal does not echo what was sent.
    message.key_context = "spine:Jane Smith"
    with pytest.raises(InvalidRequestError, match="key context") as refused:
        serde.upload_header_from_proto(message)
    assert "Jane" not in refused.value.message

"""What a party can learn about another party's data from the linkage unit: nothing.

The membership attack: DfE encodes a probe (one chosen person, padded with made-up people)
and runs it against MoJ's extract. If anything DfE can see (status, settings, its audit
view, its keys, the errors it provokes) differs with whether the person is in MoJ's data,
DfE learns that MoJ holds that person. Two real linkage units on loopback get the same probe
and two MoJ extracts that differ only in that person; DfE's complete view must be byte-
identical once ids, digests and timestamps are masked. The operator's view, which keeps the
figures, shows that the two runs really differ. The same holds for a grouped (schema v2)
project in which MoJ's extract is deduplicated: neither the layout nor the link model opens
a channel (no cluster size or count reaches DfE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor.verify import AuditView, verify_audit_log
from protocol.errors import NotFoundError
from protocol.messages import ProjectSettings, RunState
from protocol.schema import LinkageSchema, default_schema, load_schema
from protocol.signing import load_public_key
from tests.adversarial.conftest import encode_rows
from tests.integration.membership_probe import as_moj, error_of, made_up, mask

pytestmark = pytest.mark.integration

GROUPED = Path(__file__).resolve().parents[2] / "benchmarks/schemas/grouped_salted.toml"

PROBE = ("d-probe", "Quillonwyth", "Zabrowskaya", "1983-03-17", "F", "SW1A 1AA")


def _status_record(status) -> dict[str, Any]:
    return {
        name: getattr(status, name)
        if not isinstance(getattr(status, name), tuple)
        else [vars_of(party) for party in getattr(status, name)]
        for name in status.__slots__
    }


def vars_of(value) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def _scenario(
    start_server,
    connect,
    root: Path,
    dfe_file: Path,
    moj_file: Path,
    *,
    schema: LinkageSchema,
    deduplicated: tuple[str, ...],
):
    """One linkage unit; DfE's whole view of it and the operator's status."""
    server = start_server(data_dir=root / "lu")
    operator = connect(server, "operator")
    for project, members in (("p1", ("moj", "dfe")), ("p2", ("moj", "hmrc"))):
        operator.create_project(
            ProjectSettings(
                project_id=project,
                members=members,
                schema_fingerprint=schema.fingerprint,
                layout=schema.layout if schema.grouped else None,
                deduplicated=deduplicated,
                threshold=0.85,
                retention_days=1,
            )
        )
    moj, dfe = connect(server, "moj"), connect(server, "dfe")
    view: dict[str, Any] = {}
    view["upload"] = vars_of(dfe.upload_file(dfe_file, party_id="dfe"))
    view["status before moj"] = _status_record(dfe.project_status("p1"))
    view["keys before the run"] = error_of(lambda: dfe.fetch_link_keys("p1", "dfe"))
    moj.upload_file(moj_file, party_id="moj")
    final = operator.wait_for_run("p1", timeout=60)
    assert final.run_state is RunState.FINISHED
    keys = dfe.fetch_link_keys("p1", "dfe")
    # Which of DfE's own records share a key is DfE's to see; the key strings are random.
    names: dict[str, int] = {}
    view["keys"] = sorted(
        (position, names.setdefault(key, len(names)))
        for position, key in sorted(zip(keys.positions, keys.link_keys, strict=True))
    )
    moj.fetch_link_keys("p1", "moj")
    view["status"] = _status_record(dfe.project_status("p1"))
    view["settings"] = vars_of(dfe.project_settings("p1"))
    view["errors"] = [
        error_of(lambda: dfe.fetch_link_keys("p1", "moj")),
        error_of(lambda: dfe.project_status("p2")),
        error_of(lambda: dfe.project_settings("p2")),
        error_of(lambda: dfe.fetch_audit_log("p2")),
        error_of(lambda: dfe.fetch_audit_log()),
        error_of(lambda: dfe.upload_file(moj_file, party_id="moj")),
    ]
    log, head = dfe.fetch_audit_log("p1")
    # DfE can still check its view end to end: chain, its own project's entries all there.
    (root / "dfe-view.jsonl").write_bytes(log)
    (root / "dfe-view.jsonl.head").write_bytes(head)
    report = verify_audit_log(
        root / "dfe-view.jsonl",
        load_public_key(dfe.audit_public_key()),
        view=AuditView(project_id="p1", party="dfe"),
        check_wire=False,
    )
    assert report.passed, report.to_text()
    view["audit"] = [json.loads(line) for line in log.splitlines()]
    view["audit head"] = json.loads(head)
    view["audit key"] = dfe.audit_public_key()
    return view, final


@pytest.mark.parametrize(
    ("schema_path", "deduplicated"),
    [(None, ()), (GROUPED, ("moj",))],
    ids=["single-clk-one-to-one", "grouped-v2-moj-deduplicated"],
)
def test_a_party_cannot_tell_whether_its_probe_person_is_in_the_other_partys_data(
    start_server, connect, tmp_path: Path, schema_path: Path | None, deduplicated: tuple[str, ...]
) -> None:
    schema = default_schema() if schema_path is None else load_schema(schema_path)
    probe_rows = [PROBE, *made_up("d", 30)]
    dfe_dir = tmp_path / "dfe"
    encode_rows(dfe_dir, "dfe", probe_rows, schema=schema)
    moj_rows = [as_moj(row) for row in made_up("m", 120)]
    person = as_moj(("m-person", *PROBE[1:]))
    with_person = [*moj_rows[:60], person, *moj_rows[60:]]
    if deduplicated:  # MoJ holds the person twice: one cluster of three records
        with_person.insert(90, as_moj(("m-person-again", *PROBE[1:])))
    encode_rows(tmp_path / "with", "moj", with_person, schema=schema)
    encode_rows(tmp_path / "without", "moj", moj_rows, schema=schema)

    views, finals = [], []
    for name in ("with", "without"):
        view, final = _scenario(
            start_server, connect, tmp_path / f"lu-{name}", dfe_dir / "dfe.clk",
            tmp_path / name / "moj.clk", schema=schema, deduplicated=deduplicated,
        )  # fmt: skip
        views.append(mask(view))
        finals.append(final)
    # The probe really is found in one world and not the other: the operator sees it.
    found = 3 if deduplicated else 2
    assert (finals[0].linked_record_count, finals[1].linked_record_count) == (found, 0)
    assert json.dumps(views[0], sort_keys=True, default=str) == json.dumps(
        views[1], sort_keys=True, default=str
    )
    # DfE's view holds its own figures, and not one of MoJ's.
    status = views[0]["status"]
    assert [party["party_id"] for party in status["parties"]] == ["dfe"]
    assert status["parties"][0]["record_count"] == 31
    assert status["linked_record_count"] == status["comparisons"] == 0
    assert status["threshold"] is None
    not_found = f"NotFoundError: {NotFoundError.__name__}"
    assert all(error.startswith(not_found.split(":")[0]) for error in views[0]["errors"][:4])

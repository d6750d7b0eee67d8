"""Deduplication is no membership oracle: a deduplicated party's keys group its own records
from its own records alone, through a real linkage unit on loopback.

MoJ, deduplicated in a project created from the command line with ``--dedupe moj``, submits
two deliberately half-matching probes of one person (her name right and her date of birth
wrong; her date of birth right and her name wrong) among made-up people. DfE's extract
differs between two linkage units only in whether she is in it. If her record could bridge
the probes into one cluster, MoJ would read her presence off its own keys: both probes with
one key. MoJ's whole view (its upload, status, settings, audit view, errors and which of its
records share a key) must be the same in both worlds once ids, digests and timestamps are
masked, at the automatic threshold. The operator's view, which keeps the figures, shows
that the runs really differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bloomlink.cli import main
from linkage_unit.pki import CertificateSet
from party.positions_file import read_positions
from protocol.messages import RunState
from protocol.schema import LinkageSchema, default_schema, single_clk_schema
from tests.adversarial.conftest import encode_rows
from tests.integration.membership_probe import as_moj, error_of, made_up, mask

pytestmark = pytest.mark.integration

PERSON = ("d-person", "Quillonwyth", "Zabrowskaya", "1983-03-17", "F", "SW1A 1AA")
# MoJ's layout: DD/MM/YYYY and sex in words.
PROBES = (
    ("m-probe-name", "Quillonwyth", "Zabrowskaya", "02/11/1971", "Female", "SW1A 1AA"),
    ("m-probe-date", "Maria", "Smith", "17/03/1983", "Female", "SW1A 1AA"),
)


# Made-up people (tests/integration/membership_probe.py). Every fourth made-up MoJ person has
# a second record (a repeat user), so MoJ's keys group some of its records in both worlds.
def _moj_rows() -> list[tuple[str, ...]]:
    people = [as_moj(row) for row in made_up("m", 80)]
    repeats = [(f"{row[0]}-again", *row[1:]) for row in people[::4]]
    return [*people[:40], PROBES[0], *repeats, PROBES[1], *people[40:]]


def _fields(value: Any) -> dict[str, Any]:
    return {
        name: [_fields(item) for item in getattr(value, name)]
        if isinstance(getattr(value, name), tuple) and name == "parties"
        else getattr(value, name)
        for name in value.__slots__
    }


def _world(
    start_server: Any, connect: Any, pki: CertificateSet, root: Path, moj_file: Path,
    dfe_file: Path, schema: LinkageSchema,
) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """One linkage unit: MoJ's whole view of it, and the operator's final status."""
    server = start_server(data_dir=root / "lu")
    operator = connect(server, "operator")
    tls = ["--target", f"127.0.0.1:{server.port}", "--ca", str(pki.ca_certificate),
           "--cert", str(pki.operator.certificate), "--key", str(pki.operator.private_key)]  # fmt: skip
    # Automatic threshold; exhaustive comparison, so no per-project LSH seed differs.
    assert main(["project", "create", "p1", "--parties", "moj,dfe", "--dedupe", "moj",
                 "--blocking", "none", "--retention-days", "1",
                 "--schema-fingerprint", schema.fingerprint.hex(), *tls]) == 0  # fmt: skip
    moj, dfe = connect(server, "moj"), connect(server, "dfe")
    view: dict[str, Any] = {"upload": _fields(moj.upload_file(moj_file, party_id="moj"))}
    view["status before dfe"] = _fields(moj.project_status("p1"))
    dfe.upload_file(dfe_file, party_id="dfe")
    final = operator.wait_for_run("p1", timeout=60)
    assert final.run_state is RunState.FINISHED
    keys = moj.fetch_link_keys("p1", "moj")
    # Which of MoJ's records share a key is MoJ's to see; the key strings are random.
    names: dict[str, int] = {}
    view["keys"] = [
        (position, names.setdefault(key, len(names)))
        for position, key in sorted(zip(keys.positions, keys.link_keys, strict=True))
    ]
    dfe.fetch_link_keys("p1", "dfe")
    view["status"] = _fields(moj.project_status("p1"))
    view["settings"] = _fields(moj.project_settings("p1"))
    view["errors"] = [
        error_of(lambda: moj.fetch_link_keys("p1", "dfe")),
        error_of(lambda: moj.fetch_audit_log()),
    ]
    log, head = moj.fetch_audit_log("p1")
    view["audit"] = [json.loads(line) for line in log.splitlines()]
    view["audit head"] = json.loads(head)
    return view, final


# Each world is its own linkage unit, so each run draws its own fresh seed: with the shipped
# default (scored by the model), MoJ's own sampling must not depend on it.
@pytest.mark.parametrize(
    "schema", [single_clk_schema(), default_schema()], ids=["single-clk", "default"]
)
def test_moj_cannot_tell_from_its_view_whether_its_probe_person_is_in_dfe(
    start_server: Any, connect: Any, pki: CertificateSet, tmp_path: Path, schema: LinkageSchema
) -> None:
    moj_rows = _moj_rows()
    encode_rows(tmp_path / "moj", "moj", moj_rows, schema=schema)
    filler = made_up("d", 60)
    encode_rows(tmp_path / "with", "dfe", [*filler[:30], PERSON, *filler[30:]], schema=schema)
    encode_rows(tmp_path / "without", "dfe", filler, schema=schema)

    views, finals = {}, {}
    for world in ("with", "without"):
        view, finals[world] = _world(
            start_server, connect, pki, tmp_path / f"lu-{world}", tmp_path / "moj" / "moj.clk",
            tmp_path / world / "dfe.clk", schema,
        )  # fmt: skip
        views[world] = mask(view)
    # Which of MoJ's records share a key: identical, with the repeat users grouped and the
    # two probes apart.
    assert views["with"]["keys"] == views["without"]["keys"]
    key_of = dict(views["with"]["keys"])
    position = {
        record_id: at for _, record_id, at in read_positions(tmp_path / "moj" / "moj.positions.csv")
    }
    probes = [position[probe[0]] for probe in PROBES]
    assert key_of[probes[0]] != key_of[probes[1]]
    if not schema.grouped:
        # The made-up people share forenames, birth-date parts and postcode patterns by
        # construction; Dice groups exactly the 20 repeats. The model on 160 such records
        # groups more (it is trained on a toy population): the same in both worlds is the point.
        assert len(set(key_of.values())) == len(moj_rows) - 20
    # She really is found in one world: the operator sees her linked, to one probe.
    if not schema.grouped:
        # (The model's cross-party fit differs between the two runs' fresh seeds on this toy
        # population, so the operator's count moves by more than her two links there.)
        assert finals["with"].linked_record_count == finals["without"].linked_record_count + 2
    # And everything else MoJ can see (issue 11 keeps every figure from DfE's data out of it).
    assert json.dumps(views["with"], sort_keys=True, default=str) == json.dumps(
        views["without"], sort_keys=True, default=str
    )

"""The production encoder, the reference encoder and the recorded golden vectors agree."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from party.mapping import shipped_mapping
from protocol.encoding import ClkEncoder
from protocol.schema import parse_schema
from protocol.secret import LinkageSecret
from tests.reference import make_vectors
from tests.reference import reference_encoder as reference

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "golden_vectors.json").read_text("utf-8"))
SECRET = bytes.fromhex(VECTORS["secret_hex"])
PROJECT = VECTORS["project_id"]
SETS = {vector_set["label"]: vector_set for vector_set in VECTORS["sets"]}
MOJ_COLUMNS = ["person_id", "forename", "surname", "date_of_birth", "gender", "postcode"]


def cases() -> list[Any]:
    return [
        pytest.param(vector_set, index, record, id=f"{vector_set['label']}-{index}")
        for vector_set in VECTORS["sets"]
        for index, record in enumerate(vector_set["records"])
    ]


@pytest.mark.parametrize("label", sorted(SETS))
def test_schema_fingerprint_and_kcv(label: str) -> None:
    vector_set = SETS[label]
    schema = parse_schema(vector_set["schema_document"])
    assert schema.canonical() == vector_set["canonical_schema"]
    assert schema.fingerprint.hex() == vector_set["schema_fingerprint_hex"]
    assert (
        reference.fingerprint(vector_set["canonical_schema"]).hex()
        == vector_set["schema_fingerprint_hex"]
    )
    encoder = ClkEncoder(schema, LinkageSecret(SECRET), project_id=PROJECT)
    assert encoder.kcv.hex() == vector_set["kcv_hex"]


def test_the_v1_vectors_pin_the_former_single_clk_default() -> None:
    former = tomllib.loads(
        (ROOT / "protocol" / "data" / "single_clk_schema.toml").read_text("utf-8")
    )
    assert SETS["v1-default"]["schema_document"] == former


@pytest.mark.parametrize(("vector_set", "index", "record"), cases())
def test_production_encoder_reproduces_each_vector(
    vector_set: dict, index: int, record: dict
) -> None:
    schema = parse_schema(vector_set["schema_document"])
    encoder = ClkEncoder(schema, LinkageSecret(SECRET), project_id=PROJECT)
    assert encoder.encode(record["normalised"]).hex() == record["clk_hex"]


@pytest.mark.parametrize(("vector_set", "index", "record"), cases())
def test_reference_encoder_reproduces_each_vector(
    vector_set: dict, index: int, record: dict
) -> None:
    clk = reference.encode(vector_set["canonical_schema"], SECRET, PROJECT, record["normalised"])
    assert clk.hex() == record["clk_hex"]


@pytest.mark.parametrize("index", range(len(SETS["v1-default"]["records"])))
def test_normaliser_gives_the_recorded_values(index: int) -> None:
    record = SETS["v1-default"]["records"][index]
    schema = parse_schema(SETS["v1-default"]["schema_document"])
    bound = shipped_mapping("moj").bind(schema, MOJ_COLUMNS)
    row = ["P1"] + [record["raw_moj"][column] for column in MOJ_COLUMNS[1:]]
    assert bound.normalise(row, row_number=1) == record["normalised"]


# -- encoding v2 (field groups, salting, per-group hardening) --------------------------------

VECTORS_V2 = json.loads((ROOT / "tests" / "vectors" / "golden_vectors_v2.json").read_text("utf-8"))
SETS_V2 = {vector_set["label"]: vector_set for vector_set in VECTORS_V2["sets"]}
SEED_V2 = bytes.fromhex(VECTORS_V2["blip_random_seed_hex"])


def test_the_v2_default_vectors_pin_the_shipped_default_schema() -> None:
    shipped = tomllib.loads((ROOT / "protocol" / "data" / "default_schema.toml").read_text("utf-8"))
    assert SETS_V2["default"]["schema_document"] == shipped, (
        "the default schema changed: regenerate the vectors (python -m tests.reference.make_vectors)"
    )


@pytest.mark.parametrize("label", sorted(SETS_V2))
def test_v2_schema_fingerprint_kcv_and_layout(label: str) -> None:
    vector_set = SETS_V2[label]
    schema = parse_schema(vector_set["schema_document"])
    assert schema.grouped
    assert schema.canonical() == vector_set["canonical_schema"]
    assert schema.fingerprint.hex() == vector_set["schema_fingerprint_hex"]
    assert (
        reference.fingerprint(vector_set["canonical_schema"]).hex()
        == vector_set["schema_fingerprint_hex"]
    )
    encoder = ClkEncoder(schema, LinkageSecret(SECRET), project_id=PROJECT)
    assert encoder.kcv.hex() == vector_set["kcv_hex"]
    lengths = {len(record["encoding_hex"]) * 4 for record in vector_set["records"]}
    assert lengths == {schema.encoded_bits}


@pytest.mark.parametrize("label", sorted(SETS_V2))
def test_production_encoder_reproduces_each_v2_vector(label: str) -> None:
    # BLIP draws from the recorded stream record by record, so a set is encoded in order.
    vector_set = SETS_V2[label]
    encoder = ClkEncoder(
        parse_schema(vector_set["schema_document"]),
        LinkageSecret(SECRET),
        project_id=PROJECT,
        random_bytes=make_vectors.random_stream(SEED_V2),
    )
    for record in vector_set["records"]:
        assert encoder.encode(record["normalised"]).hex() == record["encoding_hex"]


@pytest.mark.parametrize("label", sorted(SETS_V2))
def test_reference_encoder_reproduces_each_v2_vector(label: str) -> None:
    vector_set = SETS_V2[label]
    stream = make_vectors.random_stream(SEED_V2)
    for record in vector_set["records"]:
        encoding = reference.encode_grouped(
            vector_set["canonical_schema"], SECRET, PROJECT, record["normalised"], stream
        )
        assert encoding.hex() == record["encoding_hex"]


def test_v2_vectors_cover_each_hardening_and_salting() -> None:
    descriptors = {
        group.hardening
        for vector_set in SETS_V2.values()
        for group in parse_schema(vector_set["schema_document"]).layout.groups
    }
    methods = {step.split(":")[0] for text in descriptors for step in text.split("+")}
    assert methods == {
        "none",
        "diffusion",
        "nonlinear-diffusion",
        "blip",
        "balance",
        "xor-fold",
        "rule90",
    }
    salted = [
        token
        for vector_set in SETS_V2.values()
        for field in vector_set["canonical_schema"]["fields"]
        for token in field["tokens"]
        if "salt" in token
    ]
    assert salted

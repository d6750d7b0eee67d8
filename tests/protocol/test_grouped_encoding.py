"""Encoding v2 (schema version 2): the production encoder agrees with the stdlib-only
reference on every candidate schema, a missing group is all zero, groups are keyed apart,
salted tokens need their salt, and the column path agrees with the per-value path."""

from __future__ import annotations

import hashlib
import hmac
import struct
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.encoding import ClkEncoder, token_positions, token_positions_many
from protocol.schema import LinkageSchema, load_schema, parse_schema
from protocol.secret import LinkageSecret
from tests import strategies
from tests.reference import reference_encoder as reference
from tests.reference.make_vectors import random_stream

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
CANDIDATES = sorted((ROOT / "benchmarks" / "schemas").glob("grouped*.toml"))
NICKNAMES = hashlib.sha256((ROOT / "protocol/data/nicknames.csv").read_bytes()).hexdigest()
RECORDS: list[list[str | None]] = [
    ["zoe", "obrien", "1985-12-03", "f", "SW1A 1AA"],
    ["william", "nguyen", "1970-01-01", "m", None],
    ["john", "smith", None, "m", "B33 8TH"],
    [None, "wright", None, None, None],
    ["дмитрий", "иванов", "1999-12-31", None, "E1 6AN"],
]


def canonical_of(path: Path) -> dict[str, Any]:
    document = tomllib.loads(path.read_text("utf-8"))
    return reference.canonical_schema_v2(
        document, normaliser="norm/v1", nickname_table_sha256=NICKNAMES
    )


def group_bits(encoder: ClkEncoder, row: bytes, name: str) -> np.ndarray:
    words = np.frombuffer(row, dtype="<u8")
    start, stop = encoder.layout.word_range(encoder.layout.names.index(name))
    return words[start:stop]


@pytest.mark.parametrize("path", CANDIDATES, ids=lambda path: path.stem)
def test_every_candidate_schema_matches_the_reference(path: Path) -> None:
    schema = load_schema(path)
    canonical = canonical_of(path)
    assert schema.canonical() == canonical
    encoder = ClkEncoder(
        schema, LinkageSecret(SECRET), project_id="grouped", random_bytes=random_stream(b"r")
    )
    stream = random_stream(b"r")
    for values in RECORDS:
        expected = reference.encode_grouped(canonical, SECRET, "grouped", values, stream)
        assert encoder.encode(values) == expected
        assert len(expected) * 8 == schema.encoded_bits


GROUPED = load_schema(ROOT / "benchmarks/schemas/grouped_diffusion_w3_blip_p02.toml")
GROUPED_CANONICAL = canonical_of(ROOT / "benchmarks/schemas/grouped_diffusion_w3_blip_p02.toml")


@given(strategies.default_schema_records, st.binary(min_size=4, max_size=4))
def test_grouped_encoder_agrees_with_the_reference(values: list[str | None], seed: bytes) -> None:
    encoder = ClkEncoder(
        GROUPED, LinkageSecret(SECRET), project_id="grouped", random_bytes=random_stream(seed)
    )
    expected = reference.encode_grouped(
        GROUPED_CANONICAL, SECRET, "grouped", values, random_stream(seed)
    )
    assert encoder.encode(values) == expected


PLAIN = load_schema(ROOT / "benchmarks/schemas/grouped_salted.toml")
PLAIN_ENCODER = ClkEncoder(PLAIN, LinkageSecret(SECRET), project_id="grouped")


@given(strategies.default_schema_records)
def test_a_group_with_every_field_missing_is_all_zero(values: list[str | None]) -> None:
    for schema in (PLAIN, GROUPED):
        encoder = ClkEncoder(schema, LinkageSecret(SECRET), project_id="grouped")
        row = encoder.encode(values)
        name_missing = values[0] is None and values[1] is None
        birth_missing = values[2] is None  # sex is salted by the date: nothing without it
        assert (not group_bits(encoder, row, "name").any()) == name_missing
        assert (not group_bits(encoder, row, "birth").any()) == birth_missing
        assert (not group_bits(encoder, row, "postcode").any()) == (values[4] is None)


def test_salted_sex_sets_bits_only_with_its_date_and_differs_by_date() -> None:
    def birth(values: list[str | None]) -> int:
        return int.from_bytes(group_bits(PLAIN_ENCODER, PLAIN_ENCODER.encode(values), "birth"))

    date_only = birth([None, None, "1980-01-02", None, None])
    with_sex = birth([None, None, "1980-01-02", "f", None])
    other_date = birth([None, None, "1981-01-02", "f", None])
    assert birth([None, None, None, "f", None]) == 0  # never salted with an empty value
    sex_bits = with_sex & ~date_only
    other_sex_bits = other_date & ~birth([None, None, "1981-01-02", None, None])
    assert sex_bits and other_sex_bits and sex_bits != other_sex_bits
    assert birth([None, None, "1980-01-02", "f", None]) == with_sex


def test_groups_are_keyed_apart() -> None:
    # The same field settings in two groups set unrelated bits: group keys differ.
    document: dict[str, Any] = {
        "schema_version": 2,
        "name": "twins",
        "groups": [{"name": "left", "clk_bits": 256}, {"name": "right", "clk_bits": 256}],
        "fields": [
            {
                "name": name,
                "group": group,
                "kind": "person_name",
                "key_group": "same",
                "tokens": [{"method": "ngram", "bits_per_token": 4}],
            }
            for name, group in (("a", "left"), ("b", "right"))
        ],
    }
    encoder = ClkEncoder(parse_schema(document), LinkageSecret(SECRET), project_id="twins")
    words = np.frombuffer(encoder.encode(["smith", "smith"]), dtype="<u8")
    left, right = words[:4], words[4:]
    assert np.bitwise_count(left & right).sum() < np.bitwise_count(left).sum() // 2


@given(
    st.lists(
        st.tuples(strategies.sex_values, strategies.maybe(strategies.iso_dates)),
        min_size=1,
        max_size=20,
    )
)
def test_column_path_with_salts_agrees_with_the_per_value_path(
    pairs: list[tuple[str, str | None]],
) -> None:
    sexes = [sex for sex, _ in pairs]
    dates = [date for _, date in pairs]
    sex_index = [field.name for field in PLAIN.fields].index("sex")
    assert PLAIN_ENCODER.field_salts(sex_index) == ("date_of_birth",)
    masks = PLAIN_ENCODER.field_masks(sex_index, sexes, {"date_of_birth": dates})
    assert masks.shape == (len(pairs), 512 // 64)
    for row, sex, date in zip(masks, sexes, dates, strict=True):
        expected = PLAIN_ENCODER.field_mask(sex_index, sex, {"date_of_birth": date})
        assert int.from_bytes(row.astype("<u8").tobytes(), "little") == expected


def test_field_word_ranges_follow_the_input_layout() -> None:
    assert [PLAIN_ENCODER.field_word_range(index) for index in range(5)] == [
        (0, 8),
        (0, 8),
        (8, 16),
        (8, 16),
        (16, 20),
    ]
    assert PLAIN_ENCODER.encoded_bits == 1280 and PLAIN_ENCODER.layout == PLAIN.layout


def test_blip_encodings_differ_between_runs_but_stay_similar() -> None:
    schema: LinkageSchema = load_schema(ROOT / "benchmarks/schemas/grouped_blip_p05.toml")
    first, second = (
        ClkEncoder(schema, LinkageSecret(SECRET), project_id="grouped").encode(RECORDS[0])
        for _ in range(2)
    )
    assert first != second
    a, b = np.frombuffer(first, np.uint8), np.frombuffer(second, np.uint8)
    distance = np.unpackbits(a ^ b).sum() / (8 * len(first))
    assert 0.05 < distance < 0.15  # two independent 5 % flips: about 9.5 % of bits differ


@given(
    st.lists(st.text(max_size=12), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=30),
    st.sampled_from([64, 576, 1024, 65472]),
    st.sampled_from(["hmac-sha256", "blake2b"]),
)
def test_bulk_token_positions_agree_with_one_at_a_time(
    tokens: list[str], count: int, clk_bits: int, hashing: str
) -> None:
    bulk = token_positions_many(SECRET, tokens, count, clk_bits=clk_bits, hashing=hashing)
    for token, row in zip(tokens, bulk.tolist(), strict=True):
        assert row == token_positions(SECRET, token, count, clk_bits=clk_bits, hashing=hashing)


def test_bulk_token_positions_fall_back_on_a_rejected_word() -> None:
    # At 65472 bits a word is rejected with probability about 1.5e-5: find a token whose
    # first eight words hold one, so the bulk path must hand it to the one-at-a-time path.
    limit = (1 << 32) - (1 << 32) % 65472
    token = next(
        candidate
        for candidate in (f"t{index}" for index in range(400_000))
        if max(
            struct.unpack(">8I", hmac.digest(SECRET, b"\0\0\0\0" + candidate.encode(), "sha256"))
        )
        >= limit
    )
    expected = token_positions(SECRET, token, 8, clk_bits=65472, hashing="hmac-sha256")
    bulk = token_positions_many(SECRET, [token], 8, clk_bits=65472, hashing="hmac-sha256")
    assert bulk.tolist() == [expected]

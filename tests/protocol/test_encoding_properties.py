"""Properties of the encoder: the cached fast path agrees with the plain reference, and CLKs
are deterministic, token-order independent, of the right length, with missing fields empty."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from protocol.encoding import ClkEncoder, balance, keyed_permutation, xor_fold
from protocol.schema import TokenSpec, default_schema, parse_schema
from protocol.secret import LinkageSecret
from protocol.tokens import tokenise
from tests import strategies
from tests.reference import reference_encoder as reference

SECRET = bytes(range(32))
SCHEMA = default_schema()
ENCODER = ClkEncoder(SCHEMA, LinkageSecret(SECRET), project_id="properties")


@given(strategies.default_schema_records)
def test_fast_encoder_agrees_with_the_reference(values: list[str | None]) -> None:
    expected = reference.encode(SCHEMA.canonical(), SECRET, "properties", values)
    assert ENCODER.encode(values) == expected


@given(strategies.default_schema_records)
def test_encoding_is_deterministic_across_encoders_and_cache_states(
    values: list[str | None],
) -> None:
    fresh = ClkEncoder(SCHEMA, LinkageSecret(SECRET), project_id="properties")
    assert fresh.encode(values) == ENCODER.encode(values) == ENCODER.encode(values)


@given(strategies.default_schema_records)
def test_clk_length_is_the_schema_length(values: list[str | None]) -> None:
    assert len(ENCODER.encode(values)) * 8 == SCHEMA.clk_bits


@given(strategies.default_schema_records, st.integers(min_value=0, max_value=4))
def test_a_missing_field_sets_no_bits(values: list[str | None], dropped: int) -> None:
    only_field = [value if index == dropped else None for index, value in enumerate(values)]
    without = [None if index == dropped else value for index, value in enumerate(values)]
    whole = int.from_bytes(ENCODER.encode(values), "little")
    assert whole == int.from_bytes(ENCODER.encode(only_field), "little") | int.from_bytes(
        ENCODER.encode(without), "little"
    )
    assert ENCODER.encode([None] * 5) == bytes(SCHEMA.clk_bits // 8)


@given(st.lists(strategies.name_words, min_size=1, max_size=4, unique=True), st.randoms())
def test_token_order_does_not_matter(words: list[str], shuffler: object) -> None:
    spec = TokenSpec(method="exact", bits=40)
    positions_in_order = set()
    shuffled = list(words)
    shuffler.shuffle(shuffled)  # type: ignore[attr-defined]
    for order in (words, shuffled):
        mask = 0
        for word in order:
            mask |= ENCODER._fields[0]._token_mask(next(iter(tokenise(word, spec))), 3)
        positions_in_order.add(mask)
    assert len(positions_in_order) == 1


def test_different_secrets_or_projects_give_unrelated_clks() -> None:
    values = ["zoe", "obrien", "1985-12-03", "f", "SW1A 1AA"]
    other_secret = ClkEncoder(SCHEMA, LinkageSecret(bytes(32)), project_id="properties")
    other_project = ClkEncoder(SCHEMA, LinkageSecret(SECRET), project_id="elsewhere")
    base = np.frombuffer(ENCODER.encode(values), dtype=np.uint8)
    for other in (other_secret, other_project):
        clk = np.frombuffer(other.encode(values), dtype=np.uint8)
        shared = int(np.unpackbits(base & clk).sum())
        dice = 2 * shared / (int(np.unpackbits(base).sum()) + int(np.unpackbits(clk).sum()))
        assert dice < 0.7  # unrelated bit vectors at ~0.4 density meet at about the density


@given(st.integers(min_value=1, max_value=300), st.binary(min_size=32, max_size=32))
def test_keyed_permutation_is_a_permutation_and_matches_the_reference(
    length: int, key: bytes
) -> None:
    order = keyed_permutation(key, length)
    assert sorted(order.tolist()) == list(range(length))
    assert order.tolist() == reference.permutation(key, length)


@given(st.binary(min_size=16, max_size=16))
def test_balancing_sets_exactly_half_the_bits(data: bytes) -> None:
    clks = np.frombuffer(data, dtype=np.uint64).reshape(1, 2).copy()
    balanced = balance(clks, keyed_permutation(b"k" * 32, 256))
    assert balanced.shape == (1, 4)
    assert int(np.bitwise_count(balanced).sum()) == 128


@given(st.binary(min_size=16, max_size=16))
def test_xor_fold_matches_its_definition(data: bytes) -> None:
    clks = np.frombuffer(data, dtype=np.uint64).reshape(1, 2).copy()
    folded = xor_fold(clks)
    bits = np.unpackbits(clks.view(np.uint8), bitorder="little")
    expected = np.packbits(bits[:64] ^ bits[64:], bitorder="little")
    assert folded.view(np.uint8).tolist() == expected[None, :].tolist()


def test_a_name_group_makes_swapped_names_encode_alike() -> None:
    document = {
        "schema_version": 1,
        "name": "swap",
        "fields": [
            {
                "name": "forename",
                "kind": "person_name",
                "key_group": "names",
                "tokens": [{"method": "ngram", "bits_per_token": 4}],
            },
            {
                "name": "surname",
                "kind": "person_name",
                "key_group": "names",
                "tokens": [{"method": "ngram", "bits_per_token": 4}],
            },
        ],
    }
    encoder = ClkEncoder(parse_schema(document), LinkageSecret(SECRET), project_id="swap")
    assert encoder.encode(["john", "smith"]) == encoder.encode(["smith", "john"])
    # The shipped default groups its names too (a forename/surname swap costs nothing).
    assert ENCODER.encode(["john", "smith", None, None, None]) == ENCODER.encode(
        ["smith", "john", None, None, None]
    )
    for spec in document["fields"]:
        del spec["key_group"]
    separate = ClkEncoder(parse_schema(document), LinkageSecret(SECRET), project_id="swap")
    assert separate.encode(["john", "smith"]) != separate.encode(["smith", "john"])

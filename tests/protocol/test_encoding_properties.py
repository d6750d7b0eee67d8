"""Properties of the encoder: the cached per-value path and the numpy column path agree with
each other and with the plain reference, and CLKs are deterministic, token-order independent,
of the right length, with missing fields empty."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from protocol import encoding
from protocol.encoding import ClkEncoder, balance, keyed_permutation, xor_fold
from protocol.schema import TokenSpec, parse_schema, single_clk_schema
from protocol.secret import LinkageSecret
from protocol.tokens import tokenise
from tests import strategies
from tests.reference import reference_encoder as reference

SECRET = bytes(range(32))
SCHEMA = single_clk_schema()
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


# Column path (ClkEncoder.field_masks) against the per-value path and the reference, over
# every n-gram option and over values the column path must hand back (short, long, NUL).
ngram_specs = st.builds(
    dict,
    method=st.just("ngram"),
    size=st.integers(min_value=1, max_value=4),
    padded=st.booleans(),
    positional=st.booleans(),
    words=st.sampled_from(["all", "first"]),
)
weights = st.one_of(
    st.builds(dict, bits=st.integers(min_value=1, max_value=200)),
    st.builds(dict, bits_per_token=st.integers(min_value=1, max_value=12)),
)
other_specs = st.sampled_from([{"method": "exact"}, {"method": "phonetic", "algorithm": "soundex"}])
column_values = st.one_of(
    st.text(alphabet="abcz _'-\x00é日\U0001f600", max_size=8),
    st.text(min_size=60, max_size=70, alphabet="ab"),
    strategies.normalised_names,
    strategies.postcodes,
)


@st.composite
def column_schemas(draw: st.DrawFn) -> dict[str, object]:
    specs = draw(st.lists(st.one_of(ngram_specs, ngram_specs, other_specs), min_size=1, max_size=3))
    tokens = [{**spec, **draw(weights)} for spec in specs]
    return {
        "schema_version": 1,
        "name": "column",
        "clk_bits": draw(st.sampled_from([64, 256, 1024])),
        "fields": [{"name": "forename", "kind": "person_name", "tokens": tokens}],
    }


@given(column_schemas(), st.lists(column_values, min_size=1, max_size=30, unique=True))
def test_column_path_agrees_with_the_per_value_path_and_the_reference(
    document: dict[str, object], values: list[str]
) -> None:
    schema = parse_schema(document)
    column = ClkEncoder(schema, LinkageSecret(SECRET), project_id="column")
    per_value = ClkEncoder(schema, LinkageSecret(SECRET), project_id="column")
    masks = column.field_masks(0, values)
    assert masks.shape == (len(values), schema.clk_bits // 64)
    for value, row in zip(values, masks, strict=True):
        expected = per_value.field_mask(0, value)
        assert int.from_bytes(row.astype("<u8").tobytes(), "little") == expected
    canonical = schema.canonical()
    for value, row in list(zip(values, masks, strict=True))[:3]:
        reference_clk = reference.encode(canonical, SECRET, "column", [value])
        assert row.astype("<u8").tobytes() == reference_clk


def test_column_path_serves_every_length_and_repeats_in_one_call() -> None:
    # Repeats and values of every length in one batch: each row must still be its own value's.
    values = ["", "a", "ab", "abc", "abcabc", "a" * 64, "a" * 65, "ab", "zz zz", "a\x00b"]
    masks = ENCODER.field_masks(4, values)
    for value, row in zip(values, masks, strict=True):
        assert int.from_bytes(row.astype("<u8").tobytes(), "little") == ENCODER.field_mask(4, value)


def test_a_newer_token_option_set_away_from_its_default_leaves_the_column_path() -> None:
    # Another tokeniser option may land in TokenSpec before the column path learns it.
    newer = dataclasses.make_dataclass(
        "NewerTokenSpec",
        [("reversed_text", bool, dataclasses.field(default=False))],
        bases=(TokenSpec,),
        frozen=True,
        kw_only=True,
    )
    assert encoding._coded(newer(method="ngram", bits=40))
    assert not encoding._coded(newer(method="ngram", bits=40, reversed_text=True))
    assert not encoding._coded(TokenSpec(method="exact", bits=40))


# The compiled ASCII n-gram kernel against its numpy twin, value by value: the column path
# sends ASCII values to the kernel and the rest to numpy, so each must give the same bits.
@given(
    st.sampled_from([1, 2]),
    st.booleans(),
    st.sampled_from(["all", "first"]),
    weights,
    st.lists(
        st.one_of(
            st.text(alphabet="abz _'-\x00\x7f", max_size=10),
            strategies.normalised_names,
            strategies.postcodes,
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_compiled_ngram_kernel_agrees_with_the_numpy_path(
    size: int, padded: bool, words: str, weight: dict[str, int], values: list[str]
) -> None:
    spec = TokenSpec(method="ngram", size=size, padded=padded, words=words, **weight)
    schema = parse_schema(
        {
            "schema_version": 1,
            "name": "kernel",
            "clk_bits": 256,
            "fields": [{"name": "forename", "kind": "person_name", "tokens": [spec.canonical()]}],
        }
    )
    compiled = ClkEncoder(schema, LinkageSecret(SECRET), project_id="kernel")._fields[0]
    numpy_twin = ClkEncoder(schema, LinkageSecret(SECRET), project_id="kernel")._fields[0]
    parsed = compiled.spec.tokens[0]
    fast = np.zeros((len(values), 4), dtype=np.uint64)
    slow = np.zeros((len(values), 4), dtype=np.uint64)
    fast_rest = compiled._or_ascii_masks(values, parsed, fast)
    slow_rest = numpy_twin._or_coded_masks(values, parsed, slow)
    # The kernel ORs a whole mask per (n-gram, bit count); with no room for that table it
    # sets the bits one at a time: the same bits either way.
    bitwise = np.zeros_like(fast)
    limit = encoding._NGRAM_MASK_WORDS
    try:
        encoding._NGRAM_MASK_WORDS = 0
        assert compiled._or_ascii_masks(values, parsed, bitwise) == fast_rest
    finally:
        encoding._NGRAM_MASK_WORDS = limit
    assert (bitwise == fast).all()
    texts = [value.split(" ", 1)[0] if words == "first" else value for value in values]
    handled = sorted(set(range(len(values))) - set(fast_rest))
    # The kernel takes every ASCII value at least one n-gram long (padding counts), and only
    # those; where the numpy path took the value too, the two agree.
    assert handled == [
        offset
        for offset, text in enumerate(texts)
        if text.isascii() and len(text) + (2 * size - 2 if padded else 0) >= size
    ]
    both = [offset for offset in handled if offset not in slow_rest]
    assert (fast[both] == slow[both]).all()
    for offset in handled:
        expected = numpy_twin._spec_mask(values[offset], parsed)
        assert int.from_bytes(fast[offset].astype("<u8").tobytes(), "little") == expected


ASCII_WORDS = st.text(alphabet="abcdz _", max_size=12)


@given(st.lists(st.lists(ASCII_WORDS, min_size=1, max_size=20), min_size=1, max_size=5))
def test_the_kernel_table_kept_between_calls_gives_the_per_value_bits(
    batches: list[list[str]],
) -> None:
    # One encoder over several column calls: an n-gram first met in a long value (few bits)
    # is later asked for more bits by a short one, so the kept table must grow, not reuse.
    column = ClkEncoder(SCHEMA, LinkageSecret(SECRET), project_id="kept")
    per_value = ClkEncoder(SCHEMA, LinkageSecret(SECRET), project_id="kept")
    for values in batches:
        masks = column.field_masks(4, values)  # postcode: bigrams, 150 bits a value
        for value, row in zip(values, masks, strict=True):
            expected = per_value.field_mask(4, value)
            assert int.from_bytes(row.astype("<u8").tobytes(), "little") == expected

"""The attack library's parts, each against a slow obvious twin or a case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from bloomlink.attacks.attributes import (
    Attribute,
    AttributeTable,
    attribute_labels,
    score_predictions,
)
from bloomlink.attacks.frequency import frequency_guesses
from bloomlink.attacks.graph_matching import (
    greedy_assignment,
    otsu_threshold,
    reference_greedy_assignment,
)
from bloomlink.attacks.mining import mine_signatures
from bloomlink.attacks.patterns import reference_tokens
from bloomlink.attacks.views import EncodedRecords, bit_matrix, bit_views, dice_matrix
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.schema import default_schema
from tests.strategies import clk_arrays, cost_matrices

ROWS = [
    ["jo", "smith", "1990-03-07", "f", "SW1A 1AA"],
    ["sam", "smith jones", "1985-11-30", "m", "M1 2AB"],
    [None, "lee", None, None, None],
]


@given(cost_matrices())
def test_greedy_assignment_agrees_with_its_reference(cost: list[list[float]]) -> None:
    matrix = np.array(cost, dtype=np.float32).reshape(len(cost), len(cost[0]) if cost else 0)
    assert greedy_assignment(matrix).tolist() == reference_greedy_assignment(matrix).tolist()


def test_greedy_assignment_past_its_cheapest_pairs_agrees_with_its_reference() -> None:
    """Large enough that the fast path sorts only its cheapest pairs first, then the rest."""
    generator = np.random.default_rng(5)
    cost = generator.integers(0, 30, size=(70, 60)).astype(np.float32)
    cost[generator.random(cost.shape) < 0.1] = np.inf
    cost[:, :5] = -1.0  # every row's cheapest five pairs are the same few columns
    assert greedy_assignment(cost).tolist() == reference_greedy_assignment(cost).tolist()


def test_greedy_assignment_takes_the_cheapest_pair_first() -> None:
    cost = np.array([[1.0, 2.0], [0.5, 9.0]], dtype=np.float32)
    assert greedy_assignment(cost).tolist() == [1, 0]


@given(clk_arrays(max_records=12))
def test_dice_matrix_agrees_with_dice_on_python_ints(clks: np.ndarray) -> None:
    bits = bit_matrix(clks)
    scores = dice_matrix(bits, bits)
    values = [int.from_bytes(row.tobytes(), "little") for row in clks]
    for i, left in enumerate(values):
        for j, right in enumerate(values):
            total = left.bit_count() + right.bit_count()
            expected = 2 * (left & right).bit_count() / total if total else 0.0
            assert scores[i, j] == pytest.approx(expected, abs=1e-6)


def test_bit_matrix_reads_bit_i_of_word_i_over_64() -> None:
    clks = np.zeros((1, 2), dtype=np.uint64)
    clks[0, 1] = np.uint64(1 << 3)
    assert np.flatnonzero(bit_matrix(clks)[0]).tolist() == [67]


def test_views_are_the_groups_then_the_whole_record() -> None:
    layout = ClkLayout(
        groups=(GroupLayout(name="names", bits=128), GroupLayout(name="dob", bits=64))
    )
    records = EncodedRecords(clks=np.zeros((3, 3), dtype=np.uint64), layout=layout)
    views = bit_views(records)
    assert [(view.name, view.bits.shape[1]) for view in views] == [
        ("names", 128),
        ("dob", 64),
        ("whole record", 192),
    ]
    single = EncodedRecords(clks=np.zeros((3, 16), dtype=np.uint64), layout=ClkLayout.single(1024))
    assert [view.name for view in bit_views(single)] == ["record"]


def test_encodings_must_fit_their_layout() -> None:
    with pytest.raises(ValueError, match="records, 16"):
        EncodedRecords(clks=np.zeros((3, 8), dtype=np.uint64), layout=ClkLayout.single(1024))
    with pytest.raises(ValueError, match="groups the layout does not have"):
        EncodedRecords(
            clks=np.zeros((3, 16), dtype=np.uint64),
            layout=ClkLayout.single(1024),
            group_fields={"names": ("forename",)},
        )


def test_the_miner_finds_a_planted_token_and_its_holders() -> None:
    generator = np.random.default_rng(3)
    bits = (generator.random((2000, 256)) < 0.4).astype(np.float32)
    token = np.sort(generator.choice(256, size=20, replace=False))
    holders = generator.random(2000) < 0.1
    bits[np.ix_(holders, token)] = 1.0
    signatures = mine_signatures(bits)
    best = max(signatures, key=lambda item: len(set(item.bits) & set(token.tolist())))
    assert set(best.bits) == set(token.tolist())
    assert best.members[holders].all()
    assert int(best.members.sum()) - int(holders.sum()) <= 5  # chance alone: ~0.5 expected


def test_in_noise_the_miner_finds_only_small_chance_sets() -> None:
    """Sets fitted to a few records by chance are found in any data (the oracle attack
    scores on records it did not pick on, so they never count); none looks like a token."""
    bits = (np.random.default_rng(4).random((2000, 256)) < 0.4).astype(np.float32)
    signatures = mine_signatures(bits)
    assert all(len(item.bits) < 16 and item.members.sum() < 40 for item in signatures)


def test_frequency_guesses_align_ranks_and_skip_small_groups() -> None:
    encodings = ["a", "a", "a", "b", "b", "c"]
    reference = ["x", "y", "y", "y", "x", "z", "w"]
    assert frequency_guesses(encodings, reference) == ["y", "y", "y", "x", "x", "z"]
    assert frequency_guesses(encodings, reference, min_count=2)[-1] is None
    assert frequency_guesses(["a", "b"], ["x"]) == ["x", None]


def test_attribute_labels_come_from_the_schema_fields() -> None:
    labels = attribute_labels(default_schema(), ROWS)
    assert labels[Attribute.SEX].tolist() == ["f", "m", None]
    assert labels[Attribute.BIRTH_DAY].tolist() == ["07", "30", None]
    assert labels[Attribute.BIRTH_MONTH].tolist() == ["03", "11", None]
    assert labels[Attribute.BIRTH_YEAR].tolist() == ["1990", "1985", None]
    assert labels[Attribute.POSTCODE_AREA].tolist() == ["SW", "M", None]
    assert labels[Attribute.FORENAME].tolist() == ["jo", "sam", None]
    assert labels[Attribute.SURNAME].tolist() == ["smith", "smith jones", "lee"]
    dates_only = attribute_labels(default_schema(), ROWS, fields=["date_of_birth"])
    assert set(dates_only) == {Attribute.BIRTH_DAY, Attribute.BIRTH_MONTH, Attribute.BIRTH_YEAR}


def test_only_values_with_support_are_scored_and_names_are_the_most_common() -> None:
    rows = [["ann", "lee", "2000-01-02", "f", "B1 1AA"]] * 3 + [
        [f"n{index}", "lee", "2000-01-03", "m", "B1 1AA"] for index in range(7)
    ]
    table = AttributeTable.of(default_schema(), rows, min_support=3)
    assert table.values[Attribute.SEX] == ("f", "m")
    assert table.values[Attribute.FORENAME] == ("ann",)
    assert table.values[Attribute.BIRTH_DAY] == ("02", "03")


def test_score_predictions_is_precision_and_recall_per_value() -> None:
    rows = [[None, None, None, sex, None] for sex in ("f", "f", "f", "m")]
    table = AttributeTable.of(default_schema(), rows, min_support=1)
    guess = np.array(["f", "f", "m", None], dtype=object)
    scores = {s.value: s for s in score_predictions(table, {Attribute.SEX: guess})}
    assert (scores["f"].precision, scores["f"].recall) == (1.0, pytest.approx(2 / 3))
    assert (scores["m"].precision, scores["m"].recall, scores["m"].claimed) == (0.0, 0.0, 1)


def test_otsu_splits_two_clusters() -> None:
    values = np.concatenate([np.full(50, -1.0), np.full(80, 0.0)]) + np.linspace(0, 0.05, 130)
    threshold = otsu_threshold(values)
    assert -1.0 < threshold < 0.0


def test_reference_tokens_find_the_exclusive_families() -> None:
    rows = [
        ["ann", "lee", f"19{year}-0{month}-1{day}", sex, "B1 1AA"]
        for year in range(50, 60)
        for month, day, sex in ((1, 1, "f"), (2, 2, "m"))
    ]
    tokens = reference_tokens(default_schema(), rows, ["date_of_birth", "sex"], min_share=0.0)
    families = {
        tuple(sorted(tokens.items[index][1] for index in family)) for family in tokens.families
    }
    assert ("x:f", "x:m") in families
    assert ("m:01", "m:02") in families
    assert ("d:11", "d:12") in families

"""The compiled mask-row OR of the encoder run against its numpy twin."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from party.mask_rows import or_mask_rows, or_mask_rows_reference


@given(
    records=st.integers(0, 40),
    table_rows=st.integers(1, 9),
    words=st.integers(1, 5),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_or_mask_rows_agrees_with_numpy(
    records: int, table_rows: int, words: int, extra: int, seed: int
) -> None:
    generator = np.random.default_rng(seed)
    masks = generator.integers(0, 2**64, (table_rows, words), dtype=np.uint64, endpoint=False)
    rows = generator.integers(0, table_rows, records).astype(np.intp)
    clks = generator.integers(0, 2**64, (records, words + extra), dtype=np.uint64)
    start = int(generator.integers(0, extra + 1))
    expected = clks.copy()
    or_mask_rows_reference(expected, start, masks, rows)
    or_mask_rows(clks, start, masks, rows)
    assert np.array_equal(clks, expected)


def test_or_mask_rows_ors_only_its_words() -> None:
    clks = np.array([[1, 2, 4], [8, 16, 32]], dtype=np.uint64)
    masks = np.array([[0, 0], [64, 128]], dtype=np.uint64)
    or_mask_rows(clks, 1, masks, np.array([1, 0], dtype=np.intp))
    assert clks.tolist() == [[1, 66, 132], [8, 16, 32]]

"""Hypothesis strategies shared across the test suite."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

# Normalised name-like text: lower-case letters (Latin and a few others) and single spaces.
name_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzéøдж", min_size=1, max_size=12)
normalised_names = st.lists(name_words, min_size=1, max_size=3).map(" ".join)
iso_dates = st.dates().filter(lambda d: d.year >= 1000).map(lambda d: d.isoformat())
sex_values = st.sampled_from(["m", "f"])
postcodes = st.from_regex(r"[A-Z]{1,2}[0-9] [0-9][A-Z]{2}", fullmatch=True)


def maybe(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), strategy)


default_schema_records = st.tuples(
    maybe(normalised_names),
    maybe(normalised_names),
    maybe(iso_dates),
    maybe(sex_values),
    maybe(postcodes),
).map(list)


@st.composite
def clk_blocks(
    draw: st.DrawFn, *, max_rows: int = 10, max_words: int = 2, empty_rows: bool = False
) -> np.ndarray:
    """A ``(rows, words)`` uint64 block of random CLK words, some rows all zero if asked."""
    rows = draw(st.integers(min_value=1, max_value=max_rows))
    words = draw(st.integers(min_value=1, max_value=max_words))
    data = draw(st.binary(min_size=8 * rows * words, max_size=8 * rows * words))
    block = np.frombuffer(data, dtype="<u8").reshape(rows, words).astype(np.uint64)
    if empty_rows:
        zero = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
        block[np.asarray(zero, dtype=bool)] = 0
    return block

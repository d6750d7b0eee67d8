"""Hypothesis strategies shared across the test suite."""

from __future__ import annotations

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
def cost_matrices(draw: st.DrawFn, *, max_side: int = 7) -> list[list[float]]:
    """Small assignment cost matrices with ties and forbidden (infinite) pairs."""
    rows = draw(st.integers(0, max_side))
    columns = draw(st.integers(0, max_side))
    cell = st.one_of(st.integers(0, 4).map(float), st.just(float("inf")))
    return [[draw(cell) for _ in range(columns)] for _ in range(rows)]

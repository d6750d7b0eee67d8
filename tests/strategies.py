"""Hypothesis strategies shared across the test suite."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from linkage_unit.clustering import PartyRecords
from linkage_unit.similarity import CandidatePairs
from linkage_unit.solving import PartyPairs

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


# -- clustering problems (linkage_unit/clustering.py) -------------------------------------
# Scores from a short list so that ties, exact-threshold scores and below-threshold pairs
# are common; the threshold is 0.75.
CLUSTERING_THRESHOLD = 0.75
_CLUSTER_SCORES = [0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0]


@st.composite
def clustering_problems(draw: st.DrawFn) -> tuple[list[PartyRecords], list[PartyPairs]]:
    """(parties, party pairs) for ``cluster_records``: one to four parties, each deduplicated
    or not, up to seven records each, pairs across parties and within deduplicated ones."""
    count = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=count, max_size=count, unique=True))
    parties = [
        PartyRecords(name=name, size=draw(st.integers(0, 7)), deduplicated=draw(st.booleans()))
        for name in names
    ]
    items = []
    for i, left in enumerate(parties):
        for j in range(i, count):
            right = parties[j]
            if not (left.size and right.size) or (i == j and not left.deduplicated):
                continue
            edges = draw(
                st.lists(
                    st.tuples(
                        st.integers(0, left.size - 1),
                        st.integers(0, right.size - 1),
                        st.sampled_from(_CLUSTER_SCORES),
                    ),
                    unique_by=lambda edge: (edge[0], edge[1]),
                    max_size=14,
                )
            )
            if i == j:
                edges = [edge for edge in edges if edge[0] != edge[1]]
            if not edges:
                continue
            lefts, rights, scores = zip(*edges, strict=True)
            pairs = CandidatePairs(
                left=np.array(lefts, np.int64),
                right=np.array(rights, np.int64),
                scores=np.array(scores, np.float32),
                comparisons=0,
            )
            items.append(PartyPairs(left_party=i, right_party=j, pairs=pairs))
    return parties, items


@st.composite
def cost_matrices(draw: st.DrawFn, *, max_side: int = 7) -> list[list[float]]:
    """Small assignment cost matrices with ties and forbidden (infinite) pairs."""
    rows = draw(st.integers(0, max_side))
    columns = draw(st.integers(0, max_side))
    cell = st.one_of(st.integers(0, 4).map(float), st.just(float("inf")))
    return [[draw(cell) for _ in range(columns)] for _ in range(rows)]

"""Hypothesis strategies shared across the test suite."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from protocol.clk_layout import ClkLayout, GroupLayout

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
def clk_layouts(draw: st.DrawFn, *, max_groups: int = 4, max_words: int = 3) -> ClkLayout:
    """Layouts of 1 to ``max_groups`` field groups of 1 to ``max_words`` words each."""
    words = draw(st.lists(st.integers(1, max_words), min_size=1, max_size=max_groups))
    return ClkLayout(
        groups=tuple(
            GroupLayout(name=f"group-{number}", bits=64 * count)
            for number, count in enumerate(words)
        )
    )


@st.composite
def level_problems(
    draw: st.DrawFn, *, max_pairs: int = 60, max_groups: int = 3, max_jobs: int = 2
) -> dict[str, Any]:
    """Small EM inputs for the Fellegi-Sunter fit: levels of candidate pairs per group, the
    party pair of each, random-pair level counts and comparable pairs per party pair."""
    groups = draw(st.integers(1, max_groups))
    cut_counts = draw(st.lists(st.integers(0, 3), min_size=groups, max_size=groups))
    jobs = draw(st.integers(1, max_jobs))
    pairs = draw(st.integers(0, max_pairs))
    seed = draw(st.integers(0, 2**32 - 1))
    generator = np.random.default_rng(seed)
    levels = (
        np.stack([generator.integers(0, cuts + 3, pairs) for cuts in cut_counts], axis=1)
        .astype(np.uint8)
        .reshape(pairs, groups)
    )
    random_counts = [generator.integers(0, 500, cuts + 3).astype(np.float64) for cuts in cut_counts]
    return {
        "cuts": cut_counts,
        "levels": levels,
        "jobs": generator.integers(0, jobs, pairs).astype(np.int64),
        "random_counts": random_counts,
        "identical_rates": [
            draw(st.one_of(st.none(), st.floats(1e-6, 0.2))) for _ in range(groups)
        ],
        "comparable_pairs": [int(x) for x in generator.integers(max(pairs, 1), 10_000, jobs)],
        "max_matches": [float(x) for x in generator.uniform(1, 20, jobs)],
    }

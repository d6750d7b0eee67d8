"""Hypothesis strategies shared across the test suite."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

from linkage_unit.clustering import PartyRecords
from linkage_unit.similarity import CandidatePairs
from linkage_unit.solving import PartyPairs
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
def clk_layouts(
    draw: st.DrawFn, *, max_groups: int = 4, max_words: int = 3, hardened: bool = False
) -> ClkLayout:
    """Layouts of 1 to ``max_groups`` field groups of 1 to ``max_words`` words each; with
    ``hardened``, each group's hardening descriptor drawn from plain, diffused and others."""
    words = draw(st.lists(st.integers(1, max_words), min_size=1, max_size=max_groups))
    hardening = [draw(st.sampled_from(LAYOUT_HARDENINGS)) if hardened else "none" for _ in words]
    return ClkLayout(
        groups=tuple(
            GroupLayout(name=f"group-{number}", bits=64 * count, hardening=chain)
            for number, (count, chain) in enumerate(zip(words, hardening, strict=True))
        )
    )


LAYOUT_HARDENINGS = (
    "none",
    "xor-fold",
    "balance",
    "rule90",
    "diffusion:width=3,output_bits=128",
    "nonlinear-diffusion:width=2,output_bits=64",
    "nonlinear-diffusion:width=3,output_bits=1024+blip:flip_per_65536=100",
    "blip:flip_per_65536=100",
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


# JSON documents as the canonical form holds them: any text (lone surrogates excluded),
# numbers within +-(2**53 - 1), nested arrays and objects.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-(2**53 - 1), max_value=2**53 - 1),
    st.text(alphabet=st.characters(exclude_categories=["Cs"])),
)
json_documents = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=["Cs"])), children, max_size=4
        ),
    ),
    max_leaves=12,
)
# What audit entries and manifests hold: ASCII text, whole numbers below 2**53, booleans
# (a manifest's unkeyed_check), null.
ascii_documents = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=0, max_value=2**53 - 1),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


# -- clustering problems (linkage_unit/clustering.py) -------------------------------------
# Scores from a short list so that ties, exact-threshold scores and below-threshold pairs
# are common; the threshold is 0.75.
CLUSTERING_THRESHOLD = 0.75
_CLUSTER_SCORES = [0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0]


def _scored_pairs(
    draw: st.DrawFn, left: PartyRecords, right: PartyRecords, *, within: bool
) -> CandidatePairs | None:
    """Up to 14 distinct scored pairs between two parties (or within one), or None."""
    if not (left.size and right.size):
        return None
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
    if within:
        edges = [edge for edge in edges if edge[0] != edge[1]]
    if not edges:
        return None
    lefts, rights, scores = zip(*edges, strict=True)
    return CandidatePairs(
        left=np.array(lefts, np.int64),
        right=np.array(rights, np.int64),
        scores=np.array(scores, np.float32),
        comparisons=0,
    )


def _draw_party(draw: st.DrawFn, name: str, *, deduplicated: bool | None = None) -> PartyRecords:
    flag = draw(st.booleans()) if deduplicated is None else deduplicated
    # Sometimes a deduplicated party's own pairs are cut elsewhere than pairs across parties.
    own = draw(st.sampled_from([None, 0.7, 0.8])) if flag else None
    return PartyRecords(
        name=name, size=draw(st.integers(0, 7)), deduplicated=flag, own_threshold=own
    )


def _all_pairs(
    draw: st.DrawFn, parties: list[PartyRecords], *, skip_within: int | None = None
) -> list[PartyPairs]:
    """Pairs between every two parties and within each deduplicated one (but ``skip_within``)."""
    items = []
    for i, left in enumerate(parties):
        for j in range(i, len(parties)):
            if i == j and (not left.deduplicated or i == skip_within):
                continue
            pairs = _scored_pairs(draw, left, parties[j], within=i == j)
            if pairs is not None:
                items.append(PartyPairs(left_party=i, right_party=j, pairs=pairs))
    return items


@st.composite
def clustering_problems(draw: st.DrawFn) -> tuple[list[PartyRecords], list[PartyPairs]]:
    """(parties, party pairs) for ``cluster_records``: one to four parties, each deduplicated
    or not, up to seven records each, pairs across parties and within deduplicated ones."""
    count = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=count, max_size=count, unique=True))
    parties = [_draw_party(draw, name) for name in names]
    return parties, _all_pairs(draw, parties)


@st.composite
def clustering_worlds(
    draw: st.DrawFn,
) -> tuple[list[PartyRecords], list[PartyPairs], list[PartyRecords], list[PartyPairs]]:
    """Two clustering problems that share one deduplicated party, ``parties[0]`` in both, and
    its pairs within itself, and nothing else: the other parties (how many, their names,
    sizes and link models), their own pairs and every pair across parties are drawn afresh
    for each. Returns (parties, pairs) of one world, then of the other."""
    observer = _draw_party(draw, "m", deduplicated=True)
    own = _scored_pairs(draw, observer, observer, within=True)
    own_items = [] if own is None else [PartyPairs(left_party=0, right_party=0, pairs=own)]

    def world() -> tuple[list[PartyRecords], list[PartyPairs]]:
        count = draw(st.integers(0, 3))
        # Names on both sides of "m", so the observer's canonical numbers move too.
        names = draw(
            st.lists(st.sampled_from("abxyz"), min_size=count, max_size=count, unique=True)
        )
        parties = [observer, *(_draw_party(draw, name) for name in names)]
        return parties, own_items + _all_pairs(draw, parties, skip_within=0)

    (first_parties, first_pairs), (second_parties, second_pairs) = world(), world()
    return first_parties, first_pairs, second_parties, second_pairs


@st.composite
def cost_matrices(draw: st.DrawFn, *, max_side: int = 7) -> list[list[float]]:
    """Small assignment cost matrices with ties and forbidden (infinite) pairs."""
    rows = draw(st.integers(0, max_side))
    columns = draw(st.integers(0, max_side))
    cell = st.one_of(st.integers(0, 4).map(float), st.just(float("inf")))
    return [[draw(cell) for _ in range(columns)] for _ in range(rows)]


# Packed CLKs (uint64, bit i in word i // 64): generators and strategies.
def random_clks(
    generator: np.random.Generator, records: int, *, words: int = 16, density: float = 0.45
) -> npt.NDArray[np.uint64]:
    bits = generator.random((records, words * 64)) < density
    return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(records, words)


def noisy_copies(
    generator: np.random.Generator, clks: npt.NDArray[np.uint64], flip: float
) -> npt.NDArray[np.uint64]:
    mask = random_clks(generator, len(clks), words=clks.shape[1], density=flip)
    return clks ^ mask


@st.composite
def clk_arrays(draw: st.DrawFn, *, max_records: int = 40, words: int = 2) -> npt.NDArray[np.uint64]:
    """Small CLK arrays with structure: low popcounts, near-duplicates and empty CLKs occur."""
    records = draw(st.integers(0, max_records))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9]))
    generator = np.random.default_rng(seed)
    clks = random_clks(generator, records, words=words, density=density)
    if records > 1 and draw(st.booleans()):
        clks[records // 2 :] = noisy_copies(generator, clks[: records - records // 2], 0.05)
    return clks


def grouped_parties(
    generator: np.random.Generator,
    layout: ClkLayout,
    *,
    left: int,
    right: int,
    shared: int,
    flip: float = 0.03,
    missing: float = 0.05,
    changed: float = 0.08,
    exact: float = 0.5,
    density: float = 0.3,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Two parties' encodings of several field groups (``layout``): the first ``shared``
    records of ``right`` are the first ``shared`` of ``left`` again, each group independently
    exact (``exact``), missing on the right (all zero, ``missing``), another value
    (``changed``) or a noisy copy (``flip`` of its bits flipped)."""
    left_clks = random_clks(generator, left, words=layout.total_words, density=density)
    right_clks = random_clks(generator, right, words=layout.total_words, density=density)
    for g in range(len(layout.groups)):
        start, stop = layout.word_range(g)
        copy = left_clks[:shared, start:stop].copy()
        draw = generator.random(shared)
        noisy = draw >= exact + missing + changed
        copy[noisy] = noisy_copies(generator, copy[noisy], flip)
        is_changed = (draw >= exact + missing) & ~noisy
        copy[is_changed] = random_clks(
            generator, int(is_changed.sum()), words=stop - start, density=density
        )
        copy[(draw >= exact) & (draw < exact + missing)] = 0
        right_clks[:shared, start:stop] = copy
    return left_clks, right_clks

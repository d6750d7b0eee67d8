"""Blocking: the first stage of matching (**block** -> compare -> solve).

Hamming LSH by bit sampling on the CLKs themselves. Each of ``bands`` bands samples
``bits_per_band`` bit positions; a record's block key in a band is those bits. Two records
become a candidate pair when they share a block key in at least one band (multi-pass union).
For two CLKs agreeing on a fraction ``q`` of their bits, one band collides with probability
``q ** bits_per_band``, so the chance of missing the pair entirely is
``(1 - q ** bits_per_band) ** bands``.

The bit positions are drawn from the linkage unit's own randomness (a per-project seed the
service keeps), never from anything a party holds. Records are grouped by block key per band
and every block is compared by a compiled kernel, block x block; a pair that also collides in
an earlier band is skipped there, so the union holds each pair once.

Blocks with more than ``max_block_comparisons`` pairs (a frequent key: many near-identical
CLKs) are not compared; they are counted in :class:`BlockingPlan` so a run can report what it
skipped. Nothing is dropped silently. Before any comparison the plan gives the exact number of
block comparisons, a memory figure and a time estimate.
"""

from __future__ import annotations

import math
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.similarity import (
    DEFAULT_MAX_CANDIDATE_PAIRS,
    CandidatePairs,
    _add_shared_bits,
    _scores,
    candidate_pairs,
    candidate_pairs_within,
    check_clks,
    check_threshold,
    default_workers,
    popcounts,
    required_shared,
)
from protocol.errors import MatchingError
from protocol.messages import BlockingMode

__all__ = [
    "BLOCK_COMPARISONS_PER_SECOND",
    "BlockingIndex",
    "BlockingMode",
    "BlockingPlan",
    "BlockingSettings",
    "EXHAUSTIVE_BELOW_COMPARISONS",
    "EXHAUSTIVE_PAIR_COST",
    "LshShape",
    "blocking_cost",
    "blocking_settings_for",
    "choose_lsh_shape",
    "choose_lsh_shape_reference",
    "fit_blocking_settings",
    "generate_candidates",
    "pair_completeness",
    "reduction_ratio",
    "sample_band_positions",
    "uses_lsh",
]

EXHAUSTIVE_BELOW_COMPARISONS = 20_000 * 20_000
"""``BlockingMode.AUTO`` compares exhaustively up to this many pairs: the tiled kernel does
them in well under a second, faster than building blocks."""

BLOCK_COMPARISONS_PER_SECOND = 250_000_000
"""Per thread, for the time estimate: the per-pair block kernel measured about 300 M/s here."""

_CAPACITY = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockingSettings:
    """LSH shape. By default (``fit_to_data``) the shape is chosen per comparison from the
    CLKs and the run's threshold; ``bands`` and ``bits_per_band`` are the fixed shape used
    when ``fit_to_data`` is False. A fixed shape keeps its recall only near the threshold it
    was tuned for: 128 x 14 missed 4.8 % of the pairs at Dice 0.7 on 20k x 20k synth medium
    (default schema), where the fitted shape kept 99.992 % (``benchmarks/blocking_fit.py``;
    docs/benchmarks.md). At density 0.5 a pair at exactly Dice 0.8 agrees on 80 % of bits and
    128 x 14 misses it with probability (1 - 0.8**14) ** 128 ~ 0.3 %."""

    bands: int = 128
    bits_per_band: int = 14
    max_block_comparisons: int = 25_000_000
    fit_to_data: bool = True
    """True: ``bands`` and ``bits_per_band`` are replaced, per comparison, by the shape
    :func:`fit_blocking_settings` chooses from the CLKs' bit density and the run's threshold
    (``target_recall`` at that threshold, fewest expected comparisons)."""
    target_recall: float = 0.999

    def __post_init__(self) -> None:
        if not (0.0 < self.target_recall < 1.0):
            raise MatchingError("target_recall must be in (0, 1)")
        if not (1 <= self.bands <= 1024):
            raise MatchingError("bands must be between 1 and 1024")
        if not (1 <= self.bits_per_band <= 64):
            raise MatchingError("bits_per_band must be between 1 and 64")
        if self.max_block_comparisons < 1:
            raise MatchingError("max_block_comparisons must be >= 1")
        if self.fit_to_data and (self.bands, self.bits_per_band) != (128, 14):
            # Never silently replace a shape someone chose.
            raise MatchingError(
                "a fixed LSH shape (bands, bits_per_band) needs fit_to_data=False; with "
                "fit_to_data the shape is fitted to each comparison"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockingPlan:
    """What a blocked comparison will cost, known before it runs."""

    bands: int
    bits_per_band: int
    exhaustive_comparisons: int
    block_comparisons: int
    """Pairs the kernel will score, summed over bands (a pair in k bands counts k times)."""
    largest_block_comparisons: int
    oversized_blocks: int
    oversized_comparisons: int
    """Pairs in oversized blocks, not compared (their pairs may still meet in other bands)."""
    estimated_seconds: float
    estimated_memory_bytes: int

    @property
    def reduction_ratio(self) -> float:
        return reduction_ratio(self.block_comparisons, self.exhaustive_comparisons)


def reduction_ratio(comparisons: int, exhaustive_comparisons: int) -> float:
    """1 - comparisons / exhaustive comparisons (1.0 when there is nothing to compare)."""
    if exhaustive_comparisons <= 0:
        return 1.0
    return 1.0 - comparisons / exhaustive_comparisons


def pair_completeness(found: CandidatePairs, exhaustive: CandidatePairs) -> float:
    """Share of the exhaustive candidate pairs that ``found`` also holds (1.0 if none)."""
    if len(exhaustive) == 0:
        return 1.0
    width = int(max(exhaustive.right.max(initial=0), found.right.max(initial=0))) + 1
    wanted = exhaustive.left * width + exhaustive.right
    have = found.left * width + found.right
    return float(np.isin(wanted, have).mean())


@dataclass(frozen=True, slots=True, kw_only=True)
class LshShape:
    """An LSH shape and what the independent-bit model expects of it at one threshold.

    For CLKs of bit density ``p`` (share of bits set), two records at exactly Dice ``d``
    differ on ``2 p (1 - d)`` of their bits, so a band of ``k`` sampled bits collides with
    probability ``q ** k``, ``q = 1 - 2 p (1 - d)``; a random pair agrees on a bit with
    probability ``r = p**2 + (1 - p)**2``. ``miss_probability`` is ``(1 - q**k) ** bands``
    for a pair at the threshold (pairs above it are missed less often); ``cost`` is in units of
    one pair comparison: per band, the pairs expected to share a key plus the per-record work
    of building and grouping keys."""

    bands: int
    bits_per_band: int
    miss_probability: float
    expected_comparisons: float
    cost: float


RECORD_COST_IN_COMPARISONS = 8.0
"""Per band, building and grouping one record's key costs about this many pair comparisons
(key extraction and counting sort ~20-30 ns a record against ~3-4 ns a pair here)."""

_MAX_BANDS = 1024
_MAX_BITS_PER_BAND = 64


def _shape_terms(bit_density: float, threshold: float) -> tuple[float, float]:
    if not (0.0 < bit_density < 1.0):
        raise MatchingError("bit_density must be in (0, 1)")
    check_threshold(threshold)
    agree_at_threshold = min(1.0, max(0.0, 1.0 - 2.0 * bit_density * (1.0 - threshold)))
    agree_random = bit_density**2 + (1.0 - bit_density) ** 2
    return agree_at_threshold, agree_random


def _shape(
    bands: int,
    bits: int,
    q: float,
    r: float,
    pairs: int,
    records: int,
    record_cost: float = RECORD_COST_IN_COMPARISONS,
) -> LshShape:
    collide = q**bits
    miss = (1.0 - collide) ** bands
    expected = bands * pairs * r**bits
    return LshShape(
        bands=bands,
        bits_per_band=bits,
        miss_probability=miss,
        expected_comparisons=expected,
        cost=expected + bands * record_cost * records,
    )


def _refuse_unreachable(target_recall: float, threshold: float) -> MatchingError:
    return MatchingError(
        f"no LSH shape of at most {_MAX_BANDS} bands reaches recall {target_recall} at "
        f"threshold {threshold}: raise the threshold or block with set bands"
    )


def choose_lsh_shape(
    *,
    bit_density: float,
    threshold: float,
    pairs: int,
    records: int,
    clk_bits: int,
    target_recall: float = 0.999,
    record_cost: float = RECORD_COST_IN_COMPARISONS,
    max_bits_per_band: int = _MAX_BITS_PER_BAND,
) -> LshShape:
    """The cheapest shape (fewest comparisons plus key building) whose miss probability at
    ``threshold`` is at most ``1 - target_recall``. ``pairs``: the exhaustive comparisons;
    ``records``: both sides' records (one side's when it is compared with itself).
    ``record_cost``: one record's key building per band in comparisons (the kernel that
    compares the blocks decides it); ``max_bits_per_band``: the widest band tried.

    Per bits-per-band ``k`` the fewest bands is solved in closed form,
    ``ceil(log(1 - target) / log(1 - q**k))``, then nudged so the model's own miss figure
    decides; :func:`choose_lsh_shape_reference` is the obvious grid search it must agree with.
    """
    q, r = _shape_terms(bit_density, threshold)
    allowed = 1.0 - target_recall
    best: LshShape | None = None
    for bits in range(1, min(max_bits_per_band, clk_bits) + 1):
        collide = q**bits
        if collide <= 0.0:
            break
        if collide >= 1.0:
            bands = 1
        else:
            estimate = math.log(allowed) / math.log1p(-collide)
            if estimate > _MAX_BANDS + 1:
                continue
            bands = max(1, math.ceil(estimate))
            while bands > 1 and (1.0 - collide) ** (bands - 1) <= allowed:
                bands -= 1
            while bands <= _MAX_BANDS and (1.0 - collide) ** bands > allowed:
                bands += 1
            if bands > _MAX_BANDS:
                continue
        shape = _shape(bands, bits, q, r, pairs, records, record_cost)
        if best is None or (shape.cost, shape.bands) < (best.cost, best.bands):
            best = shape
    if best is None:
        raise _refuse_unreachable(target_recall, threshold)
    return best


def choose_lsh_shape_reference(
    *,
    bit_density: float,
    threshold: float,
    pairs: int,
    records: int,
    clk_bits: int,
    target_recall: float = 0.999,
    record_cost: float = RECORD_COST_IN_COMPARISONS,
    max_bits_per_band: int = _MAX_BITS_PER_BAND,
) -> LshShape:
    """Slow twin of :func:`choose_lsh_shape`: every (bands, bits) pair, the cheapest that
    meets the target (ties: fewer bands)."""
    q, r = _shape_terms(bit_density, threshold)
    allowed = 1.0 - target_recall
    feasible = [
        _shape(bands, bits, q, r, pairs, records, record_cost)
        for bits in range(1, min(max_bits_per_band, clk_bits) + 1)
        for bands in range(1, _MAX_BANDS + 1)
    ]
    feasible = [shape for shape in feasible if shape.miss_probability <= allowed]
    if not feasible:
        raise _refuse_unreachable(target_recall, threshold)
    return min(feasible, key=lambda shape: (shape.cost, shape.bands))


DENSITY_QUANTILE = 0.9
"""The shape is fitted to the density of the denser records (this quantile of popcount /
clk_bits, both sides pooled): at a fixed Dice, denser CLKs differ on more bits."""


EXHAUSTIVE_PAIR_COST = 0.2
"""One pair compared by the tiled exhaustive kernel, in block comparisons (the unit of
:attr:`LshShape.cost`): ``benchmarks/match.py`` measured the tiled kernel at 1.57-1.66 G pairs/s
a thread on AMD EPYC Zen 4 (AVX-512), the per-block kernel at about 300 M/s."""


def _fitted_shape(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    settings: BlockingSettings,
    record_cost: float = RECORD_COST_IN_COMPARISONS,
    max_bits_per_band: int = _MAX_BITS_PER_BAND,
) -> tuple[LshShape, int]:
    """The shape :func:`choose_lsh_shape` picks for these CLKs at ``threshold``, and the
    exhaustive comparisons it is weighed against."""
    clk_bits = 64 * left.shape[1]
    sides = [left] if right is None else [left, right]
    counts = np.concatenate([popcounts(side) for side in sides])
    density = float(np.quantile(counts, DENSITY_QUANTILE)) / clk_bits if len(counts) else 0.5
    density = min(max(density, 1.0 / clk_bits), 1.0 - 1.0 / clk_bits)
    n_left = len(left)
    n_right = n_left if right is None else len(right)
    pairs = n_left * (n_left - 1) // 2 if right is None else n_left * n_right
    shape = choose_lsh_shape(
        bit_density=density,
        threshold=threshold,
        pairs=pairs,
        records=n_left if right is None else n_left + n_right,
        clk_bits=clk_bits,
        target_recall=settings.target_recall,
        record_cost=record_cost,
        max_bits_per_band=max_bits_per_band,
    )
    return shape, pairs


def fit_blocking_settings(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    settings: BlockingSettings,
) -> BlockingSettings:
    """``settings`` with the bands and bits per band :func:`choose_lsh_shape` picks for these
    CLKs at ``threshold`` (``right`` None: one party with itself)."""
    shape, _ = _fitted_shape(left, right, threshold, settings)
    return _fixed(settings, shape)


def _fixed(settings: BlockingSettings, shape: LshShape) -> BlockingSettings:
    """``settings`` fixed to ``shape`` (no further fitting)."""
    return BlockingSettings(
        bands=shape.bands,
        bits_per_band=shape.bits_per_band,
        max_block_comparisons=settings.max_block_comparisons,
        fit_to_data=False,
        target_recall=settings.target_recall,
    )


def blocking_settings_for(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    settings: BlockingSettings,
    *,
    record_cost: float = RECORD_COST_IN_COMPARISONS,
    max_bits_per_band: int = _MAX_BITS_PER_BAND,
) -> BlockingSettings | None:
    """The shape one comparison blocks with: fitted to these CLKs when ``settings`` asks for
    it, else ``settings`` as they are. None: compare every pair instead, because the fitted
    shape would cost more than that (a low threshold: at 100k x 100k and Dice 0.54 the model
    expects 4.5e10 block comparisons of the fitted shape against 1e10 pairs; a 200k x 200k run
    of the default schema, candidate cut 0.555, compared every pair this way) or no shape
    reaches the target recall; comparing every pair has recall 1. In-process and Dask
    compares both call this. ``record_cost`` and ``max_bits_per_band``: as
    :func:`choose_lsh_shape` takes them, for a kernel other than ``BlockingIndex``'s."""
    if not settings.fit_to_data or len(left) == 0:
        return settings
    try:
        shape, pairs = _fitted_shape(
            left, right, threshold, settings, record_cost, max_bits_per_band
        )
    except MatchingError:
        return None
    if shape.cost >= EXHAUSTIVE_PAIR_COST * pairs:
        return None
    return _fixed(settings, shape)


def blocking_cost(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    settings: BlockingSettings,
) -> float | None:
    """What comparing at ``threshold`` as :func:`blocking_settings_for` decides costs, in
    block comparisons (:attr:`LshShape.cost`): the fitted shape, or every pair where that is
    cheaper or no shape reaches the target recall. None: the operator fixed the shape."""
    if not settings.fit_to_data:
        return None
    n_left = len(left)
    n_right = n_left if right is None else len(right)
    every_pair = EXHAUSTIVE_PAIR_COST * (
        n_left * (n_left - 1) // 2 if right is None else n_left * n_right
    )
    if n_left == 0:
        return 0.0
    try:
        shape, _ = _fitted_shape(left, right, threshold, settings)
    except MatchingError:
        return every_pair
    return min(shape.cost, every_pair)


def sample_band_positions(
    clk_bits: int, settings: BlockingSettings, seed: int | None = None
) -> npt.NDArray[np.int64]:
    """``(bands, bits_per_band)`` bit positions, distinct within a band.

    ``seed`` is the linkage unit's per-project blocking seed; None draws a fresh one from
    ``secrets`` (tests pass a fixed one).
    """
    if settings.bits_per_band > clk_bits:
        raise MatchingError("bits_per_band exceeds the CLK length")
    generator = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    return np.stack(
        [
            np.sort(generator.choice(clk_bits, size=settings.bits_per_band, replace=False))
            for _ in range(settings.bands)
        ]
    ).astype(np.int64)


@numba.njit(nogil=True, cache=True)
def _band_keys(  # pragma: no cover - compiled
    clks: npt.NDArray[np.uint64], positions: npt.NDArray[np.int64], out: npt.NDArray[np.uint64]
) -> None:
    for record in range(clks.shape[0]):
        for band in range(positions.shape[0]):
            key = np.uint64(0)
            for k in range(positions.shape[1]):
                position = positions[band, k]
                bit = (clks[record, position >> 6] >> np.uint64(position & 63)) & np.uint64(1)
                key |= bit << np.uint64(k)
            out[record, band] = key


def _keys(
    clks: npt.NDArray[np.uint64],
    positions: npt.NDArray[np.int64],
    pool: ThreadPoolExecutor | None = None,
    parts: int = 1,
) -> npt.NDArray[np.uint64]:
    """Every record's key in every band of ``positions``: ``(records, bands)``, each band's
    column contiguous (a band is blocked alone: no copy of it is needed); with a ``pool``,
    ``parts`` slices of the records at once (the kernel holds no GIL)."""
    out = np.empty((positions.shape[0], clks.shape[0]), np.uint64).T
    if not clks.shape[0]:
        return out
    step = -(-clks.shape[0] // max(parts, 1))
    if pool is None or step >= clks.shape[0]:
        _band_keys(clks, positions, out)
        return out

    def part(start: int) -> None:
        _band_keys(clks[start : start + step], positions, out[start : start + step])

    list(pool.map(part, range(0, clks.shape[0], step)))
    return out


@numba.njit(nogil=True, cache=True)
def _gather(  # pragma: no cover - compiled
    clks: npt.NDArray[np.uint64], members: npt.NDArray[np.int64], word_major: bool
) -> npt.NDArray[np.uint64]:
    """CLKs in band order, so each block's members are contiguous: ``(records, words)``, or
    ``(words, records)`` when ``word_major`` (the layout the vectorised inner loop reads)."""
    words = clks.shape[1]
    if word_major:
        out = np.empty((words, members.shape[0]), np.uint64)
        for position in range(members.shape[0]):
            record = members[position]
            for w in range(words):
                out[w, position] = clks[record, w]
        return out
    out = np.empty((members.shape[0], words), np.uint64)
    for position in range(members.shape[0]):
        record = members[position]
        for w in range(words):
            out[position, w] = clks[record, w]
    return out


@numba.njit(nogil=True, cache=True)
def _compare_blocks(  # pragma: no cover - compiled
    left: npt.NDArray[np.uint64],
    right_word_major: npt.NDArray[np.uint64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
    required: npt.NDArray[np.int32],
    left_members: npt.NDArray[np.int64],
    left_starts: npt.NDArray[np.int64],
    left_stops: npt.NDArray[np.int64],
    right_members: npt.NDArray[np.int64],
    right_starts: npt.NDArray[np.int64],
    right_stops: npt.NDArray[np.int64],
    within: bool,
    resume_block: int,
    resume_offset: int,
    out_rows: npt.NDArray[np.int64],
    out_cols: npt.NDArray[np.int64],
    out_shared: npt.NDArray[np.int32],
    acc: npt.NDArray[np.uint64],
) -> tuple[int, int, int, int]:
    """Every pair inside each block of one band; returns (kept, compared, next_block,
    next_offset), next_block == -1 when done. Stops before a left record whose block row
    might overflow the caller's buffers (capacity >= the largest block side).

    ``left`` (row-major) and ``right_word_major`` are in band order (see :func:`_gather`):
    position p is record ``members[p]``, so a block is a contiguous run (gathering the left
    side too measured faster than reading its records where they lie). One left record
    against its block's right records is the word-major loop of ``similarity.py``, which
    LLVM vectorises; ``acc`` holds at least the largest block side."""
    capacity = out_rows.shape[0]
    kept = 0
    compared = 0
    for block in range(resume_block, left_starts.shape[0]):
        start = left_starts[block]
        stop = left_stops[block]
        first = resume_offset if block == resume_block else start
        for position in range(first, stop):
            r_start = right_starts[block]
            r_stop = right_stops[block]
            if within:
                r_start = position + 1
            width = r_stop - r_start
            if width <= 0:
                continue
            if kept + width > capacity:
                return kept, compared, block, position
            compared += width
            _add_shared_bits(left[position], right_word_major, r_start, r_stop, acc)
            count_a = left_counts[position]
            for j in range(width):
                other = r_start + j
                if acc[j] >= np.uint64(required[count_a + right_counts[other]]):
                    out_rows[kept] = left_members[position]
                    out_cols[kept] = right_members[other]
                    out_shared[kept] = acc[j]
                    kept += 1
    return kept, compared, -1, -1


@dataclass(frozen=True, slots=True)
class _Band:
    left_members: npt.NDArray[np.int64]
    left_starts: npt.NDArray[np.int64]
    left_stops: npt.NDArray[np.int64]
    right_members: npt.NDArray[np.int64]
    right_starts: npt.NDArray[np.int64]
    right_stops: npt.NDArray[np.int64]
    comparisons: int
    largest: int
    largest_side: int
    oversized_blocks: int
    oversized_comparisons: int


GATHER_RECORDS = 1 << 18
"""Records per side gathered at once (32 MiB of 1024-bit CLKs): a thread's copy stays this
size however large the parties are."""

_DENSE_KEY_BITS = 20
"""Up to this many bits per band, block keys index a dense table (2^20 entries at most) and
records are grouped by a counting sort in one pass instead of an argsort per side."""


@numba.njit(nogil=True, cache=True)
def _counting_sort(  # pragma: no cover - compiled
    keys: npt.NDArray[np.uint64], size: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(order, starts, counts): records stably grouped by key; key k's members are
    order[starts[k]:starts[k] + counts[k]]."""
    counts = np.zeros(size, np.int64)
    for record in range(keys.shape[0]):
        counts[keys[record]] += 1
    starts = np.empty(size, np.int64)
    total = 0
    for key in range(size):
        starts[key] = total
        total += counts[key]
    cursor = starts.copy()
    order = np.empty(keys.shape[0], np.int64)
    for record in range(keys.shape[0]):
        key = keys[record]
        order[cursor[key]] = record
        cursor[key] += 1
    return order, starts, counts


def _groups(
    keys: npt.NDArray[np.uint64], key_bits: int
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """(order, keys present, their starts in order, their counts), keys ascending."""
    if key_bits <= _DENSE_KEY_BITS:
        order, starts, counts = _counting_sort(keys, 1 << key_bits)
        present = np.flatnonzero(counts)
        return order, present.astype(np.uint64), starts[present], counts[present]
    order = np.argsort(keys, kind="stable").astype(np.int64)
    ordered = keys[order]
    unique, starts, counts = np.unique(ordered, return_index=True, return_counts=True)
    return order, unique, starts.astype(np.int64), counts.astype(np.int64)


def _common_keys(
    left_unique: npt.NDArray[np.uint64], right_unique: npt.NDArray[np.uint64], key_bits: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where the keys both sides hold sit in each side's ascending unique keys (as
    ``np.intersect1d(..., return_indices=True)``). Dense keys look each other up in a table
    instead of sorting both lists together: a tenth of a second a band at 1M records."""
    if key_bits > _DENSE_KEY_BITS:
        _, left_index, right_index = np.intersect1d(
            left_unique, right_unique, assume_unique=True, return_indices=True
        )
        return left_index.astype(np.int64), right_index.astype(np.int64)
    place = np.full(1 << key_bits, -1, np.int64)
    place[right_unique] = np.arange(len(right_unique), dtype=np.int64)
    found = place[left_unique]
    left_index = np.flatnonzero(found >= 0)
    return left_index, found[left_index]


def _build_band(
    left_keys: npt.NDArray[np.uint64],
    right_keys: npt.NDArray[np.uint64] | None,
    cap: int,
    key_bits: int = 64,
) -> _Band:
    """One band's blocks: records grouped by key, the keys both sides hold (or, within one
    party, the keys of two records or more), blocks of more than ``cap`` comparisons
    skipped and counted. ``BlockingIndex`` and group blocking's LSH part both use it."""
    left_order, left_unique, left_starts, left_counts = _groups(left_keys, key_bits)
    if right_keys is None:
        keep = left_counts >= 2
        starts, counts = left_starts[keep], left_counts[keep]
        sizes = counts * (counts - 1) // 2
        right_order, right_starts, right_counts = left_order, starts, counts
        left_starts, left_counts = starts, counts
    else:
        right_order, right_unique, right_starts_all, right_counts_all = _groups(
            right_keys, key_bits
        )
        left_index, right_index = _common_keys(left_unique, right_unique, key_bits)
        left_starts, left_counts = left_starts[left_index], left_counts[left_index]
        right_starts = right_starts_all[right_index]
        right_counts = right_counts_all[right_index]
        sizes = left_counts * right_counts
    oversized = sizes > cap
    keep = ~oversized
    left_starts, left_counts = left_starts[keep], left_counts[keep]
    right_starts, right_counts = right_starts[keep], right_counts[keep]
    kept_sizes = sizes[keep]
    largest_side = int(max(left_counts.max(initial=0), right_counts.max(initial=0)))
    return _Band(
        left_members=left_order,
        left_starts=left_starts,
        left_stops=left_starts + left_counts,
        right_members=right_order,
        right_starts=right_starts,
        right_stops=right_starts + right_counts,
        comparisons=int(kept_sizes.sum()),
        largest=int(kept_sizes.max(initial=0)),
        largest_side=largest_side,
        oversized_blocks=int(oversized.sum()),
        oversized_comparisons=int(sizes[oversized].sum()),
    )


class BlockingIndex:
    """Blocking for one comparison (two parties, or one party with itself).

    Construction computes the plan (exact block comparisons, oversized blocks, estimates)
    without comparing anything; :meth:`candidate_pairs` then compares. Block keys are
    recomputed per band rather than stored: keeping ``bands`` keys per record would cost more
    memory than the inputs.
    """

    def __init__(
        self,
        left: npt.ArrayLike,
        right: npt.ArrayLike | None,
        *,
        settings: BlockingSettings | None = None,
        seed: int | None = None,
        positions: npt.NDArray[np.int64] | None = None,
        workers: int | None = None,
        gather_records: int = GATHER_RECORDS,
    ) -> None:
        self.settings = settings or BlockingSettings()
        if gather_records < 1:
            raise MatchingError("gather_records must be >= 1")
        self.gather_records = gather_records
        self.left = check_clks(left, name="left")
        self.within = right is None
        self.right = self.left if right is None else check_clks(right, name="right")
        if len(self.left) and len(self.right) and self.left.shape[1] != self.right.shape[1]:
            raise MatchingError(
                "the two sides' CLKs have different lengths; they cannot be compared"
            )
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise MatchingError("workers must be >= 1")
        clk_bits = 64 * max(self.left.shape[1], self.right.shape[1], 1)
        self.positions = (
            sample_band_positions(clk_bits, self.settings, seed)
            if positions is None
            else np.ascontiguousarray(positions, dtype=np.int64)
        )
        # Only each band's counts are kept: holding every band's record orders at once cost
        # 16 bytes a record a band (44 bands at 1M x 1M: 1.4 GiB) for figures of a few ints.
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            bands = list(pool.map(self._band_counts, range(self.positions.shape[0])))
        n_left, n_right = len(self.left), len(self.right)
        exhaustive = n_left * (n_left - 1) // 2 if self.within else n_left * n_right
        comparisons = sum(band[0] for band in bands)
        self.plan = BlockingPlan(
            bands=int(self.positions.shape[0]),
            bits_per_band=int(self.positions.shape[1]),
            exhaustive_comparisons=exhaustive,
            block_comparisons=comparisons,
            largest_block_comparisons=max((band[1] for band in bands), default=0),
            oversized_blocks=sum(band[2] for band in bands),
            oversized_comparisons=sum(band[3] for band in bands),
            estimated_seconds=comparisons / (BLOCK_COMPARISONS_PER_SECOND * self.workers),
            # Per worker: two key vectors and orders (8 bytes each per record) and one output
            # buffer (20 bytes a pair); plus the kept pairs, unknown until the run.
            estimated_memory_bytes=self.workers * (32 * (n_left + n_right) + 20 * _CAPACITY),
        )

    def _band_counts(self, band_number: int) -> tuple[int, int, int, int]:
        """(comparisons, largest block, oversized blocks, their comparisons) of one band."""
        band = self._band(band_number)
        return (
            band.comparisons,
            band.largest,
            band.oversized_blocks,
            band.oversized_comparisons,
        )

    def _band(self, band_number: int) -> _Band:
        positions = self.positions[band_number : band_number + 1]
        return _build_band(
            _keys(self.left, positions)[:, 0],
            None if self.within else _keys(self.right, positions)[:, 0],
            self.settings.max_block_comparisons,
            int(self.positions.shape[1]),
        )

    def candidate_pairs(
        self, threshold: float, *, max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS
    ) -> CandidatePairs:
        """The union over bands of block pairs at or above ``threshold``, each pair once,
        sorted by (left, right); ``within`` pairs have left < right. ``comparisons`` counts
        pairs scored, a pair met in several bands once per band."""
        threshold = check_threshold(threshold)
        if len(self.left) == 0 or len(self.right) == 0:
            return CandidatePairs.empty()
        required = required_shared(threshold, 64 * self.left.shape[1])
        left_counts = popcounts(self.left)
        right_counts = left_counts if self.within else popcounts(self.right)

        def task(band_number: int) -> tuple[npt.NDArray[np.int64], int] | None:
            band = self._band(band_number)
            capacity = max(_CAPACITY, 2 * band.largest_side)
            acc = np.empty(max(1, band.largest_side), np.uint64)
            codes_parts = [np.empty(0, np.int64)]
            compared_total, kept_total = 0, 0
            blocks = len(band.left_starts)
            first_block = 0
            while first_block < blocks:
                # A run of whole blocks whose members fit the gather budget (at least one).
                left_from = int(band.left_starts[first_block])
                right_from = int(band.right_starts[first_block])
                end_block = max(
                    first_block + 1,
                    min(
                        int(
                            np.searchsorted(
                                band.left_stops, left_from + self.gather_records, "right"
                            )
                        ),
                        int(
                            np.searchsorted(
                                band.right_stops, right_from + self.gather_records, "right"
                            )
                        ),
                    ),
                )
                left_to = int(band.left_stops[end_block - 1])
                right_to = int(band.right_stops[end_block - 1])
                left_members = band.left_members[left_from:left_to]
                right_members = band.right_members[right_from:right_to]
                left_band = _gather(self.left, left_members, False)
                right_band = _gather(self.right, right_members, True)
                left_band_counts = left_counts[left_members]
                right_band_counts = right_counts[right_members]
                left_starts = band.left_starts[first_block:end_block] - left_from
                left_stops = band.left_stops[first_block:end_block] - left_from
                right_starts = band.right_starts[first_block:end_block] - right_from
                right_stops = band.right_stops[first_block:end_block] - right_from
                block, offset = 0, int(left_starts[0])
                while block >= 0:
                    out_rows = np.empty(capacity, np.int64)
                    out_cols = np.empty(capacity, np.int64)
                    out_shared = np.empty(capacity, np.int32)
                    kept, compared, block, offset = _compare_blocks(
                        left_band, right_band, left_band_counts, right_band_counts, required,
                        left_members, left_starts, left_stops,
                        right_members, right_starts, right_stops,
                        self.within, block, offset, out_rows, out_cols, out_shared, acc,
                    )  # fmt: skip
                    kept_total += kept
                    compared_total += compared
                    if kept_total > max_pairs:
                        return None
                    rows, cols = out_rows[:kept], out_cols[:kept]
                    if self.within:
                        rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
                    codes_parts.append(rows * width + cols)
                first_block = end_block
            return np.unique(np.concatenate(codes_parts)), compared_total

        width = len(self.right)
        codes = np.empty(0, np.int64)
        pending: list[npt.NDArray[np.int64]] = []
        pending_length = 0
        comparisons = 0
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for result in pool.map(task, range(self.positions.shape[0])):
                if result is None:
                    raise self._too_many(max_pairs, threshold)
                comparisons += result[1]
                pending.append(result[0])
                pending_length += len(result[0])
                # The union: a pair met in several bands is kept once. Merging only when the
                # bands' codes outgrow the union so far keeps it linear, not bands x union.
                if pending_length > max(len(codes), 1 << 22):
                    codes = np.unique(np.concatenate([codes, *pending]))
                    pending, pending_length = [], 0
                    if len(codes) > max_pairs:
                        raise self._too_many(max_pairs, threshold)
        codes = np.unique(np.concatenate([codes, *pending]))
        if len(codes) > max_pairs:
            raise self._too_many(max_pairs, threshold)
        rows, cols = np.divmod(codes, width)
        shared = _shared_counts(self.left, self.right, rows, cols)
        scores = _scores(shared, left_counts[rows].astype(np.int64) + right_counts[cols])
        return CandidatePairs(left=rows, right=cols, scores=scores, comparisons=comparisons)

    @staticmethod
    def _too_many(max_pairs: int, threshold: float) -> MatchingError:
        return MatchingError(
            f"more than {max_pairs} candidate pairs at threshold {threshold}: "
            "raise the threshold or the candidate-pair limit"
        )


def _shared_counts(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    shared = np.empty(len(rows), np.int64)
    step = 1 << 16
    for start in range(0, len(rows), step):
        stop = start + step
        both = left[rows[start:stop]] & right[cols[start:stop]]
        shared[start:stop] = np.bitwise_count(both).sum(axis=1, dtype=np.int64)
    return shared


def uses_lsh(mode: BlockingMode, left_size: int, right_size: int | None) -> bool:
    """Whether candidate generation blocks: always for ``lsh``, never for ``none``, and for
    ``auto`` above EXHAUSTIVE_BELOW_COMPARISONS pairs (``right_size`` None: one party with
    itself)."""
    if mode is BlockingMode.LSH:
        return True
    if mode is BlockingMode.NONE:
        return False
    exhaustive = left_size * (left_size - 1) // 2 if right_size is None else left_size * right_size
    return exhaustive > EXHAUSTIVE_BELOW_COMPARISONS


def generate_candidates(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    *,
    mode: BlockingMode,
    settings: BlockingSettings,
    seed: int,
    workers: int | None = None,
    max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS,
) -> tuple[CandidatePairs, BlockingPlan | None]:
    """Candidate generation, the one entry point: the pairs at or above ``threshold`` of one
    party pair (``right`` None: one party with itself), by LSH blocking or exhaustively as
    ``mode`` says, and the blocking plan when it blocked. Scoring is similarity.py's."""
    shape = (
        blocking_settings_for(left, right, threshold, settings)
        if uses_lsh(mode, len(left), None if right is None else len(right))
        else None
    )
    if shape is None:
        if right is None:
            return candidate_pairs_within(
                left, threshold, workers=workers, max_pairs=max_pairs
            ), None
        return candidate_pairs(left, right, threshold, workers=workers, max_pairs=max_pairs), None
    index = BlockingIndex(left, right, settings=shape, seed=seed, workers=workers)
    return index.candidate_pairs(threshold, max_pairs=max_pairs), index.plan

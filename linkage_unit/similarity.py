"""Similarity: the compare stage of matching (block -> **compare** -> solve).

Dice similarity between packed CLKs, ``dice(a, b) = 2 |a & b| / (|a| + |b|)``, or Hamming
similarity ``1 - |a ^ b| / bits`` (for hardened, diffused encodings), keeping only the
candidate pairs at or above a threshold, as compact arrays.

The threshold rule (exact and the same everywhere, including the slow reference): a pair is
kept iff ``2 * shared >= float64(threshold) * (|a| + |b|)`` (Dice) or
``bits - hamming >= float64(threshold) * bits`` (Hamming), the right side evaluated as one
IEEE float64 product. Since ``hamming = |a| + |b| - 2 * shared``, both are turned into one
integer table ``required_shared[total]`` (the least ``shared`` that passes for each
``total = |a| + |b|``), so the kernels test integers only. Two empty CLKs (``total == 0``)
never match under either measure: their Dice is defined as 0, and two all-zero encodings
carry no evidence.

Scores are reported as float32 of the float64 value. For CLKs up to 2048 bits distinct
scores stay distinct and in order in float32 (fractions with denominators <= 4096 differ by
more than float32's spacing below 1); the threshold test never looks at the float32 score.

The kernels are in ``kernels.py``: one variant per CPU family (AVX-512 VPOPCNTDQ, AVX2,
scalar POPCNT, generic), chosen at run time from the CPU's features (:func:`kernel_path`
says which), all giving exactly the same pairs. Rows are split into chunks run on a thread
pool; the numba functions release the GIL.

:func:`group_counts` gives, for given pairs, shared bits and popcounts per field group of a
several-group encoding (``protocol/clk_layout.py``), for per-group similarity vectors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from linkage_unit import kernels
from linkage_unit.kernels import KernelPath, kernel_path
from protocol.errors import MatchingError

__all__ = [
    "DEFAULT_MAX_CANDIDATE_PAIRS",
    "CandidatePairs",
    "GroupCounts",
    "KernelPath",
    "SimilarityMeasure",
    "best_scores",
    "candidate_pairs",
    "candidate_pairs_within",
    "default_workers",
    "group_counts",
    "kernel_path",
    "popcounts",
    "reference_best_scores",
    "reference_candidate_pairs",
    "group_bit_counts",
    "reference_group_bit_counts",
    "reference_group_counts",
    "required_shared",
]

DEFAULT_MAX_CANDIDATE_PAIRS = 200_000_000
"""At 12 bytes a pair, about 2.2 GiB: a run that would keep more stops with MatchingError."""

_MAX_CHUNK_ROWS = 256
# A buffer must hold one (row block, tile): 4 rows x (a tile plus one vector).
_INITIAL_CAPACITY = 2 * kernels.ROWS_PER_BLOCK * (kernels.TILE_COLUMNS + 8)
_MAX_CAPACITY = 1 << 22


class SimilarityMeasure(StrEnum):
    """How a pair is scored: Dice on set bits, or Hamming on all bits (diffused encodings)."""

    DICE = "dice"
    HAMMING = "hamming"


ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidatePairs:
    """Pairs at or above the threshold: ``left[k]`` (record position on the left) matches
    ``right[k]`` with ``scores[k]``; sorted by (left, right). ``comparisons`` counts pairs scored."""

    left: npt.NDArray[np.int64]
    right: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    comparisons: int

    def __post_init__(self) -> None:
        if not (len(self.left) == len(self.right) == len(self.scores)):
            raise MatchingError("candidate pair arrays must have the same length")

    def __len__(self) -> int:
        return len(self.left)

    @staticmethod
    def empty(comparisons: int = 0) -> CandidatePairs:
        return CandidatePairs(
            left=np.empty(0, np.int64),
            right=np.empty(0, np.int64),
            scores=np.empty(0, np.float32),
            comparisons=comparisons,
        )


def default_workers() -> int:
    """Threads to use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_clks(clks: npt.ArrayLike, *, name: str) -> npt.NDArray[np.uint64]:
    """Return ``clks`` as a C-contiguous ``(records, words)`` uint64 array or raise."""
    array = np.asarray(clks)
    if array.dtype != np.uint64 or array.ndim != 2:
        raise MatchingError(f"{name}: expected a 2-D uint64 array of packed CLKs (records, words)")
    if array.shape[0] > 0 and array.shape[1] == 0:
        raise MatchingError(f"{name}: CLKs have zero words")
    if array.shape[0] >= 2**31:
        raise MatchingError(f"{name}: more than 2^31 - 1 records in one array")
    return np.ascontiguousarray(array)


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not (0.0 < value <= 1.0):
        raise MatchingError("threshold must be in (0, 1]")
    return value


def popcounts(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
    """Set bits per CLK."""
    counts: npt.NDArray[np.int32] = np.bitwise_count(clks).sum(axis=1, dtype=np.int32)
    return counts


def required_shared(
    threshold: float, clk_bits: int, measure: SimilarityMeasure = SimilarityMeasure.DICE
) -> npt.NDArray[np.int32]:
    """``table[total]``: least shared bit count that keeps a pair with ``|a| + |b| == total``.

    Encodes the module's rule: ``2 * shared >= float64(threshold) * total`` for Dice, and for
    Hamming ``clk_bits - (total - 2 * shared) >= float64(threshold) * clk_bits``, whose left
    side is an integer, so it holds iff it is >= the product rounded up. ``table[0]`` is
    unreachable so that two empty CLKs never match.
    """
    value = np.float64(check_threshold(threshold))
    totals = np.arange(2 * clk_bits + 1, dtype=np.int64)
    if SimilarityMeasure(measure) is SimilarityMeasure.DICE:
        table = np.ceil(value * totals.astype(np.float64) / 2.0).astype(np.int64)
    else:
        least_agreeing = int(np.ceil(value * np.float64(clk_bits)))
        table = np.maximum(0, -((clk_bits - least_agreeing - totals) // 2))
    table[0] = clk_bits + 1
    return table.astype(np.int32)


@intrinsic
def _ctpop(typing_context: object, value: types.Type) -> object:  # pragma: no cover
    """LLVM ``ctpop`` on a uint64: hardware popcount, vectorised inside word-major loops."""
    signature = types.uint64(types.uint64)

    def codegen(context: object, builder: object, sig: object, args: list[object]) -> object:
        return builder.ctpop(args[0])  # type: ignore[attr-defined]

    return signature, codegen


# Inside jitted code the intrinsic is called with one uint64; say so to the type checker.
_popcount = cast(Callable[[Any], Any], _ctpop)


@intrinsic
def _prefetch_address(typing_context: object, address: types.Type) -> object:  # pragma: no cover
    """LLVM ``prefetch`` (read, keep in all cache levels) of the byte at an address: a hint
    that never faults, so nothing it does changes a result."""
    signature = types.void(types.uint64)

    def codegen(context: Any, builder: Any, sig: object, args: list[Any]) -> object:
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]),
            "llvm.prefetch.p0",
        )
        pointer = builder.inttoptr(args[0], byte_pointer)
        builder.call(function, [pointer, int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return signature, codegen


_prefetch = cast(Callable[[Any], None], _prefetch_address)

_PREFETCH_PAIRS_AHEAD = 8
"""Pair kernels over scattered records ask for the rows of the pair this many ahead: random
pairs of two 1M-record parties (320-byte rows) waited on memory for most of their time
(10M pairs: 5.0 s in random order, 1.3 s with both sides sorted, 2.1 s with 8 ahead)."""


@numba.njit(inline="always", nogil=True, cache=True)
def _add_shared_bits(  # pragma: no cover - compiled
    row_words: npt.NDArray[np.uint64],
    right_word_major: npt.NDArray[np.uint64],
    first: int,
    stop: int,
    acc: npt.NDArray[np.uint64],
) -> None:
    """``acc[j] = popcount(row & right column first + j)`` for columns [first, stop): one row
    against a short run of columns, the blocking kernel's loop (blocks are too small and
    scattered for the row-block kernels of ``kernels.py``). Word-major so LLVM vectorises
    the popcounts; eight words a pass halves the accumulator's loads and stores."""
    words = row_words.shape[0]
    width = stop - first
    for j in range(width):
        acc[j] = np.uint64(0)
    for w in range(0, words - 7, 8):
        a0 = row_words[w]
        a1 = row_words[w + 1]
        a2 = row_words[w + 2]
        a3 = row_words[w + 3]
        a4 = row_words[w + 4]
        a5 = row_words[w + 5]
        a6 = row_words[w + 6]
        a7 = row_words[w + 7]
        r0 = right_word_major[w, first:stop]
        r1 = right_word_major[w + 1, first:stop]
        r2 = right_word_major[w + 2, first:stop]
        r3 = right_word_major[w + 3, first:stop]
        r4 = right_word_major[w + 4, first:stop]
        r5 = right_word_major[w + 5, first:stop]
        r6 = right_word_major[w + 6, first:stop]
        r7 = right_word_major[w + 7, first:stop]
        for j in range(width):
            acc[j] += (
                _popcount(a0 & r0[j])
                + _popcount(a1 & r1[j])
                + _popcount(a2 & r2[j])
                + _popcount(a3 & r3[j])
                + _popcount(a4 & r4[j])
                + _popcount(a5 & r5[j])
                + _popcount(a6 & r6[j])
                + _popcount(a7 & r7[j])
            )
    for w in range(words - words % 8, words):
        a0 = row_words[w]
        r0 = right_word_major[w, first:stop]
        for j in range(width):
            acc[j] += _popcount(a0 & r0[j])


def _scores(
    shared: npt.NDArray[np.integer],
    totals: npt.NDArray[np.integer],
    measure: SimilarityMeasure = SimilarityMeasure.DICE,
    clk_bits: int = 0,
) -> npt.NDArray[np.float32]:
    shared_bits = shared.astype(np.float64)
    if measure is SimilarityMeasure.DICE:
        # In place, the same operations in the same order: a third of the memory of the
        # expression (19M pairs: 230 MiB, not 690).
        shared_bits *= 2.0
        np.true_divide(shared_bits, totals, out=shared_bits)
        return shared_bits.astype(np.float32)
    hamming = totals.astype(np.float64) - 2.0 * shared_bits
    return (1.0 - hamming / np.float64(clk_bits)).astype(np.float32)


@dataclass(frozen=True, slots=True, kw_only=True)
class _SortedRight:
    """The right side in popcount order, as the kernels read it."""

    order: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int32]
    clks: npt.NDArray[np.uint64]
    prepared: kernels.PreparedRight
    tile_low: npt.NDArray[np.int32]
    tile_high: npt.NDArray[np.int32]


def _sort_right(path: KernelPath, right: npt.NDArray[np.uint64], split: int) -> _SortedRight:
    # Sorted by popcount, each column tile spans a narrow popcount range: tighter bounds.
    counts = popcounts(right)
    order = np.argsort(counts, kind="stable").astype(np.int64)
    sorted_counts = np.ascontiguousarray(counts[order])
    sorted_clks = np.ascontiguousarray(right[order])
    tile_low, tile_high = kernels.tile_ranges(sorted_counts)
    return _SortedRight(
        order=order,
        counts=sorted_counts,
        clks=sorted_clks,
        prepared=kernels.prepare_right(path, sorted_clks, split),
        tile_low=tile_low,
        tile_high=tile_high,
    )


def _run(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    threshold: float,
    *,
    within: bool,
    workers: int | None,
    max_pairs: int,
    progress: ProgressCallback | None,
    measure: SimilarityMeasure,
    path: KernelPath | None,
) -> CandidatePairs:
    threshold = check_threshold(threshold)
    measure = SimilarityMeasure(measure)
    chosen = kernels.check_path(path)
    if max_pairs < 0:
        raise MatchingError("max_pairs must be >= 0")
    n_left, n_right = left.shape[0], right.shape[0]
    if n_left == 0 or n_right == 0:
        return CandidatePairs.empty()
    if left.shape[1] != right.shape[1]:
        raise MatchingError("the two sides' CLKs have different lengths; they cannot be compared")
    words = left.shape[1]
    clk_bits = words * 64
    required = required_shared(threshold, clk_bits, measure)
    split = kernels.split_word(words)
    side = _sort_right(chosen, right, split)
    if within:
        # Same permutation on both sides keeps "row < column" meaning "pair counted once".
        left = side.clks
        left_counts = side.counts
    else:
        left_counts = popcounts(left)
    left_packed = kernels.pack_left(chosen, left)
    left_rest = kernels.rest_counts(left, split, n_left)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MatchingError("workers must be >= 1")
    rows_per_block = kernels.ROWS_PER_BLOCK
    blocks = -(-n_left // rows_per_block)
    chunk = int(min(_MAX_CHUNK_ROWS, max(16, -(-n_left // (workers * 8))))) // rows_per_block
    bounds = [(start, min(blocks, start + chunk)) for start in range(0, blocks, chunk)]

    def task(bound: tuple[int, int]) -> tuple[npt.NDArray[np.int32], ...] | int:
        rows_parts, cols_parts, shared_parts = [], [], []
        compared_total = 0
        kept_total = 0
        tile, block = 0, bound[0]
        capacity = _INITIAL_CAPACITY
        while tile >= 0:
            out_rows = np.empty(capacity, np.int32)
            out_cols = np.empty(capacity, np.int32)
            out_shared = np.empty(capacity, np.int32)
            kept, compared, tile, block = kernels.compare_row_blocks(
                chosen, left_packed, side.prepared.data, left_counts, side.counts, left_rest,
                side.prepared.rest, required, side.tile_low, side.tile_high, n_left, n_right,
                words, split, within, bound[0], bound[1], tile, block,
                out_rows, out_cols, out_shared,
            )  # fmt: skip
            compared_total += compared
            kept_total += kept
            if kept_total > max_pairs:
                return -1
            rows_parts.append(out_rows[:kept])
            cols_parts.append(out_cols[:kept])
            shared_parts.append(out_shared[:kept])
            capacity = min(capacity * 4, _MAX_CAPACITY)
        return (
            np.concatenate(rows_parts),
            np.concatenate(cols_parts),
            np.concatenate(shared_parts),
            np.array([compared_total]),
        )

    pieces: list[tuple[npt.NDArray[np.int32], ...]] = []
    total_kept = 0
    comparisons = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, result in enumerate(pool.map(task, bounds), start=1):
            if isinstance(result, int) or total_kept + len(result[0]) > max_pairs:
                raise MatchingError(
                    f"more than {max_pairs} candidate pairs at threshold {threshold}: raise the "
                    "threshold, use blocking, or raise the candidate-pair limit"
                )
            pieces.append(result)
            total_kept += len(result[0])
            comparisons += int(result[3][0])
            if progress is not None:
                progress(min(n_left, done * chunk * rows_per_block), n_left)
    rows = np.concatenate([piece[0] for piece in pieces]).astype(np.int64)
    cols = np.concatenate([piece[1] for piece in pieces]).astype(np.int64)
    shared = np.concatenate([piece[2] for piece in pieces])
    totals = left_counts[rows].astype(np.int64) + side.counts[cols]
    scores = _scores(shared, totals, measure, clk_bits)
    left_index = side.order[rows] if within else rows
    right_index = side.order[cols]
    if within:
        left_index, right_index = (
            np.minimum(left_index, right_index),
            np.maximum(left_index, right_index),
        )
    arrangement = np.lexsort((right_index, left_index))
    return CandidatePairs(
        left=np.ascontiguousarray(left_index[arrangement], dtype=np.int64),
        right=np.ascontiguousarray(right_index[arrangement], dtype=np.int64),
        scores=scores[arrangement],
        comparisons=comparisons,
    )


def candidate_pairs(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    threshold: float,
    *,
    workers: int | None = None,
    max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS,
    progress: ProgressCallback | None = None,
    measure: SimilarityMeasure = SimilarityMeasure.DICE,
    path: KernelPath | None = None,
) -> CandidatePairs:
    """Every (left, right) pair scoring at or above ``threshold``, exhaustively.

    Memory beyond the inputs is one sorted, transposed copy of ``right`` (two for the AVX2
    path's nibble planes) plus the kept pairs; more than ``max_pairs`` kept pairs raises
    MatchingError instead of exhausting memory. ``path`` forces a kernel variant this CPU
    supports (tests, benchmarks); None takes :func:`kernel_path`.
    """
    return _run(
        check_clks(left, name="left"),
        check_clks(right, name="right"),
        threshold,
        within=False,
        workers=workers,
        max_pairs=max_pairs,
        progress=progress,
        measure=measure,
        path=path,
    )


def candidate_pairs_within(
    clks: npt.ArrayLike,
    threshold: float,
    *,
    workers: int | None = None,
    max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS,
    progress: ProgressCallback | None = None,
    measure: SimilarityMeasure = SimilarityMeasure.DICE,
    path: KernelPath | None = None,
) -> CandidatePairs:
    """Every pair ``left < right`` within one party's CLKs at or above ``threshold``
    (for de-duplication)."""
    array = check_clks(clks, name="clks")
    return _run(
        array,
        array,
        threshold,
        within=True,
        workers=workers,
        max_pairs=max_pairs,
        progress=progress,
        measure=measure,
        path=path,
    )


def best_scores(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    *,
    excluded: npt.ArrayLike | None = None,
    workers: int | None = None,
    path: KernelPath | None = None,
) -> npt.NDArray[np.float64]:
    """Each left record's highest Dice against any right record (0 when ``right`` is empty).

    ``excluded[i]`` is a right position left record i must not be compared with (itself, when
    both sides are one party), or -1.

    Used to choose a threshold from the run's own score distribution; callers pass a sample
    of rows as ``left`` to bound the cost.
    """
    left_array = check_clks(left, name="left")
    right_array = check_clks(right, name="right")
    chosen = kernels.check_path(path)
    n_left = left_array.shape[0]
    out = np.zeros(n_left, np.float64)
    if n_left == 0 or right_array.shape[0] == 0:
        return out
    if left_array.shape[1] != right_array.shape[1]:
        raise MatchingError("the two sides' CLKs have different lengths; they cannot be compared")
    skip = (
        np.full(n_left, -1, np.int64)
        if excluded is None
        else np.ascontiguousarray(excluded, dtype=np.int64)
    )
    if skip.shape != (n_left,):
        raise MatchingError("excluded must hold one right position (or -1) per left record")
    words = left_array.shape[1]
    split = kernels.split_word(words)
    side = _sort_right(chosen, right_array, split)
    # Excluded positions follow the right side into popcount order.
    rank = np.empty(len(side.order), np.int64)
    rank[side.order] = np.arange(len(side.order))
    skip = np.where(skip >= 0, rank[np.clip(skip, 0, len(side.order) - 1)], -1)
    left_counts = popcounts(left_array)
    left_packed = kernels.pack_left(chosen, left_array)
    left_rest = kernels.rest_counts(left_array, split, n_left)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MatchingError("workers must be >= 1")
    blocks = -(-n_left // kernels.ROWS_PER_BLOCK)
    chunk = max(1, -(-blocks // (workers * 4)))

    def task(start: int) -> None:
        kernels.best_row_blocks(
            chosen, left_packed, side.prepared.data, left_counts, side.counts, left_rest,
            side.prepared.rest, side.tile_low, side.tile_high, skip, n_left,
            right_array.shape[0], words, split, start, min(blocks, start + chunk), out,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(task, range(0, blocks, chunk)))
    return out


def reference_best_scores(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    *,
    excluded: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.float64]:
    """The slow obvious twin of :func:`best_scores`: one pair at a time."""
    out = np.zeros(len(left), np.float64)
    for i in range(len(left)):
        for j in range(len(right)):
            if excluded is not None and excluded[i] == j:
                continue
            shared = int(np.bitwise_count(left[i] & right[j]).sum())
            total = int(np.bitwise_count(left[i]).sum()) + int(np.bitwise_count(right[j]).sum())
            if total > 0:
                out[i] = max(out[i], 2.0 * shared / total)
    return out


def reference_candidate_pairs(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    threshold: float,
    *,
    within: bool = False,
    measure: SimilarityMeasure = SimilarityMeasure.DICE,
) -> CandidatePairs:
    """The slow obvious twin of :func:`candidate_pairs` (``within`` for
    :func:`candidate_pairs_within`): one pair at a time in plain Python/numpy; Hamming from
    ``a ^ b`` directly."""
    threshold = check_threshold(threshold)
    bits = 64 * (left.shape[1] if left.ndim == 2 else 0)
    lefts: list[int] = []
    rights: list[int] = []
    scores: list[float] = []
    comparisons = 0
    for i in range(len(left)):
        for j in range(i + 1 if within else 0, len(right)):
            comparisons += 1
            total = int(np.bitwise_count(left[i]).sum()) + int(np.bitwise_count(right[j]).sum())
            if total == 0:
                continue
            if SimilarityMeasure(measure) is SimilarityMeasure.DICE:
                shared = int(np.bitwise_count(left[i] & right[j]).sum())
                keep = 2 * shared >= threshold * total
                score = 2.0 * shared / total
            else:
                hamming = int(np.bitwise_count(left[i] ^ right[j]).sum())
                keep = bits - hamming >= threshold * bits
                score = 1.0 - hamming / bits
            if keep:
                lefts.append(i)
                rights.append(j)
                scores.append(float(np.float32(score)))
    return CandidatePairs(
        left=np.array(lefts, np.int64),
        right=np.array(rights, np.int64),
        scores=np.array(scores, np.float32),
        comparisons=comparisons,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCounts:
    """Per candidate pair (row k) and field group (column g): set bits both CLKs share and
    each side's set bits, in ``uint16`` when every group fits, else ``uint32`` (or the type
    the caller asked for)."""

    shared: npt.NDArray[np.integer[Any]]
    left: npt.NDArray[np.integer[Any]]
    right: npt.NDArray[np.integer[Any]]

    def __post_init__(self) -> None:
        if not (self.shared.shape == self.left.shape == self.right.shape):
            raise MatchingError("group count arrays must have the same shape")
        if self.shared.ndim != 2:
            raise MatchingError("group counts are (pairs, groups) arrays")


@numba.njit(nogil=True, cache=True)
def _group_shared(  # pragma: no cover - compiled
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    left_index: npt.NDArray[np.int64],
    right_index: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    start: int,
    stop: int,
    out: npt.NDArray[np.uint32],
    out_left: npt.NDArray[np.uint32],
    out_right: npt.NDArray[np.uint32],
) -> None:
    """Shared bits and each side's bits per pair and group: the words are loaded once for
    all three (popcounting whole parties per call cost 1.2 s a million records). The rows of
    the pair ``_PREFETCH_PAIRS_AHEAD`` on are prefetched (addresses only, no effect on the
    counts)."""
    left_base = np.uint64(left.ctypes.data)
    right_base = np.uint64(right.ctypes.data)
    left_row = np.uint64(left.strides[0])
    right_row = np.uint64(right.strides[0])
    row_bytes = left.shape[1] * 8
    for pair in range(start, stop):
        ahead = pair + _PREFETCH_PAIRS_AHEAD
        if ahead < stop:
            left_at = left_base + np.uint64(left_index[ahead]) * left_row
            right_at = right_base + np.uint64(right_index[ahead]) * right_row
            for line in range(0, row_bytes, 64):
                _prefetch(left_at + np.uint64(line))
                _prefetch(right_at + np.uint64(line))
        a = left_index[pair]
        b = right_index[pair]
        for group in range(offsets.shape[0] - 1):
            shared = np.uint64(0)
            left_bits = np.uint64(0)
            right_bits = np.uint64(0)
            for word in range(offsets[group], offsets[group + 1]):
                x = left[a, word]
                y = right[b, word]
                shared += _popcount(x & y)
                left_bits += _popcount(x)
                right_bits += _popcount(y)
            out[pair, group] = shared
            out_left[pair, group] = left_bits
            out_right[pair, group] = right_bits


@numba.njit(nogil=True, cache=True)
def _group_bits(  # pragma: no cover - compiled
    clks: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64], out: npt.NDArray[np.int32]
) -> None:
    for record in range(clks.shape[0]):
        for group in range(offsets.shape[0] - 1):
            bits = np.uint64(0)
            for word in range(offsets[group], offsets[group + 1]):
                bits += _popcount(clks[record, word])
            out[record, group] = bits


def group_bit_counts(
    clks: npt.NDArray[np.uint64], word_offsets: Sequence[int] | npt.ArrayLike
) -> npt.NDArray[np.int32]:
    """Set bits per record and field group, ``(records, groups)`` int32, in one pass over the
    words (``np.bitwise_count`` then ``np.add.reduceat`` took 1.2 s a million 2560-bit
    records here; :func:`reference_group_bit_counts` is that obvious twin)."""
    array = check_clks(clks, name="clks")
    offsets = _check_offsets(word_offsets, array.shape[1]) if len(array) else None
    if offsets is None:
        return np.zeros((0, max(len(np.asarray(word_offsets)) - 1, 0)), np.int32)
    out = np.empty((len(array), len(offsets) - 1), np.int32)
    _group_bits(array, offsets, out)
    return out


def reference_group_bit_counts(
    clks: npt.NDArray[np.uint64], word_offsets: Sequence[int]
) -> npt.NDArray[np.int32]:
    """The slow obvious twin of :func:`group_bit_counts`."""
    starts = np.asarray(word_offsets[:-1], dtype=np.int64)
    if len(clks) == 0:
        return np.zeros((0, len(starts)), np.int32)
    counts: npt.NDArray[np.int32] = np.add.reduceat(
        np.bitwise_count(clks), starts, axis=1, dtype=np.int32
    )
    return counts


def _check_offsets(
    word_offsets: Sequence[int] | npt.ArrayLike, words: int
) -> npt.NDArray[np.int64]:
    offsets = np.asarray(word_offsets, dtype=np.int64)
    if (
        offsets.ndim != 1
        or len(offsets) < 2
        or offsets[0] != 0
        or offsets[-1] != words
        or np.any(np.diff(offsets) <= 0)
    ):
        raise MatchingError(
            "word_offsets must rise from 0 to the CLK length in words, one group at least "
            "(ClkLayout.word_offsets())"
        )
    return offsets


def _check_index(index: npt.ArrayLike, records: int, name: str) -> npt.NDArray[np.int64]:
    array = np.ascontiguousarray(index, dtype=np.int64)
    if array.ndim != 1:
        raise MatchingError(f"{name}: expected a 1-D array of record positions")
    if len(array) and (array.min() < 0 or array.max() >= records):
        raise MatchingError(f"{name}: a record position is outside the CLK array")
    return array


def group_counts(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    left_index: npt.ArrayLike,
    right_index: npt.ArrayLike,
    word_offsets: Sequence[int] | npt.ArrayLike,
    *,
    workers: int | None = None,
    dtype: type[np.integer[Any]] | None = None,
) -> GroupCounts:
    """For each pair ``(left[left_index[k]], right[right_index[k]])`` and each field group
    ``g`` (words ``word_offsets[g]:word_offsets[g + 1]``, as ``ClkLayout.word_offsets()``
    gives them): shared set bits and each side's set bits. A group all zero on one side is
    missing there (``protocol/clk_layout.py``); the caller decides what that means.
    ``dtype``: the counts' type, written by the kernel directly (None: the smallest unsigned
    type that holds them, through a uint32 copy; a caller that wants int32 anyway saves two
    copies of every count, 1 GiB at the 1.8e7 candidates of a 1M x 1M run)."""
    left_array = check_clks(left, name="left")
    right_array = check_clks(right, name="right")
    if left_array.shape[1] != right_array.shape[1]:
        raise MatchingError("the two sides' CLKs have different lengths; they cannot be compared")
    offsets = _check_offsets(word_offsets, left_array.shape[1])
    lefts = _check_index(left_index, len(left_array), "left_index")
    rights = _check_index(right_index, len(right_array), "right_index")
    if len(lefts) != len(rights):
        raise MatchingError("left_index and right_index must have the same length")
    widest_bits = 64 * int(np.diff(offsets).max())
    smallest = np.uint16 if widest_bits <= np.iinfo(np.uint16).max else np.uint32
    if dtype is not None and widest_bits > np.iinfo(dtype).max:
        raise MatchingError("the counts' type cannot hold a group's bit count")
    written = np.uint32 if dtype is None else dtype
    groups = len(offsets) - 1
    shared = np.empty((len(lefts), groups), written)
    left_bits = np.empty((len(lefts), groups), written)
    right_bits = np.empty((len(lefts), groups), written)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MatchingError("workers must be >= 1")
    chunk = max(1 << 14, -(-len(lefts) // workers))

    def task(start: int) -> None:
        _group_shared(
            left_array, right_array, lefts, rights, offsets, start,
            min(len(lefts), start + chunk), shared, left_bits, right_bits,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(task, range(0, len(lefts), chunk)))
    if dtype is not None:
        return GroupCounts(shared=shared, left=left_bits, right=right_bits)
    return GroupCounts(
        shared=shared.astype(smallest),
        left=left_bits.astype(smallest),
        right=right_bits.astype(smallest),
    )


def reference_group_counts(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    left_index: npt.NDArray[np.int64],
    right_index: npt.NDArray[np.int64],
    word_offsets: Sequence[int],
) -> GroupCounts:
    """The slow obvious twin of :func:`group_counts`: one pair and group at a time."""
    groups = len(word_offsets) - 1
    shape = (len(left_index), groups)
    shared = np.zeros(shape, np.int64)
    left_bits = np.zeros(shape, np.int64)
    right_bits = np.zeros(shape, np.int64)
    for k, (a, b) in enumerate(zip(left_index, right_index, strict=True)):
        for g in range(groups):
            words = slice(word_offsets[g], word_offsets[g + 1])
            shared[k, g] = int(np.bitwise_count(left[a, words] & right[b, words]).sum())
            left_bits[k, g] = int(np.bitwise_count(left[a, words]).sum())
            right_bits[k, g] = int(np.bitwise_count(right[b, words]).sum())
    widest = 64 * max(word_offsets[g + 1] - word_offsets[g] for g in range(groups))
    dtype = np.uint16 if widest <= 65535 else np.uint32
    return GroupCounts(
        shared=shared.astype(dtype), left=left_bits.astype(dtype), right=right_bits.astype(dtype)
    )

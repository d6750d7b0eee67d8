"""Similarity: the compare stage of matching (block -> **compare** -> solve).

Dice similarity between packed CLKs, ``dice(a, b) = 2 |a & b| / (|a| + |b|)``, keeping only
the candidate pairs at or above a threshold, as compact arrays.

The threshold rule (exact and the same everywhere, including the slow reference): a pair is
kept iff ``2 * shared >= float64(threshold) * (|a| + |b|)``, the right side evaluated as one
IEEE float64 product. It is turned into an integer table ``required_shared[total]`` (the least
``shared`` that passes for each ``total = |a| + |b|``), so the kernel tests integers only. Two
empty CLKs (``total == 0``) never match: their Dice is defined as 0.

Scores are reported as float32 of the float64 quotient. For CLKs up to 2048 bits distinct Dice
values stay distinct and in order in float32 (fractions with denominators <= 4096 differ by more
than float32's spacing below 1); the threshold test never looks at the float32 score.

The kernel is word-major: the right side is transposed to ``(words, records)`` so the inner
loop runs over records and LLVM vectorises it to hardware popcount (``vpopcntq`` on AVX-512
VPOPCNTDQ CPUs). The right side is sorted by popcount so each column tile has a narrow popcount
range, and a (row, tile) is skipped when no pair in it can reach the threshold. Rows are split
into chunks run on a thread pool; the numba functions release the GIL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

from protocol.errors import MatchingError

__all__ = [
    "DEFAULT_MAX_CANDIDATE_PAIRS",
    "CandidatePairs",
    "best_scores",
    "candidate_pairs",
    "candidate_pairs_within",
    "default_workers",
    "popcounts",
    "reference_candidate_pairs",
    "required_shared",
]

DEFAULT_MAX_CANDIDATE_PAIRS = 200_000_000
"""At 12 bytes a pair, about 2.2 GiB: a run that would keep more stops with MatchingError."""

_TILE_COLUMNS = 4096  # 16 words x 4096 x 8 bytes = 512 KiB of right side: stays in L2
_MAX_CHUNK_ROWS = 256
_INITIAL_CAPACITY = 2 * _TILE_COLUMNS  # a buffer must hold one (row, tile)
_MAX_CAPACITY = 1 << 22

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


def required_shared(threshold: float, clk_bits: int) -> npt.NDArray[np.int32]:
    """``table[total]``: least shared bit count that keeps a pair with ``|a| + |b| == total``.

    Encodes the module's rule ``2 * shared >= float64(threshold) * total``; ``table[0]`` is
    unreachable so that two empty CLKs never match.
    """
    totals = np.arange(2 * clk_bits + 1, dtype=np.float64)
    table = np.ceil(np.float64(check_threshold(threshold)) * totals / 2.0).astype(np.int32)
    table[0] = clk_bits + 1
    return table


@intrinsic
def _ctpop(typing_context: object, value: types.Type) -> object:  # pragma: no cover
    """LLVM ``ctpop`` on a uint64: hardware popcount, vectorised inside word-major loops."""
    signature = types.uint64(types.uint64)

    def codegen(context: object, builder: object, sig: object, args: list[object]) -> object:
        return builder.ctpop(args[0])  # type: ignore[attr-defined]

    return signature, codegen


# Inside jitted code the intrinsic is called with one uint64; say so to the type checker.
_popcount = cast(Callable[[Any], Any], _ctpop)


@numba.njit(inline="always", nogil=True, cache=True)
def _add_shared_bits(  # pragma: no cover - compiled
    row_words: npt.NDArray[np.uint64],
    right_word_major: npt.NDArray[np.uint64],
    first: int,
    stop: int,
    acc: npt.NDArray[np.uint64],
) -> None:
    """``acc[j] = popcount(row & right column first + j)`` for columns [first, stop): the one
    hot loop every Dice kernel shares. Word-major so LLVM vectorises the popcounts; eight
    words a pass halves the accumulator's loads and stores against four (sixteen spills)."""
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


@numba.njit(nogil=True, cache=True)
def _compare_chunk(  # pragma: no cover - compiled
    left: npt.NDArray[np.uint64],
    right_word_major: npt.NDArray[np.uint64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
    required: npt.NDArray[np.int32],
    tile_low: npt.NDArray[np.int32],
    tile_high: npt.NDArray[np.int32],
    row_start: int,
    row_stop: int,
    within: bool,
    resume_tile: int,
    resume_row: int,
    out_rows: npt.NDArray[np.int32],
    out_cols: npt.NDArray[np.int32],
    out_shared: npt.NDArray[np.int32],
) -> tuple[int, int, int, int]:
    """Rows [row_start, row_stop) of ``left`` against every right column (only columns after
    the row when ``within``), starting at (resume_tile, resume_row).

    Writes kept pairs into the caller's buffers (capacity >= one tile width) and returns
    (kept, compared, next_tile, next_row); next_tile == -1 when done. Stopping before a
    (tile, row) that might not fit, instead of growing buffers here, keeps the hot loop free
    of reallocation, which would stop LLVM from vectorising it."""
    columns = right_word_major.shape[1]
    capacity = out_rows.shape[0]
    kept = 0
    compared = 0
    acc = np.empty(_TILE_COLUMNS, np.uint64)
    tiles = (columns + _TILE_COLUMNS - 1) // _TILE_COLUMNS
    for tile in range(resume_tile, tiles):
        col0 = tile * _TILE_COLUMNS
        col1 = min(columns, col0 + _TILE_COLUMNS)
        low = tile_low[tile]
        high = tile_high[tile]
        first_row = resume_row if tile == resume_tile else row_start
        for row in range(first_row, row_stop):
            first = col0
            if within:
                first = max(col0, row + 1)
                if first >= col1:
                    continue
            width = col1 - first
            count_a = left_counts[row]
            # Best case in this tile is the right popcount nearest count_a (exact bound).
            nearest = min(max(count_a, low), high)
            if min(count_a, nearest) < required[count_a + nearest]:
                continue
            if kept + width > capacity:
                return kept, compared, tile, row
            compared += width
            # Necessary, as required is nondecreasing; unsigned so compares stay integer.
            bound = np.uint64(required[count_a + low])
            _add_shared_bits(left[row], right_word_major, first, col1, acc)
            for j in range(width):
                shared = acc[j]
                if shared >= bound:
                    column = first + j
                    if shared >= np.uint64(required[count_a + right_counts[column]]):
                        out_rows[kept] = row
                        out_cols[kept] = column
                        out_shared[kept] = shared
                        kept += 1
    return kept, compared, -1, -1


def _tile_ranges(sorted_counts: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.int32], ...]:
    starts = np.arange(0, len(sorted_counts), _TILE_COLUMNS)
    if len(starts) == 0:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    low = sorted_counts[starts]
    high = sorted_counts[np.minimum(starts + _TILE_COLUMNS, len(sorted_counts)) - 1]
    return low.astype(np.int32), high.astype(np.int32)


def _scores(
    shared: npt.NDArray[np.integer], totals: npt.NDArray[np.integer]
) -> npt.NDArray[np.float32]:
    return (2.0 * shared.astype(np.float64) / totals.astype(np.float64)).astype(np.float32)


def _run(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    threshold: float,
    *,
    within: bool,
    workers: int | None,
    max_pairs: int,
    progress: ProgressCallback | None,
) -> CandidatePairs:
    threshold = check_threshold(threshold)
    if max_pairs < 0:
        raise MatchingError("max_pairs must be >= 0")
    n_left, n_right = left.shape[0], right.shape[0]
    if n_left == 0 or n_right == 0:
        return CandidatePairs.empty()
    if left.shape[1] != right.shape[1]:
        raise MatchingError("the two sides' CLKs have different lengths; they cannot be compared")
    words = left.shape[1]
    required = required_shared(threshold, words * 64)
    left_counts = popcounts(left)
    right_counts_raw = popcounts(right)
    # Sort the right side by popcount so each column tile spans a narrow popcount range.
    order = np.argsort(right_counts_raw, kind="stable")
    right_counts = np.ascontiguousarray(right_counts_raw[order])
    right_word_major = np.ascontiguousarray(right[order].T)
    if within:
        # Same permutation on both sides keeps "row < column" meaning "pair counted once".
        left = np.ascontiguousarray(left[order])
        left_counts = right_counts
    tile_low, tile_high = _tile_ranges(right_counts)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MatchingError("workers must be >= 1")
    chunk = int(min(_MAX_CHUNK_ROWS, max(16, -(-n_left // (workers * 8)))))
    bounds = [(start, min(n_left, start + chunk)) for start in range(0, n_left, chunk)]

    def task(bound: tuple[int, int]) -> tuple[npt.NDArray[np.int32], ...] | int:
        rows_parts, cols_parts, shared_parts = [], [], []
        compared_total = 0
        kept_total = 0
        tile, row = 0, bound[0]
        capacity = _INITIAL_CAPACITY
        while tile >= 0:
            out_rows = np.empty(capacity, np.int32)
            out_cols = np.empty(capacity, np.int32)
            out_shared = np.empty(capacity, np.int32)
            kept, compared, tile, row = _compare_chunk(
                left, right_word_major, left_counts, right_counts, required, tile_low,
                tile_high, bound[0], bound[1], within, tile, row, out_rows, out_cols, out_shared,
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
                progress(done * chunk if done < len(bounds) else n_left, n_left)
    rows = np.concatenate([piece[0] for piece in pieces]).astype(np.int64)
    cols = np.concatenate([piece[1] for piece in pieces]).astype(np.int64)
    shared = np.concatenate([piece[2] for piece in pieces])
    scores = _scores(shared, left_counts[rows].astype(np.int64) + right_counts[cols])
    left_index = order[rows] if within else rows
    right_index = order[cols]
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
) -> CandidatePairs:
    """Every (left, right) pair with Dice at or above ``threshold``, exhaustively.

    Memory beyond the inputs is one transposed copy of ``right`` plus the kept pairs; more
    than ``max_pairs`` kept pairs raises MatchingError instead of exhausting memory.
    """
    return _run(
        check_clks(left, name="left"),
        check_clks(right, name="right"),
        threshold,
        within=False,
        workers=workers,
        max_pairs=max_pairs,
        progress=progress,
    )


def candidate_pairs_within(
    clks: npt.ArrayLike,
    threshold: float,
    *,
    workers: int | None = None,
    max_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS,
    progress: ProgressCallback | None = None,
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
    )


@numba.njit(nogil=True, cache=True)
def _best_chunk(  # pragma: no cover - compiled
    left: npt.NDArray[np.uint64],
    right_word_major: npt.NDArray[np.uint64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
    tile_low: npt.NDArray[np.int32],
    tile_high: npt.NDArray[np.int32],
    excluded: npt.NDArray[np.int64],
    out: npt.NDArray[np.float64],
) -> None:
    """Right side sorted by popcount, in tiles of _TILE_COLUMNS; a (row, tile) whose best
    possible Dice (at the popcount nearest the row's) cannot beat the row's best so far is
    skipped, which leaves every result unchanged."""
    columns = right_word_major.shape[1]
    acc = np.empty(_TILE_COLUMNS, np.uint64)
    for tile in range((columns + _TILE_COLUMNS - 1) // _TILE_COLUMNS):
        col0 = tile * _TILE_COLUMNS
        width = min(_TILE_COLUMNS, columns - col0)
        low = tile_low[tile]
        high = tile_high[tile]
        for row in range(left.shape[0]):
            best = out[row]
            count_a = left_counts[row]
            nearest = min(max(count_a, low), high)
            if count_a + nearest > 0:
                bound = 2.0 * min(count_a, nearest) / (count_a + nearest)
                if bound <= best:
                    continue
            _add_shared_bits(left[row], right_word_major, col0, col0 + width, acc)
            for j in range(width):
                total = count_a + right_counts[col0 + j]
                if total > 0 and col0 + j != excluded[row]:
                    score = 2.0 * np.float64(acc[j]) / total
                    if score > best:
                        best = score
            out[row] = best


def best_scores(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    *,
    excluded: npt.ArrayLike | None = None,
    workers: int | None = None,
) -> npt.NDArray[np.float64]:
    """Each left record's highest Dice against any right record (0 when ``right`` is empty).

    ``excluded[i]`` is a right position left record i must not be compared with (itself, when
    both sides are one party), or -1.

    Used to choose a threshold from the run's own score distribution; callers pass a sample
    of rows as ``left`` to bound the cost.
    """
    left_array = check_clks(left, name="left")
    right_array = check_clks(right, name="right")
    out = np.zeros(left_array.shape[0], np.float64)
    if left_array.shape[0] == 0 or right_array.shape[0] == 0:
        return out
    if left_array.shape[1] != right_array.shape[1]:
        raise MatchingError("the two sides' CLKs have different lengths; they cannot be compared")
    left_counts = popcounts(left_array)
    right_counts_raw = popcounts(right_array)
    order = np.argsort(right_counts_raw, kind="stable")
    right_counts = np.ascontiguousarray(right_counts_raw[order])
    right_word_major = np.ascontiguousarray(right_array[order].T)
    tile_low, tile_high = _tile_ranges(right_counts)
    skip = (
        np.full(left_array.shape[0], -1, np.int64)
        if excluded is None
        else np.ascontiguousarray(excluded, dtype=np.int64)
    )
    if skip.shape != (left_array.shape[0],):
        raise MatchingError("excluded must hold one right position (or -1) per left record")
    # Excluded positions follow the right side into popcount order.
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    skip = np.where(skip >= 0, rank[np.clip(skip, 0, len(order) - 1)], -1)
    workers = default_workers() if workers is None else workers
    chunk = max(1, -(-left_array.shape[0] // (workers * 4)))
    starts = range(0, left_array.shape[0], chunk)

    def task(start: int) -> None:
        stop = min(left_array.shape[0], start + chunk)
        _best_chunk(
            left_array[start:stop], right_word_major, left_counts[start:stop], right_counts,
            tile_low, tile_high, skip[start:stop], out[start:stop],
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(task, starts))
    return out


def reference_candidate_pairs(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    threshold: float,
    *,
    within: bool = False,
) -> CandidatePairs:
    """The slow obvious twin of :func:`candidate_pairs` (``within`` for
    :func:`candidate_pairs_within`): one pair at a time in plain Python/numpy."""
    threshold = check_threshold(threshold)
    lefts: list[int] = []
    rights: list[int] = []
    scores: list[float] = []
    comparisons = 0
    for i in range(len(left)):
        for j in range(i + 1 if within else 0, len(right)):
            comparisons += 1
            shared = int(np.bitwise_count(left[i] & right[j]).sum())
            total = int(np.bitwise_count(left[i]).sum()) + int(np.bitwise_count(right[j]).sum())
            if total > 0 and 2 * shared >= threshold * total:
                lefts.append(i)
                rights.append(j)
                scores.append(float(np.float32(2.0 * shared / total)))
    return CandidatePairs(
        left=np.array(lefts, np.int64),
        right=np.array(rights, np.int64),
        scores=np.array(scores, np.float32),
        comparisons=comparisons,
    )

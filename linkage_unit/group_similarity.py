"""Group similarity: per-field-group Dice of candidate pairs (block -> compare -> **score** ->
solve, for encodings made of several field-group CLKs).

A record's encoding is its groups' CLKs concatenated (``protocol/clk_layout.py``). Blocking and
the record-level compare find candidate pairs on the whole encoding; this stage then counts,
for each candidate pair and each group, the bits the two records share in that group. With
each record's per-group popcounts that gives one Dice similarity per group, and tells a
missing group (all zero bits on either side) from a different one, which the Fellegi-Sunter
model (``fellegi_sunter.py``) needs.

:func:`group_shared_counts` is the compiled kernel over a list of pairs;
:func:`reference_group_shared_counts` is its slow obvious twin. Nothing here sees a value.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.similarity import check_clks, default_workers
from protocol.clk_layout import ClkLayout
from protocol.errors import MatchingError

__all__ = [
    "GroupSimilarities",
    "group_popcounts",
    "group_shared_counts",
    "group_similarities",
    "reference_group_shared_counts",
]

_CHUNK_PAIRS = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSimilarities:
    """Per pair and group (``(pairs, groups)`` arrays): the shared bit count and both sides'
    popcounts. ``dice`` is 0 where a side is missing; ``missing`` says where."""

    shared: npt.NDArray[np.int32]
    left_counts: npt.NDArray[np.int32]
    right_counts: npt.NDArray[np.int32]

    def __post_init__(self) -> None:
        if not (self.shared.shape == self.left_counts.shape == self.right_counts.shape):
            raise MatchingError("group similarity arrays must have the same shape")

    def __len__(self) -> int:
        return int(self.shared.shape[0])

    @property
    def missing(self) -> npt.NDArray[np.bool_]:
        """True where either record has no bits in the group (its fields were all missing)."""
        result: npt.NDArray[np.bool_] = (self.left_counts == 0) | (self.right_counts == 0)
        return result

    @property
    def identical(self) -> npt.NDArray[np.bool_]:
        """True where both records' group CLKs are identical and not empty."""
        result: npt.NDArray[np.bool_] = (
            (self.shared == self.left_counts) & (self.shared == self.right_counts)
        ) & (self.shared > 0)
        return result

    def dice(self) -> npt.NDArray[np.float64]:
        """``2 shared / (|a| + |b|)`` per pair and group; 0 where both sides are empty."""
        totals = (self.left_counts + self.right_counts).astype(np.float64)
        result: npt.NDArray[np.float64] = np.divide(
            2.0 * self.shared, totals, out=np.zeros_like(totals), where=totals > 0
        )
        return result


def _check_layout(clks: npt.NDArray[np.uint64], layout: ClkLayout, name: str) -> None:
    if clks.shape[0] and clks.shape[1] != layout.total_words:
        raise MatchingError(
            f"{name}: CLKs have {clks.shape[1] * 64} bits but the layout says "
            f"{layout.total_bits}: the encoding and its layout disagree"
        )


def group_popcounts(clks: npt.ArrayLike, layout: ClkLayout) -> npt.NDArray[np.int32]:
    """Set bits per record and group: ``(records, groups)``."""
    array = check_clks(clks, name="clks")
    _check_layout(array, layout, "clks")
    offsets = layout.word_offsets()
    counts = np.bitwise_count(array)
    return np.stack(
        [
            counts[:, offsets[g] : offsets[g + 1]].sum(axis=1, dtype=np.int32)
            for g in range(len(layout.groups))
        ],
        axis=1,
    ).astype(np.int32)


@numba.njit(nogil=True, cache=True)
def _shared_chunk(  # pragma: no cover - compiled
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    out: npt.NDArray[np.int32],
) -> None:
    groups = offsets.shape[0] - 1
    for k in range(rows.shape[0]):
        a = left[rows[k]]
        b = right[cols[k]]
        for g in range(groups):
            total = 0
            for w in range(offsets[g], offsets[g + 1]):
                value = a[w] & b[w]
                # SWAR popcount: numba has no popcount intrinsic for one word outside LLVM's
                # vectoriser, and this is portable to every CPU.
                value = value - ((value >> np.uint64(1)) & np.uint64(0x5555555555555555))
                value = (value & np.uint64(0x3333333333333333)) + (
                    (value >> np.uint64(2)) & np.uint64(0x3333333333333333)
                )
                value = (value + (value >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
                total += int((value * np.uint64(0x0101010101010101)) >> np.uint64(56))
            out[k, g] = total


def _check_pairs(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    row_array = np.ascontiguousarray(rows, dtype=np.int64)
    col_array = np.ascontiguousarray(cols, dtype=np.int64)
    if row_array.shape != col_array.shape or row_array.ndim != 1:
        raise MatchingError("pair positions must be two 1-D arrays of the same length")
    if len(row_array) and (
        row_array.min() < 0
        or col_array.min() < 0
        or row_array.max() >= len(left)
        or col_array.max() >= len(right)
    ):
        raise MatchingError("a pair names a record position outside its party")
    return row_array, col_array


def group_shared_counts(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
    layout: ClkLayout,
    *,
    workers: int | None = None,
) -> npt.NDArray[np.int32]:
    """``out[k, g]``: bits record ``rows[k]`` of ``left`` and record ``cols[k]`` of ``right``
    share in group ``g``; ``(pairs, groups)``."""
    left_array = check_clks(left, name="left")
    right_array = check_clks(right, name="right")
    _check_layout(left_array, layout, "left")
    _check_layout(right_array, layout, "right")
    row_array, col_array = _check_pairs(left_array, right_array, rows, cols)
    offsets = np.array(layout.word_offsets(), dtype=np.int64)
    out = np.empty((len(row_array), len(layout.groups)), np.int32)
    if len(row_array) == 0:
        return out
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MatchingError("workers must be >= 1")
    starts = range(0, len(row_array), _CHUNK_PAIRS)

    def task(start: int) -> None:
        stop = start + _CHUNK_PAIRS
        _shared_chunk(
            left_array, right_array, row_array[start:stop], col_array[start:stop], offsets,
            out[start:stop],
        )  # fmt: skip

    if workers == 1 or len(starts) == 1:
        for start in starts:
            task(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(task, starts))
    return out


def reference_group_shared_counts(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
    layout: ClkLayout,
) -> npt.NDArray[np.int32]:
    """The slow obvious twin of :func:`group_shared_counts`: one pair and group at a time,
    counting set bits of Python integers."""
    out = np.empty((len(np.asarray(rows)), len(layout.groups)), np.int32)
    for k, (row, col) in enumerate(
        zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True)
    ):
        for g in range(len(layout.groups)):
            start, stop = layout.word_range(g)
            out[k, g] = sum(
                (int(left[row, w]) & int(right[col, w])).bit_count() for w in range(start, stop)
            )
    return out


def group_similarities(
    left: npt.ArrayLike,
    right: npt.ArrayLike,
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
    layout: ClkLayout,
    *,
    left_counts: npt.NDArray[np.int32] | None = None,
    right_counts: npt.NDArray[np.int32] | None = None,
    workers: int | None = None,
) -> GroupSimilarities:
    """Shared counts and popcounts of every pair in every group. ``left_counts`` and
    ``right_counts`` (:func:`group_popcounts`) may be passed when already known."""
    left_array = check_clks(left, name="left")
    right_array = check_clks(right, name="right")
    row_array, col_array = _check_pairs(left_array, right_array, rows, cols)
    shared = group_shared_counts(
        left_array, right_array, row_array, col_array, layout, workers=workers
    )
    if left_counts is None:
        left_counts = group_popcounts(left_array, layout)
    if right_counts is None:
        right_counts = group_popcounts(right_array, layout)
    return GroupSimilarities(
        shared=shared,
        left_counts=np.ascontiguousarray(left_counts[row_array], dtype=np.int32),
        right_counts=np.ascontiguousarray(right_counts[col_array], dtype=np.int32),
    )

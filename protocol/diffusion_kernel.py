"""The compiled kernel behind :func:`protocol.hardening.diffuse` (stage 3b, harden).

Bit-sliced: 64 records at a time are transposed (64 x 64 bit blocks, Hacker's Delight 7-3)
so that one uint64 holds one input bit of 64 records; an output bit is then the XOR of
``width`` such words, and a second transpose turns the output planes back into records. The
work per record is about ``(input + output bits) / 64 * 6`` word operations for the
transposes plus ``output bits * width / 64`` XORs, instead of ``output bits * width`` bit
extractions. Nonlinear diffusion's linear XOR and its AND term are worked out on the same
planes, so the record block is transposed in and out once, not three times; the planes are
read from and written to column slices of the caller's arrays (a schema's groups side by
side), so no group is copied in or out. Imported lazily (numba's import costs a third of a
second), only by an encoder whose schema asks for diffusion.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["diffuse_planes"]


@numba.njit(inline="always", nogil=True, cache=True)
def _transpose64(block: npt.NDArray[np.uint64]) -> None:
    """In place: afterwards bit ``r`` of ``block[c]`` is the old bit ``c`` of ``block[r]``."""
    shift = 32
    mask = np.uint64(0x00000000FFFFFFFF)
    while shift != 0:
        row = 0
        while row < 64:
            swap = ((block[row] >> np.uint64(shift)) ^ block[row + shift]) & mask
            block[row] ^= swap << np.uint64(shift)
            block[row + shift] ^= swap
            row = (row + shift + 1) & ~shift
        shift >>= 1
        mask ^= mask << np.uint64(shift)


@numba.njit(nogil=True, cache=True)
def diffuse_planes(
    clks: npt.NDArray[np.uint64],
    taps: npt.NDArray[np.int64],
    linear: int,
    result: npt.NDArray[np.uint64],
) -> None:
    """Into ``result`` (a ``(rows, outputs // 64)`` array or view): output bit ``j`` of each
    row = XOR of its input bits ``taps[j, :linear]``, and, where ``taps`` has two more
    columns (nonlinear diffusion), XOR the AND of its input bits ``taps[j, linear]`` and
    ``taps[j, linear + 1]``, in one pass over the planes. ``clks`` and ``result`` may be
    column slices of wider arrays: nothing is copied in or out."""
    rows_total = clks.shape[0]
    words_in = clks.shape[1]
    outputs = taps.shape[0]
    nonlinear = taps.shape[1] > linear
    planes = np.empty(words_in * 64, dtype=np.uint64)
    out_planes = np.empty(outputs, dtype=np.uint64)
    block = np.empty(64, dtype=np.uint64)
    for first in range(0, rows_total, 64):
        rows = min(64, rows_total - first)
        _planes_in(clks, first, rows, planes, block)
        if nonlinear:
            for output in range(outputs):
                value = planes[taps[output, linear]] & planes[taps[output, linear + 1]]
                for tap in range(linear):
                    value ^= planes[taps[output, tap]]
                out_planes[output] = value
        else:
            for output in range(outputs):
                value = planes[taps[output, 0]]
                for tap in range(1, linear):
                    value ^= planes[taps[output, tap]]
                out_planes[output] = value
        _planes_out(out_planes, result, first, rows, block)


@numba.njit(inline="always", nogil=True, cache=True)
def _planes_in(
    clks: npt.NDArray[np.uint64],
    first: int,
    rows: int,
    planes: npt.NDArray[np.uint64],
    block: npt.NDArray[np.uint64],
) -> None:
    """Rows ``first`` to ``first + rows`` (at most 64; the rest read as zero) as bit planes:
    afterwards bit ``r`` of ``planes[b]`` is input bit ``b`` of row ``first + r``."""
    for word in range(clks.shape[1]):
        for row in range(64):
            block[row] = clks[first + row, word] if row < rows else np.uint64(0)
        _transpose64(block)
        for column in range(64):
            planes[word * 64 + column] = block[column]


@numba.njit(inline="always", nogil=True, cache=True)
def _planes_out(
    out_planes: npt.NDArray[np.uint64],
    result: npt.NDArray[np.uint64],
    first: int,
    rows: int,
    block: npt.NDArray[np.uint64],
) -> None:
    """The inverse of :func:`_planes_in`: output planes back into rows of ``result``."""
    for word in range(result.shape[1]):
        for column in range(64):
            block[column] = out_planes[word * 64 + column]
        _transpose64(block)
        for row in range(rows):
            result[first + row, word] = block[row]

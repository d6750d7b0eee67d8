"""The compiled kernel behind :func:`protocol.hardening.diffuse` (stage 3b, harden).

Bit-sliced: 64 records at a time are transposed (64 x 64 bit blocks, Hacker's Delight 7-3)
so that one uint64 holds one input bit of 64 records; an output bit is then the XOR of
``width`` such words, and a second transpose turns the output planes back into records. The
work per record is about ``(input + output bits) / 64 * 6`` word operations for the
transposes plus ``output bits * width / 64`` XORs, instead of ``output bits * width`` bit
extractions. Nonlinear diffusion's linear XOR and its AND term are worked out on the same
planes, so the record block is transposed in and out once, not three times; the planes are
read from and written to column slices of the caller's arrays (a schema's groups side by
side), so no group is copied in or out.

Four blocks of 64 records (``_LANES``) go through side by side: each plane is four words,
one per block, so every transpose step and every tap's XOR is one 256-bit operation where
the CPU has AVX2 (LLVM vectorises the fixed lane loops), about 30 % less time per record
than one block at a time on an AVX2 Zen 3 (docs/benchmarks.md). Imported lazily (numba's
import costs a third of a second), only by an encoder whose schema asks for diffusion.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["diffuse_planes"]

_LANES = 4  # blocks of 64 records transposed and diffused side by side


@numba.njit(inline="always", nogil=True, cache=True)
def _transpose64(block: npt.NDArray[np.uint64]) -> None:
    """In place, for each lane ``l``: afterwards bit ``r`` of ``block[c, l]`` is the old bit
    ``c`` of ``block[r, l]`` (a ``(64, _LANES)`` array: ``_LANES`` 64 x 64 bit blocks)."""
    shift = 32
    mask = np.uint64(0x00000000FFFFFFFF)
    while shift != 0:
        step = np.uint64(shift)
        for base in range(0, 64, 2 * shift):
            for row in range(base, base + shift):
                other = row + shift
                for lane in range(_LANES):
                    swap = ((block[row, lane] >> step) ^ block[other, lane]) & mask
                    block[row, lane] ^= swap << step
                    block[other, lane] ^= swap
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
    words_out = result.shape[1]
    outputs = taps.shape[0]
    nonlinear = taps.shape[1] > linear
    planes = np.empty((words_in * 64, _LANES), dtype=np.uint64)
    out_planes = np.empty((outputs, _LANES), dtype=np.uint64)
    block = np.empty((64, _LANES), dtype=np.uint64)
    value = np.empty(_LANES, dtype=np.uint64)
    span = 64 * _LANES
    for first in range(0, rows_total, span):
        rows = min(span, rows_total - first)
        # Rows first + 64 l ... of lane l as bit planes (rows past the end read as zero):
        # afterwards bit r of planes[b, l] is input bit b of row first + 64 l + r.
        for word in range(words_in):
            for lane in range(_LANES):
                for row in range(64):
                    at = lane * 64 + row
                    block[row, lane] = clks[first + at, word] if at < rows else np.uint64(0)
            _transpose64(block)
            for column in range(64):
                for lane in range(_LANES):
                    planes[word * 64 + column, lane] = block[column, lane]
        for output in range(outputs):
            if nonlinear:
                left = taps[output, linear]
                right = taps[output, linear + 1]
                for lane in range(_LANES):
                    value[lane] = planes[left, lane] & planes[right, lane]
            else:
                for lane in range(_LANES):
                    value[lane] = np.uint64(0)
            for tap in range(linear):
                source = taps[output, tap]
                for lane in range(_LANES):
                    value[lane] ^= planes[source, lane]
            for lane in range(_LANES):
                out_planes[output, lane] = value[lane]
        # The output planes back into rows of result (the inverse of the above).
        for word in range(words_out):
            for column in range(64):
                for lane in range(_LANES):
                    block[column, lane] = out_planes[word * 64 + column, lane]
            _transpose64(block)
            for lane in range(_LANES):
                for row in range(64):
                    at = lane * 64 + row
                    if at < rows:
                        result[first + at, word] = block[row, lane]

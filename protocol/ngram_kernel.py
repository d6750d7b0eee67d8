"""The compiled kernels behind the column path of stage 3, encode (protocol/encoding.py),
for n-grams of ASCII values.

An ASCII n-gram of size ``n`` is coded as its bytes in base 128, a dense index below
``128 ** n``, so a value's distinct n-grams, each n-gram's bit count and the OR of their bit
positions are worked out per value in compiled loops, with no sort over the whole column.
:func:`ngram_counts` finds every value's distinct n-grams and how many bits each sets (and,
per n-gram, the most bits any value asks of it, so the caller hashes each n-gram once);
:func:`ngram_masks` ORs the positions in (a whole mask per n-gram and bit count, worked out
once per call). A padded tokeniser's padding is added inside the
kernel, and the caller passes a whole column's text as one buffer, so no per-value Python
runs for an ASCII column. The numpy twin in protocol/encoding.py
(``_FieldEncoder._or_coded_masks``) serves every other value, and a property test holds the
two to the same bits. Imported lazily (numba's import costs a third of a second).
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["ngram_counts", "ngram_masks"]


@numba.njit(inline="always", nogil=True, cache=True)
def _distinct_codes(
    data: npt.NDArray[np.uint8],
    start: int,
    stop: int,
    size: int,
    pad: int,
    pad_byte: int,
    codes: npt.NDArray[np.int64],
) -> int:
    """The distinct base-128 codes of the n-grams of ``data[start:stop]``, with ``pad``
    copies of ``pad_byte`` before and after it, into ``codes``; returns how many there are
    (none for a text shorter than one n-gram)."""
    found = 0
    length = stop - start
    for window in range(length + 2 * pad - size + 1):
        code = 0
        for place in range(size):
            at = window + place - pad
            byte = pad_byte if at < 0 or at >= length else int(data[start + at])
            code = code * 128 + byte
        seen = False
        for earlier in range(found):
            if codes[earlier] == code:
                seen = True
                break
        if not seen:
            codes[found] = code
            found += 1
    return found


@numba.njit(nogil=True, cache=True)
def ngram_counts(
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    size: int,
    pad: int,
    pad_byte: int,
    bits: int,
    bits_per_token: int,
    most: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Per value (``data[offsets[i]:offsets[i + 1]]`` padded with ``pad`` copies of
    ``pad_byte`` each side): how many bits each of its n-grams sets (``bits_per_token`` if
    positive, else ``bits`` over its distinct n-grams, rounded half up, at least 1), or 0 for
    a value with no n-gram. ``most[code]`` is raised to the largest count any value asks of
    n-gram ``code``."""
    values = len(offsets) - 1
    counts = np.empty(values, dtype=np.int64)
    longest = int(np.max(np.diff(offsets))) if values else 1
    codes = np.empty(max(1, longest + 2 * pad), dtype=np.int64)
    for value in range(values):
        found = _distinct_codes(
            data, offsets[value], offsets[value + 1], size, pad, pad_byte, codes
        )
        if found == 0:
            counts[value] = 0
            continue
        if bits_per_token > 0:
            count = bits_per_token
        else:
            count = max(1, (bits + found // 2) // found)
        counts[value] = count
        for index in range(found):
            if most[codes[index]] < count:
                most[codes[index]] = count
    return counts


@numba.njit(nogil=True, cache=True)
def ngram_masks(
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    size: int,
    pad: int,
    pad_byte: int,
    counts: npt.NDArray[np.int64],
    row_of: npt.NDArray[np.int64],
    positions: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint64],
    rows: npt.NDArray[np.int64],
    table_words: int,
) -> None:
    """OR into ``out[rows[i]]`` the first ``counts[i]`` positions of each distinct n-gram of
    value i (padded as in :func:`ngram_counts`): n-gram ``code``'s positions are
    ``positions[row_of[code]]``.

    The words of each (n-gram, count) pair are worked out once per call and ORed in whole:
    a value of 8 bigrams at 150 bits sets 8 x 19 bits one at a time, but ORs 8 x 4 words
    of a 256-bit group. Where that table would take more than ``table_words`` words, the
    bits are set one at a time instead (the same bits)."""
    values = len(offsets) - 1
    longest = int(np.max(np.diff(offsets))) if values else 1
    codes = np.empty(max(1, longest + 2 * pad), dtype=np.int64)
    one = np.uint64(1)
    words = out.shape[1]
    width = positions.shape[1]
    cached = positions.shape[0] * width * words <= table_words
    table_rows = positions.shape[0] if cached else 0
    masks = np.empty((table_rows, width, words), dtype=np.uint64)
    done = np.zeros((table_rows, width), dtype=np.bool_)
    for value in range(values):
        count = counts[value]
        if count == 0:
            continue
        found = _distinct_codes(
            data, offsets[value], offsets[value + 1], size, pad, pad_byte, codes
        )
        target = rows[value]
        for index in range(found):
            table_row = row_of[codes[index]]
            if cached:
                if not done[table_row, count - 1]:
                    for word in range(words):
                        masks[table_row, count - 1, word] = 0
                    for place in range(count):
                        position = positions[table_row, place]
                        masks[table_row, count - 1, position >> 6] |= one << np.uint64(
                            position & 63
                        )
                    done[table_row, count - 1] = True
                for word in range(words):
                    out[target, word] |= masks[table_row, count - 1, word]
            else:
                for place in range(count):
                    position = positions[table_row, place]
                    out[target, position >> 6] |= one << np.uint64(position & 63)

"""Part of the encoder run's output (party/positions_file.py): the positions file's record
lines, ``record_id,position``, formatted in compiled code.

The csv module formats a row in about a microsecond of interpreter work, which for a
million-record extract is more than the shuffle. :func:`position_lines` writes the same bytes
from the encoder's record-id scratch text (one id per line, UTF-8) and the positions array:
an id holding a comma or a double quote is quoted with its quotes doubled, as the csv
module's minimal quoting does (ids never hold a line break: the encoder refuses ids with
control characters), the position in decimal. :func:`position_lines_reference` is the csv
module itself, and a property test holds the two to the same bytes. Compiled with numba,
imported only by an encoder run.
"""

from __future__ import annotations

import csv
import io

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["position_lines", "position_lines_reference"]

_NEWLINE, _COMMA, _QUOTE, _ZERO = 10, 44, 34, 48


@numba.njit(nogil=True, cache=True)
def _format(
    ids: npt.NDArray[np.uint8], positions: npt.NDArray[np.int64], out: npt.NDArray[np.uint8]
) -> int:
    """Lines into ``out`` (large enough); returns the bytes written, or -1 if the id lines
    and the positions do not pair up."""
    digits = np.empty(20, dtype=np.uint8)
    written = 0
    start = 0
    line = 0
    for end in range(len(ids)):
        if ids[end] != _NEWLINE:
            continue
        if line == len(positions):
            return -1
        quoted = False
        for index in range(start, end):
            if ids[index] == _COMMA or ids[index] == _QUOTE:
                quoted = True
                break
        if quoted:
            out[written] = _QUOTE
            written += 1
        for index in range(start, end):
            out[written] = ids[index]
            written += 1
            if quoted and ids[index] == _QUOTE:
                out[written] = _QUOTE
                written += 1
        if quoted:
            out[written] = _QUOTE
            written += 1
        out[written] = _COMMA
        written += 1
        value = positions[line]
        count = 0
        while True:
            digits[count] = _ZERO + value % 10
            value //= 10
            count += 1
            if value == 0:
                break
        for place in range(count - 1, -1, -1):
            out[written] = digits[place]
            written += 1
        out[written] = _NEWLINE
        written += 1
        line += 1
        start = end + 1
    if line != len(positions) or start != len(ids):
        return -1
    return written


def position_lines(ids: bytes, positions: npt.NDArray[np.int64]) -> bytes | None:
    """The positions file's lines for ``ids`` (``\\n``-terminated UTF-8 record ids) at
    ``positions`` (non-negative), or None if there are not as many ids as positions."""
    data = np.frombuffer(ids, dtype=np.uint8)
    # At worst every byte of an id is a doubled quote, plus two quotes, a comma, 19 digits
    # and a newline a line.
    out = np.empty(2 * len(data) + 23 * len(positions), dtype=np.uint8)
    written = _format(data, np.ascontiguousarray(positions, dtype=np.int64), out)
    return None if written < 0 else out[:written].tobytes()


def position_lines_reference(ids: bytes, positions: npt.NDArray[np.int64]) -> bytes | None:
    """The slow, obvious twin of :func:`position_lines`: the csv module's rows."""
    record_ids = ids.decode("utf-8").split("\n")
    if record_ids.pop() != "" or len(record_ids) != len(positions):
        return None
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\n").writerows(
        zip(record_ids, positions.tolist(), strict=True)
    )
    return text.getvalue().encode("utf-8")

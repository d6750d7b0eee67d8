"""Part of the encoder run (party/encoder_run.py): 8-byte digests of record ids, to find ids
that repeat.

The encoder's processes each digest the ids of their own part of the extract, so the digest
must not depend on the process (Python's ``hash`` of a string is seeded per process). A
digest is only a candidate: a repeat it reports is confirmed on the ids themselves, so a
fast unkeyed hash (64-bit FNV-1a) does; the ids never leave the department. Compiled with
numba, imported only by an encoder run.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["line_digests", "line_digests_reference"]

_OFFSET = 0xCBF29CE484222325
_PRIME = 0x100000001B3


@numba.njit(nogil=True, cache=True)
def _fnv_lines(data: npt.NDArray[np.uint8], out: npt.NDArray[np.uint64]) -> None:
    state = np.uint64(_OFFSET)
    line = 0
    for byte in data:
        if byte == 10:
            out[line] = state
            line += 1
            state = np.uint64(_OFFSET)
        else:
            state = (state ^ np.uint64(byte)) * np.uint64(_PRIME)


def line_digests(text: bytes) -> npt.NDArray[np.int64]:
    """One digest per ``\\n``-terminated line of ``text``."""
    out = np.empty(text.count(b"\n"), dtype=np.uint64)
    _fnv_lines(np.frombuffer(text, dtype=np.uint8), out)
    return out.view(np.int64)


def line_digests_reference(text: bytes) -> npt.NDArray[np.int64]:
    """The slow, obvious twin of :func:`line_digests`."""
    digests = []
    for line in text.split(b"\n")[:-1]:
        state = _OFFSET
        for byte in line:
            state = ((state ^ byte) * _PRIME) % (1 << 64)
        digests.append(state)
    return np.array(digests, dtype=np.uint64).view(np.int64)

"""Part of the encoder run (party/encoder_run.py): a field's bits ORed into a chunk's
records from its mask table, one table row per record, in compiled code.

numpy's ``clks[:, start:stop] |= masks[rows]`` gathers a temporary copy of every record's
row first and then ORs it into a strided slice: about a quarter of a CPU-second for the
five fields of a million records. :func:`or_mask_rows` ORs each row in place.
:func:`or_mask_rows_reference` is the numpy statement itself, and a property test holds the
two to the same bits. Compiled with numba, imported only by an encoder run.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["or_mask_rows", "or_mask_rows_reference"]


@numba.njit(nogil=True, cache=True)
def or_mask_rows(
    clks: npt.NDArray[np.uint64],
    start: int,
    masks: npt.NDArray[np.uint64],
    rows: npt.NDArray[np.intp],
) -> None:
    """OR ``masks[rows[r]]`` into words ``start`` to ``start + masks.shape[1]`` of record
    ``clks[r]``, for every record ``r`` (``rows`` holds one table row per record)."""
    words = masks.shape[1]
    for record in range(len(rows)):
        row = rows[record]
        for word in range(words):
            clks[record, start + word] |= masks[row, word]


def or_mask_rows_reference(
    clks: npt.NDArray[np.uint64],
    start: int,
    masks: npt.NDArray[np.uint64],
    rows: npt.NDArray[np.intp],
) -> None:
    """The slow, obvious twin of :func:`or_mask_rows`: numpy's gather, then OR."""
    clks[:, start : start + masks.shape[1]] |= masks[rows]

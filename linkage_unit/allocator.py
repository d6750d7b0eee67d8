"""Process memory of the linkage unit's service (supports every stage): the C allocator's
setting that decides whether a large array's memory goes back to the system when freed.

glibc serves a request at or above its *mmap threshold* from a mapping of its own, returned
on free, and anything smaller from its heaps, which keep freed memory for reuse. The
threshold starts at 128 KiB but rises to the size of every mapped block freed, up to
32 MiB: after the first large temporary, the compare's and scorer's 4-32 MiB chunks stay
in the heaps, fragmented across the worker threads' arenas. At 1M x 1M that held 150-250
MiB the stages after could not use (in process, one pair of 1M files and one blocking seed:
peak 2,017-2,032 MiB with the default, 1,815-1,875 pinned at 8 MiB; the CPU time the same
within the noise of a shared 2-core machine, docs/benchmarks.md). Pinning the threshold (any
``mallopt`` of it stops the rise) keeps large temporaries mapped and returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "pin_mmap_threshold"]

logger = logging.getLogger("bloomlink.linkage_unit.allocator")

MMAP_THRESHOLD_BYTES = 8 << 20
"""Blocks from this size up are mapped and returned on free (measured: module docstring)."""

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; False where the
    C library has no ``mallopt`` (not glibc: its allocator is left as it is)."""
    if not 0 < threshold <= 32 << 20:
        raise ValueError("the mmap threshold must be between 1 byte and 32 MiB")
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        logger.info("allocator left as it is: the C library has no mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))

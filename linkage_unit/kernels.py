"""Compare-stage kernels (block -> **compare** -> solve): shared-bit counts for every pair of
two CLK sets, one variant per CPU family, chosen at run time from what the CPU has.

Paths (:class:`KernelPath`), best first:

* ``avx512-vpopcntdq``: eight pairs a register, AND + VPOPCNTQ + add per word.
* ``avx2``: four pairs a register; each byte is split into its two nibbles once per call (the
  right side is stored as two nibble planes, the left side likewise), so a word costs two
  ANDs, two table lookups (VPSHUFB) and two byte adds; bytes are summed (VPSADBW) every 31
  words, before a byte counter could overflow.
* ``popcnt``: x86 without AVX2 (Sandy Bridge, Westmere, restricted virtual CPUs): scalar
  POPCNT, one pair at a time, still four rows per load of the right side.
* ``generic``: four pairs a register with LLVM's own popcount lowering, for any other CPU
  (x86 without POPCNT, ARM NEON, whatever the target has).

All four share one driver. The right side is sorted by popcount and cut into column tiles
that stay in L2; four left rows are compared at once against each vector of right columns,
so one load of the right side serves four rows. A (rows, tile) whose best possible pair
cannot reach the threshold is skipped. With ``split`` < words, the count stops half-way: if
``shared so far + min(bits left in a, bits left in b)`` cannot reach the row's floor for
any pair in the vector, the rest of the words are not read (at thresholds near 0.8 this
halves the work on non-matching pairs; where the test lets most vectors through, as at
lower thresholds, it is dropped for the rest of the tile). Every skip is exact: it only
drops pairs that fail the integer rule, so all paths return exactly the same pairs.

The path is part of the driver's argument types (a marker object), so each path's
machine code holds only its own instructions, and the AVX2 instructions are never compiled
for a CPU without AVX2. The CPU features are those numba compiles for: the host's, or
``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when set, which is how a benchmark or test runs
the AVX2 path as it would run on an AVX2-only CPU.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import binding as llvm_binding
from numba import types
from numba.core import config as numba_config
from numba.extending import (
    NativeValue,
    models,
    overload,
    register_model,
    typeof_impl,
    unbox,
)

from linkage_unit.simd import (
    add,
    add_bytes,
    and_,
    any_at_least,
    element,
    element_at,
    lane,
    load4,
    load4_at,
    load8,
    load8_at,
    may_reach,
    nibble_popcount,
    popcount,
    splat4,
    splat8,
    sum_bytes,
    vector4,
    zeros4,
    zeros8,
)
from protocol.errors import MatchingError

__all__ = [
    "KernelPath",
    "PreparedRight",
    "ROWS_PER_BLOCK",
    "TILE_COLUMNS",
    "X86_64_V2_FEATURES",
    "X86_64_V3_FEATURES",
    "best_row_blocks",
    "check_path",
    "compare_row_blocks",
    "cpu_features",
    "kernel_path",
    "pack_left",
    "prepare_right",
    "rest_counts",
    "split_word",
    "supported_paths",
    "tile_ranges",
]


class KernelPath(StrEnum):
    """Which Dice kernel variant runs; chosen from the CPU's features."""

    AVX512_VPOPCNTDQ = "avx512-vpopcntdq"
    AVX2 = "avx2"
    POPCNT = "popcnt"
    GENERIC = "generic"


_PATH_CODES = {
    KernelPath.AVX512_VPOPCNTDQ: 0,
    KernelPath.AVX2: 1,
    KernelPath.GENERIC: 2,
    KernelPath.POPCNT: 3,
}


class _PathMarker:
    """Passed to the driver so that numba compiles (and caches) one version per path: its
    numba type carries the path, and the path-specific calls are chosen by that type."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


class _PathMarkerType(types.Type):
    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(name=f"kernel_path_{code}")


@typeof_impl.register(_PathMarker)
def _typeof_path_marker(value: _PathMarker, context: Any) -> _PathMarkerType:
    return _PathMarkerType(value.code)


register_model(_PathMarkerType)(models.OpaqueModel)


@unbox(_PathMarkerType)
def _unbox_path_marker(typ: Any, obj: Any, context: Any) -> Any:  # pragma: no cover
    return NativeValue(context.context.get_dummy_value())


_MARKERS = {path: _PathMarker(code) for path, code in _PATH_CODES.items()}
_X86_MACHINES = {"x86_64", "amd64", "x86-64"}

X86_64_V2_FEATURES = frozenset(
    {"64bit", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2"}  # the x86-64 baseline
    | {"cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3", "crc32"}
)
"""The x86-64-v2 level (LLVM feature names): Nehalem and later; the ``popcnt`` path."""

X86_64_V3_FEATURES = X86_64_V2_FEATURES | {
    "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"
}  # fmt: skip
"""The x86-64-v3 level: what every AVX2 server has, and all the AVX2 path needs. Tests and
benchmarks compile for exactly these levels to run a path as a CPU without the later
features would (no AVX-512, and no GFNI, which LLVM would use for popcounts)."""

ROWS_PER_BLOCK = 4
"""Left rows compared at once against one vector of right columns (one load, four uses)."""

TILE_COLUMNS = 2048
"""Right columns per tile: 16 words x 2048 x 8 bytes = 256 KiB (512 KiB as AVX2 nibble
planes), which stays in L2 while every left row block of a chunk passes over it."""

_PAD_COLUMNS = 8  # the widest vector: every vector load of a padded right side is in bounds
_BYTE_WORDS = 31  # 31 words x 8 bits per byte lane = 248: byte counters flushed before 255
_NEVER = 1 << 40  # a floor no count reaches: the row has nothing to find in this tile
_SPLIT_MIN_WORDS = 8


def cpu_features() -> frozenset[str]:
    """The CPU features numba compiles for (LLVM names, e.g. ``avx2``, ``avx512vpopcntdq``)."""
    configured = getattr(numba_config, "CPU_FEATURES", None)
    if configured is None:
        configured = llvm_binding.get_host_cpu_features().flatten()
    return frozenset(
        feature[1:] for feature in str(configured).split(",") if feature.startswith("+")
    )


def supported_paths(
    features: frozenset[str] | None = None, *, machine: str | None = None
) -> tuple[KernelPath, ...]:
    """The paths this CPU (or one with ``features``, on ``machine`` as ``platform.machine()``
    names it) can run, best first; ``generic`` always."""
    have = cpu_features() if features is None else features
    paths: list[KernelPath] = []
    if (platform.machine() if machine is None else machine).lower() in _X86_MACHINES:
        if {"avx512f", "avx512vpopcntdq"} <= have:
            paths.append(KernelPath.AVX512_VPOPCNTDQ)
        if "avx2" in have:
            paths.append(KernelPath.AVX2)
        if "popcnt" in have:
            paths.append(KernelPath.POPCNT)
    paths.append(KernelPath.GENERIC)
    return tuple(paths)


def kernel_path(
    features: frozenset[str] | None = None, *, machine: str | None = None
) -> KernelPath:
    """The path the kernels take by default on this CPU (or one with ``features``)."""
    return supported_paths(features, machine=machine)[0]


def check_path(path: KernelPath | None) -> KernelPath:
    """``path``, or the default one; refuse a path this CPU cannot run."""
    chosen = kernel_path() if path is None else KernelPath(path)
    if chosen not in supported_paths():
        raise MatchingError(f"kernel path {chosen} needs CPU features this machine lacks")
    return chosen


def rest_counts(clks: npt.NDArray[np.uint64], split: int, length: int) -> npt.NDArray[np.int64]:
    """Set bits in words ``[split, words)`` of each CLK, zero-padded to ``length``."""
    out = np.zeros(length, np.int64)
    out[: len(clks)] = np.bitwise_count(clks[:, split:]).sum(axis=1, dtype=np.int64)
    return out


_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)


def pack_left(path: KernelPath, clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Left CLKs in blocks of :data:`ROWS_PER_BLOCK` rows, word by word, so one block's
    words for one step sit together: ``[(block * words + w) * 4 + row]``, or for AVX2 the
    two nibble planes, ``[(block * words + w) * 8 + row * 2 + plane]``. Zero rows pad the
    last block."""
    records, words = clks.shape
    blocks = -(-records // ROWS_PER_BLOCK)
    padded = np.zeros((blocks * ROWS_PER_BLOCK, words), np.uint64)
    padded[:records] = clks
    grouped = padded.reshape(blocks, ROWS_PER_BLOCK, words).transpose(0, 2, 1)
    if path is KernelPath.AVX2:
        planes = np.stack([grouped & _NIBBLES, (grouped >> np.uint64(4)) & _NIBBLES], axis=-1)
        return np.ascontiguousarray(planes).reshape(-1)
    return np.ascontiguousarray(grouped).reshape(-1)


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedRight:
    """The right side as the kernels read it: word-major ``(words, columns)`` (AVX2: two
    nibble planes per word, ``(2 * words, columns)``) with zero columns padding to a
    multiple of 8, and each column's set bits from word ``split`` on."""

    data: npt.NDArray[np.uint64]
    rest: npt.NDArray[np.int64]
    columns: int


def prepare_right(path: KernelPath, clks: npt.NDArray[np.uint64], split: int) -> PreparedRight:
    records, words = clks.shape
    padded_columns = -(-records // _PAD_COLUMNS) * _PAD_COLUMNS
    word_major = np.zeros((words, padded_columns), np.uint64)
    word_major[:, :records] = clks.T
    data = word_major
    if path is KernelPath.AVX2:
        planes = np.stack([word_major & _NIBBLES, (word_major >> np.uint64(4)) & _NIBBLES], axis=1)
        data = np.ascontiguousarray(planes).reshape(2 * words, padded_columns)
    return PreparedRight(data=data, rest=rest_counts(clks, split, padded_columns), columns=records)


def tile_ranges(
    sorted_counts: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Lowest and highest popcount of each :data:`TILE_COLUMNS` tile of a sorted right side."""
    starts = np.arange(0, len(sorted_counts), TILE_COLUMNS)
    if len(starts) == 0:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    low = sorted_counts[starts]
    high = sorted_counts[np.minimum(starts + TILE_COLUMNS, len(sorted_counts)) - 1]
    return low.astype(np.int32), high.astype(np.int32)


def split_word(words: int) -> int:
    """Where the count pauses to test the bound: half-way, for CLKs of 8 words or more."""
    return words // 2 if words >= _SPLIT_MIN_WORDS else words


@numba.njit(nogil=True, cache=True)
def _count_avx512(  # pragma: no cover - compiled
    left_packed: Any, right: Any, block: int, words: int, column: int,
    first_word: int, stop_word: int, s0: Any, s1: Any, s2: Any, s3: Any,
) -> Any:  # fmt: skip
    a0, a1, a2, a3 = s0, s1, s2, s3
    base = block * words * 4
    for word in range(first_word, stop_word):
        right_words = load8(right, word, column)
        at = base + word * 4
        a0 = add(a0, popcount(and_(right_words, splat8(left_packed, at))))
        a1 = add(a1, popcount(and_(right_words, splat8(left_packed, at + 1))))
        a2 = add(a2, popcount(and_(right_words, splat8(left_packed, at + 2))))
        a3 = add(a3, popcount(and_(right_words, splat8(left_packed, at + 3))))
    return a0, a1, a2, a3


@numba.njit(nogil=True, cache=True)
def _count_generic(  # pragma: no cover - compiled
    left_packed: Any, right: Any, block: int, words: int, column: int,
    first_word: int, stop_word: int, s0: Any, s1: Any, s2: Any, s3: Any,
) -> Any:  # fmt: skip
    a0, a1, a2, a3 = s0, s1, s2, s3
    base = block * words * 4
    for word in range(first_word, stop_word):
        right_words = load4(right, word, column)
        at = base + word * 4
        a0 = add(a0, popcount(and_(right_words, splat4(left_packed, at))))
        a1 = add(a1, popcount(and_(right_words, splat4(left_packed, at + 1))))
        a2 = add(a2, popcount(and_(right_words, splat4(left_packed, at + 2))))
        a3 = add(a3, popcount(and_(right_words, splat4(left_packed, at + 3))))
    return a0, a1, a2, a3


@numba.njit(inline="always", nogil=True, cache=True)
def _column_counts(  # pragma: no cover - compiled
    left_packed: Any, right: Any, base: int, column: int, first_word: int, stop_word: int
) -> Any:
    """Shared bits of four rows against one column, with scalar POPCNT."""
    t0 = t1 = t2 = t3 = np.uint64(0)
    for word in range(first_word, stop_word):
        right_word = element(right, word, column)
        at = base + word * 4
        t0 += popcount(element_at(left_packed, at) & right_word)
        t1 += popcount(element_at(left_packed, at + 1) & right_word)
        t2 += popcount(element_at(left_packed, at + 2) & right_word)
        t3 += popcount(element_at(left_packed, at + 3) & right_word)
    return t0, t1, t2, t3


@numba.njit(nogil=True, cache=True)
def _count_popcnt(  # pragma: no cover - compiled
    left_packed: Any, right: Any, block: int, words: int, column: int,
    first_word: int, stop_word: int, s0: Any, s1: Any, s2: Any, s3: Any,
) -> Any:  # fmt: skip
    base = block * words * 4
    c0 = _column_counts(left_packed, right, base, column, first_word, stop_word)
    c1 = _column_counts(left_packed, right, base, column + 1, first_word, stop_word)
    c2 = _column_counts(left_packed, right, base, column + 2, first_word, stop_word)
    c3 = _column_counts(left_packed, right, base, column + 3, first_word, stop_word)
    return (
        add(s0, vector4(c0[0], c1[0], c2[0], c3[0])),
        add(s1, vector4(c0[1], c1[1], c2[1], c3[1])),
        add(s2, vector4(c0[2], c1[2], c2[2], c3[2])),
        add(s3, vector4(c0[3], c1[3], c2[3], c3[3])),
    )


@numba.njit(nogil=True, cache=True)
def _count_avx2(  # pragma: no cover - compiled
    left_packed: Any, right: Any, block: int, words: int, column: int,
    first_word: int, stop_word: int, s0: Any, s1: Any, s2: Any, s3: Any,
) -> Any:  # fmt: skip
    a0, a1, a2, a3 = s0, s1, s2, s3
    base = block * words * 8
    word = first_word
    while word < stop_word:
        stop = min(stop_word, word + _BYTE_WORDS)
        c0 = zeros4()
        c1 = zeros4()
        c2 = zeros4()
        c3 = zeros4()
        for step in range(word, stop):
            low = load4(right, 2 * step, column)
            high = load4(right, 2 * step + 1, column)
            at = base + step * 8
            c0 = add_bytes(c0, nibble_popcount(and_(low, splat4(left_packed, at))))
            c0 = add_bytes(c0, nibble_popcount(and_(high, splat4(left_packed, at + 1))))
            c1 = add_bytes(c1, nibble_popcount(and_(low, splat4(left_packed, at + 2))))
            c1 = add_bytes(c1, nibble_popcount(and_(high, splat4(left_packed, at + 3))))
            c2 = add_bytes(c2, nibble_popcount(and_(low, splat4(left_packed, at + 4))))
            c2 = add_bytes(c2, nibble_popcount(and_(high, splat4(left_packed, at + 5))))
            c3 = add_bytes(c3, nibble_popcount(and_(low, splat4(left_packed, at + 6))))
            c3 = add_bytes(c3, nibble_popcount(and_(high, splat4(left_packed, at + 7))))
        a0 = add(a0, sum_bytes(c0))
        a1 = add(a1, sum_bytes(c1))
        a2 = add(a2, sum_bytes(c2))
        a3 = add(a3, sum_bytes(c3))
        word = stop
    return a0, a1, a2, a3


def _lanes(path: Any) -> int:  # pragma: no cover - replaced by the overload in jitted code
    """Pairs a vector holds on ``path``."""
    raise NotImplementedError


def _zeros(path: Any) -> Any:  # pragma: no cover - replaced by the overload in jitted code
    """A zero vector of the path's width."""
    raise NotImplementedError


def _load_rest(path: Any, rest: Any, column: int) -> Any:  # pragma: no cover
    """The path's width of ``rest`` from ``column`` on."""
    raise NotImplementedError


def _count(  # pragma: no cover - replaced by the overload in jitted code
    path: Any, left_packed: Any, right: Any, block: int, words: int, column: int,
    first_word: int, stop_word: int, s0: Any, s1: Any, s2: Any, s3: Any,
) -> Any:  # fmt: skip
    """The path's shared-bit counts over words [first_word, stop_word) of one row block
    against one vector of columns, added to (s0, s1, s2, s3)."""
    raise NotImplementedError


def _literal_path(path: Any) -> int | None:
    return path.code if isinstance(path, _PathMarkerType) else None


@overload(_lanes, inline="always")
def _lanes_for_path(path: Any) -> Any:  # pragma: no cover - typing only
    code = _literal_path(path)
    if code is None:
        return None
    width = 8 if code == 0 else 4

    def lanes(path: Any) -> Any:
        return width

    return lanes


@overload(_zeros, inline="always")
def _zeros_for_path(path: Any) -> Any:  # pragma: no cover - typing only
    code = _literal_path(path)
    if code is None:
        return None

    def zeros(path: Any) -> Any:
        return zeros8() if code == 0 else zeros4()

    return zeros


@overload(_load_rest, inline="always")
def _load_rest_for_path(path: Any, rest: Any, column: Any) -> Any:  # pragma: no cover
    code = _literal_path(path)
    if code is None:
        return None
    load = load8_at if code == 0 else load4_at

    def load_rest(path: Any, rest: Any, column: Any) -> Any:
        return load(rest, column)

    return load_rest


@overload(_count, inline="always")
def _count_for_path(  # pragma: no cover - typing only
    path: Any, left_packed: Any, right: Any, block: Any, words: Any, column: Any,
    first_word: Any, stop_word: Any, s0: Any, s1: Any, s2: Any, s3: Any,
) -> Any:  # fmt: skip
    code = _literal_path(path)
    if code is None:
        return None
    kernel = {0: _count_avx512, 1: _count_avx2, 2: _count_generic, 3: _count_popcnt}[code]

    def count(
        path: Any, left_packed: Any, right: Any, block: Any, words: Any, column: Any,
        first_word: Any, stop_word: Any, s0: Any, s1: Any, s2: Any, s3: Any,
    ) -> Any:  # fmt: skip
        return kernel(
            left_packed, right, block, words, column, first_word, stop_word, s0, s1, s2, s3
        )

    return count


@numba.njit(inline="always", nogil=True, cache=True)
def _select(s0: Any, s1: Any, s2: Any, s3: Any, row: int) -> Any:  # pragma: no cover
    if row == 0:
        return s0
    if row == 1:
        return s1
    if row == 2:
        return s2
    return s3


@numba.njit(nogil=True, cache=True)
def _compare_row_blocks(  # pragma: no cover - compiled
    path: Any,
    left_packed: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
    left_rest: npt.NDArray[np.int64],
    right_rest: npt.NDArray[np.int64],
    required: npt.NDArray[np.int32],
    tile_low: npt.NDArray[np.int32],
    tile_high: npt.NDArray[np.int32],
    rows: int,
    columns: int,
    words: int,
    split: int,
    within: bool,
    block_start: int,
    block_stop: int,
    resume_tile: int,
    resume_block: int,
    out_rows: npt.NDArray[np.int32],
    out_cols: npt.NDArray[np.int32],
    out_shared: npt.NDArray[np.int32],
) -> tuple[int, int, int, int]:
    """Left row blocks [block_start, block_stop) against every right column (only columns
    after the row when ``within``), from (resume_tile, resume_block) on.

    Writes kept pairs into the caller's buffers and returns (kept, compared, next_tile,
    next_block); next_tile == -1 when done. It stops before a (block, tile) that might not
    fit (capacity >= 4 x (TILE_COLUMNS + 8) is enough for one), so the hot loop never
    reallocates."""
    lanes = _lanes(path)
    capacity = out_rows.shape[0]
    kept = 0
    compared = 0
    floors = np.empty(4, np.int64)
    rests = np.empty(4, np.int64)
    tiles = (columns + TILE_COLUMNS - 1) // TILE_COLUMNS
    for tile in range(resume_tile, tiles):
        col0 = tile * TILE_COLUMNS
        col1 = min(columns, col0 + TILE_COLUMNS)
        low = tile_low[tile]
        high = tile_high[tile]
        first_block = resume_block if tile == resume_tile else block_start
        for block in range(first_block, block_stop):
            row0 = block * 4
            first_column = max(col0, row0 + 1) if within else col0
            if first_column >= col1:
                continue
            start = first_column - first_column % lanes
            if kept + 4 * (col1 - start) > capacity:
                return kept, compared, tile, block
            active = False
            for r in range(4):
                row = row0 + r
                floors[r] = _NEVER
                rests[r] = 0
                if row >= rows:
                    continue
                first = max(col0, row + 1) if within else col0
                if first >= col1:
                    continue
                count_a = left_counts[row]
                # The best pair in this tile is at the right popcount nearest count_a;
                # empty pairs (total 0) never match, so an empty row looks at 1 bit.
                nearest = min(max(count_a, low), high)
                if count_a + nearest == 0:
                    nearest = min(1, high)
                total = count_a + nearest
                if total == 0 or min(count_a, nearest) < required[total]:
                    continue
                # required is nondecreasing over totals >= 1: a floor for every pair here.
                floors[r] = required[max(1, count_a + low)]
                rests[r] = left_rest[row]
                compared += col1 - first
                active = True
            if not active:
                continue
            f0 = floors[0]
            f1 = floors[1]
            f2 = floors[2]
            f3 = floors[3]
            # The half-way test pays only where it often prunes: after 16 tries here, if it
            # let most vectors through, count the rest of this tile in one go.
            pause = split
            tries = 0
            through = 0
            for column in range(start, col1, lanes):
                zero = _zeros(path)
                s0, s1, s2, s3 = _count(
                    path, left_packed, right, block, words, column, 0, pause,
                    zero, zero, zero, zero,
                )  # fmt: skip
                if pause < words:
                    tries += 1
                    rest_right = _load_rest(path, right_rest, column)
                    if not (
                        may_reach(s0, rest_right, rests[0], f0)
                        or may_reach(s1, rest_right, rests[1], f1)
                        or may_reach(s2, rest_right, rests[2], f2)
                        or may_reach(s3, rest_right, rests[3], f3)
                    ):
                        continue
                    through += 1
                    if tries >= 16 and 2 * through > tries:
                        pause = words
                    s0, s1, s2, s3 = _count(
                        path, left_packed, right, block, words, column, split, words,
                        s0, s1, s2, s3,
                    )  # fmt: skip
                if not (
                    any_at_least(s0, f0)
                    or any_at_least(s1, f1)
                    or any_at_least(s2, f2)
                    or any_at_least(s3, f3)
                ):
                    continue
                for r in range(4):
                    row = row0 + r
                    if floors[r] == _NEVER:
                        continue
                    counts = _select(s0, s1, s2, s3, r)
                    count_a = left_counts[row]
                    for k in range(lanes):
                        other = column + k
                        if other >= col1 or (within and other <= row):
                            continue
                        shared = lane(counts, k)
                        if shared >= np.uint64(required[count_a + right_counts[other]]):
                            out_rows[kept] = row
                            out_cols[kept] = other
                            out_shared[kept] = shared
                            kept += 1
    return kept, compared, -1, -1


@numba.njit(inline="always", nogil=True, cache=True)
def _floor_to_beat(best: float, least_total: int) -> int:  # pragma: no cover - compiled
    """A shared count below which no pair with total >= least_total beats Dice ``best``
    (one below the float bound, so rounding can only make it looser)."""
    return max(0, int(best * least_total / 2.0) - 1)


@numba.njit(nogil=True, cache=True)
def _best_row_blocks(  # pragma: no cover - compiled
    path: Any,
    left_packed: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    left_counts: npt.NDArray[np.int32],
    right_counts: npt.NDArray[np.int32],
    left_rest: npt.NDArray[np.int64],
    right_rest: npt.NDArray[np.int64],
    tile_low: npt.NDArray[np.int32],
    tile_high: npt.NDArray[np.int32],
    excluded: npt.NDArray[np.int64],
    rows: int,
    columns: int,
    words: int,
    split: int,
    block_start: int,
    block_stop: int,
    out: npt.NDArray[np.float64],
) -> None:
    """Each left row's best Dice against every right column but ``excluded[row]``, for row
    blocks [block_start, block_stop); ``out`` holds the best so far (start from zeros).

    A (row, tile) whose best possible Dice cannot beat the row's best so far is skipped, and
    a vector of pairs whose counts cannot reach the row's floor is not looked at; neither
    changes a result."""
    lanes = _lanes(path)
    floors = np.empty(4, np.int64)
    rests = np.empty(4, np.int64)
    tiles = (columns + TILE_COLUMNS - 1) // TILE_COLUMNS
    for tile in range(tiles):
        col0 = tile * TILE_COLUMNS
        col1 = min(columns, col0 + TILE_COLUMNS)
        low = tile_low[tile]
        high = tile_high[tile]
        for block in range(block_start, block_stop):
            row0 = block * 4
            active = False
            for r in range(4):
                row = row0 + r
                floors[r] = _NEVER
                rests[r] = 0
                if row >= rows:
                    continue
                count_a = left_counts[row]
                nearest = min(max(count_a, low), high)
                total = count_a + nearest
                if total == 0 or 2.0 * min(count_a, nearest) / total <= out[row]:
                    continue
                floors[r] = _floor_to_beat(out[row], count_a + low)
                rests[r] = left_rest[row]
                active = True
            if not active:
                continue
            f0 = floors[0]
            f1 = floors[1]
            f2 = floors[2]
            f3 = floors[3]
            # The half-way test pays only where it often prunes: after 16 tries here, if it
            # let most vectors through, count the rest of this tile in one go.
            pause = split
            tries = 0
            through = 0
            for column in range(col0, col1, lanes):
                zero = _zeros(path)
                s0, s1, s2, s3 = _count(
                    path, left_packed, right, block, words, column, 0, pause,
                    zero, zero, zero, zero,
                )  # fmt: skip
                if pause < words:
                    tries += 1
                    rest_right = _load_rest(path, right_rest, column)
                    if not (
                        may_reach(s0, rest_right, rests[0], f0)
                        or may_reach(s1, rest_right, rests[1], f1)
                        or may_reach(s2, rest_right, rests[2], f2)
                        or may_reach(s3, rest_right, rests[3], f3)
                    ):
                        continue
                    through += 1
                    if tries >= 16 and 2 * through > tries:
                        pause = words
                    s0, s1, s2, s3 = _count(
                        path, left_packed, right, block, words, column, split, words,
                        s0, s1, s2, s3,
                    )  # fmt: skip
                if not (
                    any_at_least(s0, f0)
                    or any_at_least(s1, f1)
                    or any_at_least(s2, f2)
                    or any_at_least(s3, f3)
                ):
                    continue
                for r in range(4):
                    if floors[r] == _NEVER:
                        continue
                    row = row0 + r
                    counts = _select(s0, s1, s2, s3, r)
                    count_a = left_counts[row]
                    best = out[row]
                    for k in range(lanes):
                        other = column + k
                        total = count_a + right_counts[min(other, columns - 1)]
                        if other >= col1 or other == excluded[row] or total == 0:
                            continue
                        score = 2.0 * np.float64(lane(counts, k)) / total
                        if score > best:
                            best = score
                    if best > out[row]:
                        out[row] = best
                        floors[r] = _floor_to_beat(best, count_a + low)
                f0 = floors[0]
                f1 = floors[1]
                f2 = floors[2]
                f3 = floors[3]


def compare_row_blocks(path: KernelPath, *args: Any) -> tuple[int, int, int, int]:
    """Run the driver for ``path`` (see :func:`_compare_row_blocks` for the arguments)."""
    result: tuple[int, int, int, int] = _compare_row_blocks(_MARKERS[path], *args)
    return result


def best_row_blocks(path: KernelPath, *args: Any) -> None:
    """Run the best-score driver for ``path`` (see :func:`_best_row_blocks`)."""
    _best_row_blocks(_MARKERS[path], *args)

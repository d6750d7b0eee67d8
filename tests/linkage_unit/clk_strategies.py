"""Hypothesis strategies and generators for packed CLKs (uint64, bit i in word i // 64)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

from protocol.clk_layout import ClkLayout


def random_clks(
    generator: np.random.Generator, records: int, *, words: int = 16, density: float = 0.45
) -> npt.NDArray[np.uint64]:
    bits = generator.random((records, words * 64)) < density
    return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(records, words)


def noisy_copies(
    generator: np.random.Generator, clks: npt.NDArray[np.uint64], flip: float
) -> npt.NDArray[np.uint64]:
    mask = random_clks(generator, len(clks), words=clks.shape[1], density=flip)
    return clks ^ mask


@st.composite
def clk_arrays(draw: st.DrawFn, *, max_records: int = 40, words: int = 2) -> npt.NDArray[np.uint64]:
    """Small CLK arrays with structure: low popcounts, near-duplicates and empty CLKs occur."""
    records = draw(st.integers(0, max_records))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9]))
    generator = np.random.default_rng(seed)
    clks = random_clks(generator, records, words=words, density=density)
    if records > 1 and draw(st.booleans()):
        clks[records // 2 :] = noisy_copies(generator, clks[: records - records // 2], 0.05)
    return clks


def grouped_parties(
    generator: np.random.Generator,
    layout: ClkLayout,
    *,
    left: int,
    right: int,
    shared: int,
    flip: float = 0.03,
    missing: float = 0.05,
    changed: float = 0.08,
    exact: float = 0.5,
    density: float = 0.3,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Two parties' encodings of several field groups (``layout``): the first ``shared``
    records of ``right`` are the first ``shared`` of ``left`` again, each group independently
    exact (``exact``), missing on the right (all zero, ``missing``), another value
    (``changed``) or a noisy copy (``flip`` of its bits flipped)."""
    left_clks = random_clks(generator, left, words=layout.total_words, density=density)
    right_clks = random_clks(generator, right, words=layout.total_words, density=density)
    for g in range(len(layout.groups)):
        start, stop = layout.word_range(g)
        copy = left_clks[:shared, start:stop].copy()
        draw = generator.random(shared)
        noisy = draw >= exact + missing + changed
        copy[noisy] = noisy_copies(generator, copy[noisy], flip)
        is_changed = (draw >= exact + missing) & ~noisy
        copy[is_changed] = random_clks(
            generator, int(is_changed.sum()), words=stop - start, density=density
        )
        copy[(draw >= exact) & (draw < exact + missing)] = 0
        right_clks[:shared, start:stop] = copy
    return left_clks, right_clks

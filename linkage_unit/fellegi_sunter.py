"""Fellegi-Sunter model: the score stage's mathematics (block -> compare -> **score** -> solve).

For an encoding of several field groups, each candidate pair has one Dice similarity per
group (``group_similarity.py``). The model turns that vector into a match probability, trained
without labels on the run's own pairs, as Splink does for plaintext:

* **Agreement levels per group, from the data.** Level 0 is *missing* (either record has no bits
  in the group): it weighs nothing either way. The top level is *identical* (the two group
  CLKs are equal and not empty). In between, the group's similarity (Dice; for a diffused
  group the share of agreeing bits, ``group_similarity.agreement_bits``) is cut where a random pair of records
  becomes rarer by a factor of about three (the random-pair tail probabilities
  ``level_tails``: 10^-0.5, 10^-1, ...), and above the last such cut into ``upper_levels``
  bins holding equally many candidate pairs. Nothing depends on where Dice values lie for a
  particular encoding, so hardened encodings (whose dissimilar pairs look random) are cut at
  their own places.
* **u** (a level's probability for a non-match) from random pairs, as Splink estimates it; the
  identical level's rate exactly, from counts of equal group encodings. Random pairs include
  a few true matches, which at these sizes are not negligible on the high levels, so
  ``u = (observed - lambda m) / (1 - lambda)`` is re-estimated with ``m`` and ``lambda`` on
  every iteration, never below ``floor = 0.5 / random pairs``.
* **m** (a level's probability for a match) and **lambda** (the prior: the share of all
  comparable pairs that match, one per party pair) by expectation-maximisation over the
  candidate pairs, with ``m / u`` kept non-decreasing over a group's levels (more similar is
  never less evidence of a match) and lambda at most the smaller party's records. Pairs that are not candidates (below the record-level Dice cut) count as
  non-matches: ``lambda = sum of candidate posteriors / comparable pairs``.
* The **match weight** of a pair is ``log2(lambda / (1 - lambda)) + sum over non-missing groups
  of log2(m / u)``; its probability ``1 / (1 + 2 ** -weight)``. Between two parties,
  :func:`exclusive_weights` then conditions each pair on its records' other candidates (a pair
  with no rival is likelier, one with a stronger rival less likely), on each side where the
  other party holds at most one record per person: both sides between duplicate-free parties,
  only the deduplicated party's record's side between a deduplicated and a duplicate-free
  party, neither between two deduplicated parties.

:func:`fit` is the vectorised fast path (EM over the distinct comparison patterns with their
counts); :func:`reference_fit` is its slow obvious twin (one pair at a time, plain Python).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.group_similarity import GroupSimilarities
from linkage_unit.similarity import _prefetch, default_workers
from protocol.errors import MatchingError

__all__ = [
    "DEFAULT_LEVEL_TAILS",
    "MIN_SEPARATING_GROUPS",
    "SEPARATING_DISTANCE",
    "FellegiSunterModel",
    "GroupLevels",
    "ModelSettings",
    "comparison_levels",
    "comparison_levels_numpy",
    "derive_levels",
    "derive_levels_numpy",
    "derive_levels_of_chunks",
    "levels_of_chunks",
    "exclusive_weights",
    "fit",
    "probability_of_weight",
    "random_level_counts",
    "reference_exclusive_weights",
    "reference_fit",
    "weight_of_probability",
]

DEFAULT_LEVEL_TAILS = tuple(10.0 ** (-k / 2) for k in range(1, 10))
"""Random-pair tail probabilities at which Dice levels are cut: 0.32, 0.1, 0.032, ... 1e-4.5."""

_M_START_POWER = 12.0
"""EM starts each group's m in proportion to level ** this: most of it (about two thirds with
ten to thirteen levels) on *identical*, where a match's group most often is. EM on a small
population with structured non-matches has more than one fixed point, and with a flatter
start (power 3) it could settle on one that takes a class of look-alike non-matches for the
matches (102 made-up records whose postcodes and birth dates repeat in step: prior at its cap,
half the records joined, once diffused groups were compared by agreement); on the synth sets
(seeds 2 and 3, 10k and 100k records a party) powers 3 and 12 reach the same F1 and
estimates."""

_M_PSEUDO = 1e-3
"""Pseudo-count of matches per level, so that a level no match reached keeps a finite weight."""

SEPARATING_DISTANCE = 0.5
MIN_SEPARATING_GROUPS = 2
"""A trained model is trusted when at least this many groups separate its matches from its
non-matches: the total variation distance between the group's ``m`` and ``u`` (half the sum
of their absolute differences over the non-missing levels) is at least ``SEPARATING_DISTANCE``.
Two groups, because one group is one indicator (why the model needs two groups at all). EM
on pairs holding no true match can settle on a class of look-alikes that agree on one group
only: on a synth MoJ extract of 10k people without a duplicate, deduplicated alone, one
linkage secret in eight gave a model whose "matches" were the pairs sharing a birth date
(distances 0.03, 1.0 and 0.02 for name, birth and postcode) and joined 4,134 different people;
fits that held true matches measured 0.87 to 0.98 on every group (docs/spine.md)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSettings:
    """How the Fellegi-Sunter score stage runs.

    ``match_probability``: the solver takes pairs whose posterior match probability is at
    least this (the operator's cut). ``candidates_per_record``: the record-level Dice cut for
    candidate pairs is where a random pair passes about this many times per record (so the cut
    follows the data and the file sizes). ``random_pairs``: pairs sampled for the u
    probabilities and the cut (more when the cut's tail needs it, up to ``max_random_pairs``).
    ``term_frequencies``: weigh agreement on a common group encoding (many records share it)
    less, from counts of equal encodings the linkage unit already holds.
    """

    match_probability: float = 0.5
    candidates_per_record: float = 10.0
    random_pairs: int = 2_000_000
    max_random_pairs: int = 20_000_000
    level_tails: tuple[float, ...] = DEFAULT_LEVEL_TAILS
    upper_levels: int = 4
    min_tail_samples: int = 50
    max_iterations: int = 500
    tolerance: float = 1e-7
    term_frequencies: bool = False

    def __post_init__(self) -> None:
        if not (0.0 < self.match_probability < 1.0):
            raise MatchingError("match_probability must be in (0, 1)")
        if self.candidates_per_record <= 0:
            raise MatchingError("candidates_per_record must be > 0")
        if not (1000 <= self.random_pairs <= self.max_random_pairs):
            raise MatchingError("random_pairs must be at least 1000 and at most max_random_pairs")
        tails = self.level_tails
        if (
            not tails
            or any(not (0.0 < t < 1.0) for t in tails)
            or list(tails) != sorted(tails, reverse=True)
        ):
            raise MatchingError("level_tails must be decreasing probabilities in (0, 1)")
        if not (0 <= self.upper_levels <= 16):
            raise MatchingError("upper_levels must be between 0 and 16")
        if self.min_tail_samples < 1 or self.max_iterations < 1 or self.tolerance <= 0:
            raise MatchingError("min_tail_samples, max_iterations and tolerance must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLevels:
    """One group's agreement levels: 0 missing; 1 .. len(cuts) + 1 similarity below each cut
    in turn (the last: at or above the last cut); len(cuts) + 2 identical. The similarity is
    Dice when ``agreement_bits`` is 0, else the share of agreeing bits over that many bits (a
    diffused group: ``group_similarity.agreement_bits``)."""

    name: str
    cuts: tuple[float, ...]
    agreement_bits: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.agreement_bits, bool) or not (
            isinstance(self.agreement_bits, int) and self.agreement_bits >= 0
        ):
            raise MatchingError("agreement_bits must be 0 (Dice) or a group length in bits")
        if any(not (0.0 <= c < 1.0) for c in self.cuts) or list(self.cuts) != sorted(
            set(self.cuts)
        ):
            raise MatchingError("level cuts must be distinct, increasing and in [0, 1)")

    @property
    def count(self) -> int:
        """Levels including missing and identical."""
        return len(self.cuts) + 3

    @property
    def identical(self) -> int:
        return len(self.cuts) + 2


def comparison_levels(
    similarities: GroupSimilarities, groups: Sequence[GroupLevels]
) -> npt.NDArray[np.uint8]:
    """``(pairs, groups)`` agreement levels (see :class:`GroupLevels`), in one numba pass
    over the counts: each similarity computed as ``GroupSimilarities.scores`` does (the
    same IEEE operations, so the same float64) and placed among the cuts as
    ``np.searchsorted(side="right")`` would; :func:`comparison_levels_numpy` is the twin
    (its float64 similarities and temporaries, chunked, took 3.3 s at 1M x 1M)."""
    if similarities.shared.shape[1] != len(groups):
        raise MatchingError("one set of levels per group is needed")
    out = np.empty(similarities.shared.shape, np.uint8)
    shared, left, right = _counts(similarities)
    bits = np.array([group.agreement_bits for group in groups], np.int64)
    cut_counts = np.array([len(group.cuts) for group in groups], np.int64)
    cuts = np.zeros((len(groups), max([len(group.cuts) for group in groups], default=0)))
    for g, group in enumerate(groups):
        cuts[g, : len(group.cuts)] = group.cuts
    identical = np.array([group.identical for group in groups], np.int64)

    def task(start: int) -> None:
        stop = min(start + _KERNEL_ROWS, len(out))
        _levels_kernel(shared, left, right, bits, cuts, cut_counts, identical, start, stop, out)

    _run_rows(task, len(out))
    return out


_KERNEL_ROWS = 1 << 21
"""Rows a task of the level kernels takes (a thread pool runs the tasks)."""


def _run_rows(task: Callable[[int], None], rows: int) -> None:
    """``task(start)`` for every chunk of ``_KERNEL_ROWS`` rows, on the thread pool (the
    kernels release the GIL; the chunks write disjoint rows)."""
    starts = list(range(0, rows, _KERNEL_ROWS))
    _run_chunks(lambda chunk: task(starts[chunk]), len(starts))


def _run_chunks(task: Callable[[int], None], chunks: int) -> None:
    """``task(chunk)`` for chunks 0 .. chunks - 1, on the thread pool when there are
    several."""
    if chunks <= 1:
        for chunk in range(chunks):
            task(chunk)
        return
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        list(pool.map(task, range(chunks)))


def _counts(
    similarities: GroupSimilarities,
) -> tuple[npt.NDArray[np.integer[Any]], ...]:
    """The three count arrays in their own type (the kernels widen each count as they read
    it), contiguous."""
    return (
        np.ascontiguousarray(similarities.shared),
        np.ascontiguousarray(similarities.left_counts),
        np.ascontiguousarray(similarities.right_counts),
    )


@numba.njit(nogil=True, cache=True, inline="always")
def _similarity(shared: int, left: int, right: int, bits: int) -> float:  # pragma: no cover
    """``GroupSimilarities.scores`` of one pair and group, operation for operation: Dice
    ``2.0 * shared / float(left + right)``, or ``1.0 - float(left + right - 2 shared) /
    bits``; 0 when both sides are empty."""
    total = left + right
    if total <= 0:
        return 0.0
    if bits == 0:
        return (2.0 * np.float64(shared)) / np.float64(total)
    return 1.0 - np.float64(total - 2 * shared) / np.float64(bits)


@numba.njit(nogil=True, cache=True)
def _levels_kernel(  # pragma: no cover - compiled
    shared: npt.NDArray[np.integer[Any]],
    left: npt.NDArray[np.integer[Any]],
    right: npt.NDArray[np.integer[Any]],
    bits: npt.NDArray[np.int64],
    cuts: npt.NDArray[np.float64],
    cut_counts: npt.NDArray[np.int64],
    identical: npt.NDArray[np.int64],
    start: int,
    stop: int,
    out: npt.NDArray[np.uint8],
) -> None:
    """Levels of rows [start, stop), every group in one pass over the rows (group g's cuts
    are ``cuts[g, :cut_counts[g]]``)."""
    for k in range(start, stop):
        for group in range(shared.shape[1]):
            s = shared[k, group]
            a = left[k, group]
            b = right[k, group]
            if a == 0 or b == 0:
                out[k, group] = 0
            elif s == a and s == b and s > 0:
                out[k, group] = identical[group]
            else:
                value = _similarity(s, a, b, bits[group])
                count = cut_counts[group]
                level = 0
                if value != value:  # NaN sorts last in np.searchsorted
                    level = count
                else:
                    while level < count and cuts[group, level] <= value:
                        level += 1
                out[k, group] = level + 1


@numba.njit(nogil=True, cache=True)
def _upper_kernel(  # pragma: no cover - compiled
    shared: npt.NDArray[np.integer[Any]],
    left: npt.NDArray[np.integer[Any]],
    right: npt.NDArray[np.integer[Any]],
    bits: npt.NDArray[np.int64],
    above: npt.NDArray[np.float64],
    start: int,
    stop: int,
    cursor: npt.NDArray[np.int64],
    out: npt.NDArray[np.float64],
) -> None:
    """Every group's usable similarities (neither missing nor identical) greater than
    ``above[g]`` (NaN: all) of rows [start, stop), in row order: group g's next one goes to
    ``out[cursor[g]]`` and the cursor moves on. An empty ``out``: only counts them."""
    store = out.shape[0] > 0
    for k in range(start, stop):
        for group in range(shared.shape[1]):
            s = shared[k, group]
            a = left[k, group]
            b = right[k, group]
            if a == 0 or b == 0 or (s == a and s == b and s > 0):
                continue
            value = _similarity(s, a, b, bits[group])
            limit = above[group]
            if limit == limit and not (value > limit):
                continue
            if store:
                out[cursor[group]] = value
            cursor[group] += 1


def _uppers(
    similarities: GroupSimilarities, lengths: Sequence[int], above: Sequence[float]
) -> list[npt.NDArray[np.float64]]:
    """Per group, :func:`_usable` of ``similarities`` above ``above[g]``, all groups in one
    pass over the rows (a pass to count, one to fill), chunks on the thread pool; each
    group's values in row order."""
    shared, left, right = _counts(similarities)
    groups = len(lengths)
    bits = np.array(lengths, np.int64)
    limits = np.array(above, np.float64)
    starts = list(range(0, len(similarities), _KERNEL_ROWS))
    counts = np.zeros((len(starts), groups), np.int64)
    empty = np.empty(0, np.float64)

    def count(chunk: int) -> None:
        start = starts[chunk]
        stop = min(start + _KERNEL_ROWS, len(similarities))
        _upper_kernel(shared, left, right, bits, limits, start, stop, counts[chunk], empty)

    _run_chunks(count, len(starts))
    totals = counts.sum(axis=0)
    group_starts = np.concatenate([[0], np.cumsum(totals)])
    cursors = group_starts[:-1] + np.cumsum(counts, axis=0) - counts
    out = np.empty(int(totals.sum()), np.float64)

    def fill(chunk: int) -> None:
        start = starts[chunk]
        stop = min(start + _KERNEL_ROWS, len(similarities))
        _upper_kernel(shared, left, right, bits, limits, start, stop, cursors[chunk], out)

    _run_chunks(fill, len(starts))
    return [out[group_starts[g] : group_starts[g + 1]] for g in range(groups)]


@numba.njit(nogil=True, cache=True)
def _usable_similarities(  # pragma: no cover - compiled
    shared: npt.NDArray[np.integer[Any]],
    left: npt.NDArray[np.integer[Any]],
    right: npt.NDArray[np.integer[Any]],
    group: int,
    bits: int,
    above: float,
    out: npt.NDArray[np.float64],
) -> int:
    """The group's similarities of its usable pairs (neither missing nor identical) that are
    greater than ``above`` (NaN: all), in row order, written to ``out``; returns how many
    (an empty ``out``: only counts them)."""
    count = 0
    store = out.shape[0] > 0
    for k in range(shared.shape[0]):
        s = shared[k, group]
        a = left[k, group]
        b = right[k, group]
        if a == 0 or b == 0 or (s == a and s == b and s > 0):
            continue
        value = _similarity(s, a, b, bits)
        if above == above and not (value > above):
            continue
        if store:
            out[count] = value
        count += 1
    return count


def _usable(
    similarities: GroupSimilarities, group: int, bits: int, above: float
) -> npt.NDArray[np.float64]:
    """:func:`_usable_similarities` as an array of exactly their number (counted first, so
    nothing larger than the values themselves is held)."""
    shared, left, right = _counts(similarities)
    count = _usable_similarities(shared, left, right, group, bits, above, np.empty(0, np.float64))
    out = np.empty(count, np.float64)
    if count:
        _usable_similarities(shared, left, right, group, bits, above, out)
    return out


def derive_levels(
    names: Sequence[str],
    random: GroupSimilarities,
    candidates: GroupSimilarities,
    settings: ModelSettings,
    *,
    agreement_bits: Sequence[int] | None = None,
) -> tuple[GroupLevels, ...]:
    """Each group's similarity cuts from the run's own pairs (module docstring): random-pair
    tail quantiles while enough random pairs lie beyond them, then equal-count bins of the
    candidate pairs above the last. ``agreement_bits``: per group, 0 for Dice or its length
    in bits for the share of agreeing bits (None: Dice throughout). Each group's usable
    similarities come from a numba pass over the counts, the tail quantiles from one
    ``np.quantile`` call (one partition, not one per tail); :func:`derive_levels_numpy` is
    the twin, cut for cut the same."""
    return derive_levels_of_chunks(
        names, random, [candidates], settings, agreement_bits=agreement_bits
    )


def derive_levels_of_chunks(
    names: Sequence[str],
    random: GroupSimilarities,
    candidates: Iterable[GroupSimilarities],
    settings: ModelSettings,
    *,
    agreement_bits: Sequence[int] | None = None,
) -> tuple[GroupLevels, ...]:
    """:func:`derive_levels` of the candidate pairs handed over a chunk at a time, so their
    counts need never all be held at once: the same cuts, since each group's values above
    its last tail cut are the same values in the same order, chunk after chunk."""
    lengths = _lengths(names, agreement_bits)
    tail_cuts = _tail_cuts(names, random, settings, lengths)
    uppers = _uppers_of_chunks(candidates, lengths, tail_cuts, lambda chunk, start: None)
    return _group_levels(names, lengths, tail_cuts, uppers, settings)


def levels_of_chunks(
    names: Sequence[str],
    random: GroupSimilarities,
    candidates: Iterable[GroupSimilarities],
    size: int,
    settings: ModelSettings,
    *,
    agreement_bits: Sequence[int] | None = None,
) -> tuple[tuple[GroupLevels, ...], npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """One pass over the candidate pairs (``size`` in all, handed over a chunk at a time):
    the level cuts :func:`derive_levels_of_chunks` gives, every pair's levels under them,
    and ``recount``: the pairs whose levels are not final yet.

    The cuts below each group's last tail cut come from the random pairs alone, so each
    chunk's levels are taken under those as it goes; the upper cuts, quantiles of the
    candidates above the last tail cut, only split the top level below identical (and move
    the identical level up). A pair in that top level of a group that gained upper cuts is
    flagged: the caller counts those pairs again and takes their levels under the final cuts
    (:func:`comparison_levels`); every other pair's levels are final here, identical ones
    renumbered. So the counts are taken once, not twice (about 3 s at 1M x 1M), and only
    the flagged few again."""
    lengths = _lengths(names, agreement_bits)
    tail_cuts = _tail_cuts(names, random, settings, lengths)
    provisional = _group_levels(names, lengths, tail_cuts, [_NO_VALUES] * len(names), settings)
    levels = np.empty((size, len(names)), np.uint8)

    def take(chunk: GroupSimilarities, start: int) -> None:
        levels[start : start + len(chunk)] = comparison_levels(chunk, provisional)

    uppers = _uppers_of_chunks(candidates, lengths, tail_cuts, take)
    final = _group_levels(names, lengths, tail_cuts, uppers, settings)
    recount = np.zeros(size, bool)
    for g, (before, after) in enumerate(zip(provisional, final, strict=True)):
        if before.cuts == after.cuts:
            continue
        column = levels[:, g]
        recount |= column == len(before.cuts) + 1
        column[column == before.identical] = after.identical
    return final, levels, recount


_NO_VALUES = np.empty(0, np.float64)


def _lengths(names: Sequence[str], agreement_bits: Sequence[int] | None) -> tuple[int, ...]:
    lengths = tuple(agreement_bits) if agreement_bits is not None else (0,) * len(names)
    if len(lengths) != len(names):
        raise MatchingError("one agreement length (0: Dice) per group is needed")
    return lengths


def _tail_cuts(
    names: Sequence[str],
    random: GroupSimilarities,
    settings: ModelSettings,
    lengths: Sequence[int],
) -> list[tuple[float, ...]]:
    """Each group's cuts at the random pairs' tail quantiles, while enough lie beyond."""
    tail_cuts: list[tuple[float, ...]] = []
    for g in range(len(names)):
        values = _usable(random, g, lengths[g], math.nan)
        tails: list[float] = []
        for tail in settings.level_tails:
            if tail * len(values) < settings.min_tail_samples:
                break
            tails.append(tail)
        cuts: list[float] = []
        if tails:
            quantiles = np.quantile(values, [1.0 - tail for tail in tails])
            cuts = [float(value) for value in quantiles]
        tail_cuts.append(tuple(cuts))
        del values
    return tail_cuts


def _uppers_of_chunks(
    candidates: Iterable[GroupSimilarities],
    lengths: Sequence[int],
    tail_cuts: Sequence[tuple[float, ...]],
    each: Callable[[GroupSimilarities, int], None],
) -> list[npt.NDArray[np.float64]]:
    """Per group, the candidates' usable similarities above its last tail cut, in row
    order, chunk after chunk; ``each(chunk, first row)`` is called on every chunk too."""
    lasts = [cuts[-1] if cuts else math.nan for cuts in tail_cuts]
    parts: list[list[npt.NDArray[np.float64]]] = [[] for _ in lengths]
    start = 0
    for chunk in candidates:
        each(chunk, start)
        start += len(chunk)
        for g, values in enumerate(_uppers(chunk, lengths, lasts)):
            parts[g].append(values)
    return [np.concatenate(part) if part else _NO_VALUES for part in parts]


def _group_levels(
    names: Sequence[str],
    lengths: Sequence[int],
    tail_cuts: Sequence[Sequence[float]],
    uppers: Sequence[npt.NDArray[np.float64]],
    settings: ModelSettings,
) -> tuple[GroupLevels, ...]:
    """Each group's levels from its tail cuts and the candidates' similarities above them
    (quantiles of those for the upper levels): the step both ways of deriving levels share."""
    groups = []
    for g, name in enumerate(names):
        cuts = list(tail_cuts[g])
        upper = uppers[g]
        if settings.upper_levels > 1 and len(upper) >= 25 * settings.upper_levels:
            inner = np.linspace(0.0, 1.0, settings.upper_levels + 1)[1:-1]
            cuts.extend(float(value) for value in np.quantile(upper, inner))
        distinct = sorted({round(c, 12) for c in cuts if 0.0 <= c < 1.0})
        groups.append(GroupLevels(name=name, cuts=tuple(distinct), agreement_bits=lengths[g]))
    return tuple(groups)


def comparison_levels_numpy(
    similarities: GroupSimilarities, groups: Sequence[GroupLevels]
) -> npt.NDArray[np.uint8]:
    """The numpy twin of :func:`comparison_levels`: whole row chunks at a time."""
    if similarities.shared.shape[1] != len(groups):
        raise MatchingError("one set of levels per group is needed")
    out = np.empty(similarities.shared.shape, np.uint8)
    lengths = [group.agreement_bits for group in groups]
    # In row chunks: the float64 similarities and their temporaries are 8-24 bytes a pair and
    # group, several GiB for the 1.8e7 candidates of a 1M x 1M run, against 1 for the levels.
    for start in range(0, len(similarities), _LEVEL_CHUNK):
        rows = slice(start, start + _LEVEL_CHUNK)
        chunk = _rows(similarities, rows)
        dice = chunk.scores(lengths)
        missing = chunk.missing
        identical = chunk.identical
        for g, group in enumerate(groups):
            level = np.searchsorted(np.array(group.cuts, np.float64), dice[:, g], side="right")
            level += 1
            level[identical[:, g]] = group.identical
            level[missing[:, g]] = 0
            out[rows, g] = level
    return out


_LEVEL_CHUNK = 1 << 20


def _rows(similarities: GroupSimilarities, rows: slice) -> GroupSimilarities:
    """A row slice (views, no copy)."""
    return GroupSimilarities(
        shared=similarities.shared[rows],
        left_counts=similarities.left_counts[rows],
        right_counts=similarities.right_counts[rows],
    )


def derive_levels_numpy(
    names: Sequence[str],
    random: GroupSimilarities,
    candidates: GroupSimilarities,
    settings: ModelSettings,
    *,
    agreement_bits: Sequence[int] | None = None,
) -> tuple[GroupLevels, ...]:
    """The numpy twin of :func:`derive_levels`: every similarity as a float64 array, in row
    chunks."""
    lengths = tuple(agreement_bits) if agreement_bits is not None else (0,) * len(names)
    if len(lengths) != len(names):
        raise MatchingError("one agreement length (0: Dice) per group is needed")
    random_dice = random.scores(lengths)
    random_usable = ~random.missing & ~random.identical
    tail_cuts: list[list[float]] = []
    for g in range(len(names)):
        values = random_dice[random_usable[:, g], g]
        cuts: list[float] = []
        for tail in settings.level_tails:
            if tail * len(values) < settings.min_tail_samples:
                break
            cuts.append(float(np.quantile(values, 1.0 - tail)))
        tail_cuts.append(cuts)
    # The candidates above each group's last tail cut, in row chunks (as comparison_levels).
    uppers: list[list[npt.NDArray[np.float64]]] = [[] for _ in names]
    for start in range(0, len(candidates), _LEVEL_CHUNK):
        chunk = _rows(candidates, slice(start, start + _LEVEL_CHUNK))
        candidate_dice = chunk.scores(lengths)
        candidate_usable = ~chunk.missing & ~chunk.identical
        for g in range(len(names)):
            upper = candidate_dice[candidate_usable[:, g], g]
            if tail_cuts[g]:
                upper = upper[upper > tail_cuts[g][-1]]
            uppers[g].append(upper)
    return _group_levels(
        names,
        lengths,
        tail_cuts,
        [np.concatenate(parts or [np.empty(0, np.float64)]) for parts in uppers],
        settings,
    )


def random_level_counts(
    levels: npt.NDArray[np.uint8], groups: Sequence[GroupLevels]
) -> tuple[npt.NDArray[np.float64], ...]:
    """Per group, how many random pairs fell in each level (index 0: missing)."""
    return tuple(
        np.bincount(levels[:, g], minlength=group.count).astype(np.float64)
        for g, group in enumerate(groups)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FellegiSunterModel:
    """A trained model. ``m[g]`` and ``u[g]``: probabilities of group g's levels 1 .. top for a
    match and a non-match (level 0, missing, is left out: it weighs nothing). ``prior[j]``:
    lambda of party pair j (the share of its comparable pairs that match)."""

    groups: tuple[GroupLevels, ...]
    m: tuple[tuple[float, ...], ...]
    u: tuple[tuple[float, ...], ...]
    prior: tuple[float, ...]
    iterations: int
    converged: bool

    def __post_init__(self) -> None:
        if not (len(self.groups) == len(self.m) == len(self.u)):
            raise MatchingError("a model needs m and u for every group")
        for group, m, u in zip(self.groups, self.m, self.u, strict=True):
            if len(m) != group.count - 1 or len(u) != group.count - 1:
                raise MatchingError("m and u need one probability per non-missing level")
        if any(not (0.0 < p < 1.0) for p in self.prior):
            raise MatchingError("a prior must be in (0, 1)")

    def separation(self) -> tuple[float, ...]:
        """Per group, the total variation distance between ``m`` and ``u``: 0 when the group
        tells the model's matches from its non-matches not at all, 1 when perfectly."""
        return tuple(
            0.5 * float(np.abs(np.array(m) - np.array(u)).sum())
            for m, u in zip(self.m, self.u, strict=True)
        )

    @property
    def trusted(self) -> bool:
        """Whether at least ``MIN_SEPARATING_GROUPS`` groups separate the model's matches from
        its non-matches (``SEPARATING_DISTANCE``); an untrusted model's matches are look-alikes
        on fewer groups, not the same people, and its links are not made."""
        separating = sum(1 for value in self.separation() if value >= SEPARATING_DISTANCE)
        return separating >= min(MIN_SEPARATING_GROUPS, len(self.groups))

    def level_weights(self) -> tuple[npt.NDArray[np.float64], ...]:
        """Per group, ``log2(m / u)`` per level, with 0 for level 0 (missing)."""
        return tuple(
            np.concatenate([[0.0], np.log2(np.array(m)) - np.log2(np.array(u))])
            for m, u in zip(self.m, self.u, strict=True)
        )

    def match_weights(
        self,
        levels: npt.NDArray[np.uint8],
        jobs: npt.NDArray[np.int64],
        *,
        adjustments: npt.NDArray[np.float64] | None = None,
    ) -> npt.NDArray[np.float64]:
        """``log2`` posterior odds of a match per pair: the prior of its party pair plus each
        group's level weight, plus ``adjustments`` (term frequencies, log2) when given."""
        weights = np.log2(np.array(self.prior)) - np.log2(1.0 - np.array(self.prior))
        # In place and in row chunks: the same sums in the same order, without a new array
        # of 8 bytes a pair for each term.
        total: npt.NDArray[np.float64] = np.asarray(weights[jobs], np.float64)
        level_weights = self.level_weights()
        for start in range(0, len(total), _LEVEL_CHUNK):
            rows = slice(start, start + _LEVEL_CHUNK)
            part = total[rows]
            for g, level_weight in enumerate(level_weights):
                part += level_weight[levels[rows, g]]
            if adjustments is not None:
                part += adjustments[rows].sum(axis=1)
        return total


def probability_of_weight(
    weights: npt.ArrayLike, *, out: npt.NDArray[np.float64] | None = None
) -> npt.NDArray[np.float64]:
    """Match probability from a match weight (log2 odds); into ``out`` where given (it may
    be ``weights`` itself, a float64 array the caller no longer needs)."""
    array = np.asarray(weights, dtype=np.float64)
    # ``1 / (1 + 2 ** -clip(w))`` step by step in one buffer (the same operations; the
    # expression made five temporaries of 8 bytes a pair).
    result: npt.NDArray[np.float64] = np.clip(array, -1000, 1000, out=out)
    np.negative(result, out=result)
    np.exp2(result, out=result)
    np.add(1.0, result, out=result)
    np.divide(1.0, result, out=result)
    return result


def weight_of_probability(probability: float) -> float:
    """Match weight (log2 odds) of a probability in (0, 1)."""
    if not (0.0 < probability < 1.0):
        raise MatchingError("a probability must be in (0, 1)")
    return math.log2(probability) - math.log2(1.0 - probability)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class _Start:
    """What both EM implementations start from: the observed u (matches included), the floor
    under the corrected u, initial m and priors, and the priors' caps (``max_matches`` per
    party pair: with one record per person and party, no more matches than the smaller party
    has records; without the cap, a model of one group could explain random pairs away as
    matches)."""

    u_observed: tuple[npt.NDArray[np.float64], ...]
    floors: tuple[float, ...]
    m: tuple[npt.NDArray[np.float64], ...]
    prior: npt.NDArray[np.float64]
    caps: npt.NDArray[np.float64]


def _start(
    groups: Sequence[GroupLevels],
    random_counts: Sequence[npt.NDArray[np.float64]],
    identical_rates: Sequence[float | None],
    comparable_pairs: Sequence[int],
    max_matches: Sequence[float],
) -> _Start:
    if len(random_counts) != len(groups) or len(identical_rates) != len(groups):
        raise MatchingError("random counts and identical rates are needed for every group")
    if len(comparable_pairs) != len(max_matches) or not comparable_pairs:
        raise MatchingError("one comparable-pair count and one match guess per party pair")
    if any(count < 1 for count in comparable_pairs):
        raise MatchingError("every party pair needs at least one comparable pair")
    observed, floors, m = [], [], []
    for group, counts, identical in zip(groups, random_counts, identical_rates, strict=True):
        if len(counts) != group.count:
            raise MatchingError("random counts need one entry per level")
        present = counts[1:].astype(np.float64)
        sampled = float(present.sum())
        floor = 0.5 / max(sampled, 1.0)
        u = present + 0.5
        if identical is not None:  # exact, from counts of equal encodings
            rest = u[:-1] / u[:-1].sum()
            u = np.concatenate([rest * (1.0 - identical), [identical]])
        u = np.maximum(u / u.sum(), floor)
        observed.append(u / u.sum())
        floors.append(floor)
        # Matches concentrate on the high levels: start m rising steeply with the level.
        start = np.arange(1, group.count, dtype=np.float64) ** _M_START_POWER
        m.append(start / start.sum())
    caps = np.array(
        [
            min(max(most, 1.0) / pairs, 0.5)
            for most, pairs in zip(max_matches, comparable_pairs, strict=True)
        ],
        dtype=np.float64,
    )
    return _Start(
        u_observed=tuple(observed), floors=tuple(floors), m=tuple(m), prior=caps / 2, caps=caps
    )


def _monotone(m: list[float], u: list[float]) -> list[float]:
    """``m`` with ``m / u`` made non-decreasing over the levels (a higher similarity is never
    less evidence of a match): weighted pool-adjacent-violators on the ratio, weights ``u``,
    which keeps ``sum(m)``. Without it a level in the middle of the random pairs can soak up
    sampling noise as "matches" when few other groups speak (one group alone)."""
    blocks: list[list[float]] = []  # [ratio, weight, levels pooled]
    for m_k, u_k in zip(m, u, strict=True):
        blocks.append([m_k / u_k, u_k, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            ratio, weight, size = blocks.pop()
            previous = blocks[-1]
            total = previous[1] + weight
            previous[0] = (previous[0] * previous[1] + ratio * weight) / total
            previous[1] = total
            previous[2] += size
    out: list[float] = []
    position = 0
    for ratio, _, size in blocks:
        for _ in range(int(size)):
            out.append(ratio * u[position])
            position += 1
    return out


def _corrected_u(
    observed: npt.NDArray[np.float64], m: npt.NDArray[np.float64], prior: float, floor: float
) -> npt.NDArray[np.float64]:
    """u without the true matches a random sample holds (module docstring)."""
    corrected = np.maximum((observed - prior * m) / (1.0 - prior), floor)
    result: npt.NDArray[np.float64] = corrected / corrected.sum()
    return result


_PATTERN_TABLE_LIMIT = 1 << 22
"""At most this many possible (party pair, levels) codes are counted in a table (32 MiB)."""


def _patterns(
    levels: npt.NDArray[np.uint8],
    jobs: npt.NDArray[np.int64],
    groups: Sequence[GroupLevels],
    job_count: int,
    *,
    table_limit: int = _PATTERN_TABLE_LIMIT,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each distinct (party pair, levels) row and how often it occurs: all EM needs. Rows are
    packed into one integer (mixed radix) when they fit, which sorts far faster than rows,
    and counted in a table when at most ``table_limit`` codes are possible."""
    radices = [max(job_count, 1), *(group.count for group in groups)]
    if len(levels) == 0:
        return np.empty((0, len(groups) + 1), np.int64), np.empty(0, np.int64)
    if math.prod(radices) >= 2**62:
        keyed = np.concatenate([jobs[:, None].astype(np.int64), levels.astype(np.int64)], axis=1)
        patterns, counts = np.unique(keyed, axis=0, return_counts=True)
        return patterns, counts
    counted = False
    if math.prod(radices) <= table_limit:
        # Few possible rows (4096 for one job and three groups of 16 levels): count each
        # code in a table, one pass and no code array, instead of sorting 8 bytes a pair
        # (0.5 s and 340 MiB at the 2.1e7 candidates of a 1M x 1M run). The codes in
        # ascending order and their counts: what np.unique gives below.
        table = np.zeros(math.prod(radices), np.int64)
        counted = _count_patterns(
            np.ascontiguousarray(levels), np.ascontiguousarray(jobs),
            np.array(radices, np.int64), table,
        )  # fmt: skip
        unique = np.flatnonzero(table)
        counts = table[unique]
    if math.prod(radices) > table_limit or not counted:
        unique, counts = _sorted_codes(levels, jobs, radices)
    patterns = np.empty((len(unique), len(radices)), np.int64)
    for column in range(len(radices) - 1, -1, -1):
        unique, patterns[:, column] = np.divmod(unique, radices[column])
    return patterns, counts


@numba.njit(nogil=True, cache=True)
def _count_patterns(  # pragma: no cover - compiled
    levels: npt.NDArray[np.uint8],
    jobs: npt.NDArray[np.integer[Any]],
    radices: npt.NDArray[np.int64],
    table: npt.NDArray[np.int64],
) -> bool:
    """Count each row's code in ``table``; False (the table part-filled) at a job or level
    outside its radix, which only the sorting path may take."""
    for k in range(levels.shape[0]):
        code = np.int64(jobs[k])
        if code < 0 or code >= radices[0]:
            return False
        for column in range(levels.shape[1]):
            level = np.int64(levels[k, column])
            if level >= radices[column + 1]:
                return False
            code = code * radices[column + 1] + level
        table[code] += 1
    return True


def _sorted_codes(
    levels: npt.NDArray[np.uint8], jobs: npt.NDArray[np.int64], radices: Sequence[int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each distinct row's mixed-radix code, ascending, and its count, by sorting the codes
    (the twin of the table count in :func:`_patterns`)."""
    # Column by column: a (pairs, groups + 1) int64 copy of the rows first cost 32 bytes a
    # pair (600 MiB at the 1.8e7 candidates of a 1M x 1M run) for a code of 8.
    code = jobs.astype(np.int64)
    for column, radix in enumerate(radices[1:]):
        code *= radix
        code += levels[:, column]
    unique, counts = np.unique(code, return_counts=True)
    return unique, counts


def fit(
    levels: npt.NDArray[np.uint8],
    jobs: npt.NDArray[np.int64],
    groups: Sequence[GroupLevels],
    *,
    random_counts: Sequence[npt.NDArray[np.float64]],
    identical_rates: Sequence[float | None],
    comparable_pairs: Sequence[int],
    max_matches: Sequence[float],
    settings: ModelSettings,
) -> FellegiSunterModel:
    """Train m, u and the priors by EM on the candidate pairs (``levels``: ``(pairs, groups)``;
    ``jobs[k]``: the party pair of pair k, indexing ``comparable_pairs``; ``max_matches``: the
    most matches each party pair can hold, which caps its prior)."""
    start = _start(groups, random_counts, identical_rates, comparable_pairs, max_matches)
    pairs_per_job = np.asarray(comparable_pairs, dtype=np.float64)
    if levels.ndim != 2 or levels.shape[1] != len(groups) or len(jobs) != len(levels):
        raise MatchingError("levels must be (pairs, groups) with one party pair per pair")
    patterns, counts = _patterns(levels, jobs, groups, len(comparable_pairs))
    pattern_jobs, pattern_levels = patterns[:, 0], patterns[:, 1:]
    weights = counts.astype(np.float64)
    m = [array.copy() for array in start.m]
    prior = start.prior.copy()
    u = [
        _corrected_u(observed, m_g, float(prior @ pairs_per_job / pairs_per_job.sum()), floor)
        for observed, m_g, floor in zip(start.u_observed, m, start.floors, strict=True)
    ]
    converged = False
    iteration = 0
    while iteration < settings.max_iterations:
        iteration += 1
        odds = np.log(prior / (1.0 - prior))[pattern_jobs]
        for g in range(len(groups)):
            ratio = np.concatenate([[0.0], np.log(m[g]) - np.log(u[g])])
            odds = odds + ratio[pattern_levels[:, g]]
        posterior = 1.0 / (1.0 + np.exp(-np.clip(odds, -700, 700)))
        matched = posterior * weights
        new_m = []
        for g, group in enumerate(groups):
            totals = np.bincount(pattern_levels[:, g], weights=matched, minlength=group.count)
            present = totals[1:] + _M_PSEUDO
            new_m.append(np.array(_monotone((present / present.sum()).tolist(), u[g].tolist())))
        matched_by_job = np.bincount(pattern_jobs, weights=matched, minlength=len(prior))
        new_prior = np.clip(matched_by_job / pairs_per_job, 1e-12, start.caps)
        pooled = float(new_prior @ pairs_per_job / pairs_per_job.sum())
        new_u = [
            _corrected_u(observed, m_g, pooled, floor)
            for observed, m_g, floor in zip(start.u_observed, new_m, start.floors, strict=True)
        ]
        change = max(
            max(float(np.abs(a - b).max()) for a, b in zip(new_m, m, strict=True)),
            max(float(np.abs(np.log(a) - np.log(b)).max()) for a, b in zip(new_u, u, strict=True)),
            float(np.abs(np.log(new_prior) - np.log(prior)).max()),
        )
        m, u, prior = new_m, new_u, new_prior
        if change < settings.tolerance:
            converged = True
            break
    return FellegiSunterModel(
        groups=tuple(groups),
        m=tuple(tuple(float(x) for x in m_g) for m_g in m),
        u=tuple(tuple(float(x) for x in u_g) for u_g in u),
        prior=tuple(float(p) for p in prior),
        iterations=iteration,
        converged=converged,
    )


def reference_fit(
    levels: npt.NDArray[np.uint8],
    jobs: npt.NDArray[np.int64],
    groups: Sequence[GroupLevels],
    *,
    random_counts: Sequence[npt.NDArray[np.float64]],
    identical_rates: Sequence[float | None],
    comparable_pairs: Sequence[int],
    max_matches: Sequence[float],
    settings: ModelSettings,
) -> FellegiSunterModel:
    """The slow obvious twin of :func:`fit`: the same EM, one pair at a time in Python."""
    start = _start(groups, random_counts, identical_rates, comparable_pairs, max_matches)
    rows = [[int(x) for x in row] for row in levels.tolist()]
    pair_jobs = [int(job) for job in jobs.tolist()]
    total_pairs = sum(comparable_pairs)
    m = [[float(x) for x in array] for array in start.m]
    prior = [float(p) for p in start.prior]

    def corrected(g: int, m_g: list[float], lam: float) -> list[float]:
        raw = [
            max((float(o) - lam * mk) / (1.0 - lam), start.floors[g])
            for o, mk in zip(start.u_observed[g].tolist(), m_g, strict=True)
        ]
        return [value / sum(raw) for value in raw]

    pooled = sum(p * n for p, n in zip(prior, comparable_pairs, strict=True)) / total_pairs
    u = [corrected(g, m[g], pooled) for g in range(len(groups))]
    converged = False
    iteration = 0
    while iteration < settings.max_iterations:
        iteration += 1
        matched_by_level = [[0.0] * (group.count - 1) for group in groups]
        matched_by_job = [0.0] * len(prior)
        for row, job in zip(rows, pair_jobs, strict=True):
            odds = math.log(prior[job] / (1.0 - prior[job]))
            for g, level in enumerate(row):
                if level > 0:
                    odds += math.log(m[g][level - 1]) - math.log(u[g][level - 1])
            odds = min(max(odds, -700.0), 700.0)
            posterior = 1.0 / (1.0 + math.exp(-odds))
            matched_by_job[job] += posterior
            for g, level in enumerate(row):
                if level > 0:
                    matched_by_level[g][level - 1] += posterior
        new_m = []
        for g in range(len(groups)):
            present = [value + _M_PSEUDO for value in matched_by_level[g]]
            new_m.append(_monotone([value / sum(present) for value in present], u[g]))
        new_prior = [
            min(max(matched / pairs, 1e-12), float(cap))
            for matched, pairs, cap in zip(
                matched_by_job, comparable_pairs, start.caps.tolist(), strict=True
            )
        ]
        pooled = sum(p * n for p, n in zip(new_prior, comparable_pairs, strict=True)) / total_pairs
        new_u = [corrected(g, new_m[g], pooled) for g in range(len(groups))]
        change = 0.0
        for g in range(len(groups)):
            for a, b in zip(new_m[g], m[g], strict=True):
                change = max(change, abs(a - b))
            for a, b in zip(new_u[g], u[g], strict=True):
                change = max(change, abs(math.log(a) - math.log(b)))
        for a, b in zip(new_prior, prior, strict=True):
            change = max(change, abs(math.log(a) - math.log(b)))
        m, u, prior = new_m, new_u, new_prior
        if change < settings.tolerance:
            converged = True
            break
    return FellegiSunterModel(
        groups=tuple(groups),
        m=tuple(tuple(m_g) for m_g in m),
        u=tuple(tuple(u_g) for u_g in u),
        prior=tuple(prior),
        iterations=iteration,
        converged=converged,
    )


# ---------------------------------------------------------------------------------------------
# One record per party and person
# ---------------------------------------------------------------------------------------------
def exclusive_weights(
    left: npt.NDArray[np.int64],
    right: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    *,
    left_size: int,
    right_size: int,
    left_matched: float | None,
    right_matched: float | None,
    out: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """Match weights of one party pair's candidate pairs given that a record has at most one
    match in the other party (a person has at most one record there). ``out``: where to
    write them (it may be ``weights`` itself; None: a new array).

    The pairwise model asks "is this pair a match?" as if the two records' other pairs said
    nothing. With one match at most, a pair whose two records have no other plausible partner
    is likelier than that, and one whose record has a stronger partner less likely. Locally
    (each record's own candidates, conflicts further out ignored), with ``x`` a pair's
    pairwise odds and ``left_matched`` / ``right_matched`` the share of each party's records
    that have a match:

        odds(a, b) = x_ab / ((1 - left_matched + sum_j x_aj - x_ab)
                             * (1 - right_matched + sum_i x_ib - x_ab))

    the odds of "a and b are each other's match" against "each is unmatched or matched to
    another of its candidates". Returns log2 of those odds. ``left_matched=None``: a left
    record may match several records of the right party (the right party is deduplicated),
    so its other candidates are no rivals and its factor is left out (likewise ``right``).
    """
    odds = np.clip(weights, -200.0, 200.0, out=out)
    np.exp2(odds, out=odds)
    # ``log2(odds) - log2((1 - left_matched) + left others) - log2(...right...)`` chunk by
    # chunk, into the odds themselves once the chunk's rivals are read (each side's
    # per-record sums are built from all odds first): the same operations with no
    # temporary of 8 bytes a pair.
    sides = [
        (np.ascontiguousarray(records), _rival_state(records, odds, size), matched)
        for records, size, matched in (
            (np.asarray(left), left_size, left_matched),
            (np.asarray(right), right_size, right_matched),
        )
        if matched is not None
    ]
    buffers = [np.empty(min(len(odds), _RIVAL_CHUNK), np.float64) for _ in sides]
    for start in range(0, len(odds), _RIVAL_CHUNK):
        stop = min(start + _RIVAL_CHUNK, len(odds))
        terms = []
        for (records, state, matched), buffer in zip(sides, buffers, strict=True):
            rivals = buffer[: stop - start]
            _rivals(records, odds, state, start, stop, rivals)
            terms.append((rivals, matched))
        result = odds[start:stop]
        np.log2(result, out=result)
        for rivals, matched in terms:
            np.add(1.0 - matched, rivals, out=rivals)
            np.log2(rivals, out=rivals)
            result -= rivals
    return odds


def _others(
    records: npt.NDArray[np.int64], odds: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.float64]:
    """Per pair, the sum of the odds of its record's other pairs. ``total - own`` would lose
    the small others to rounding when the own odds are the record's (huge) largest, so those
    pairs get the sum of the rest added up directly. Numba kernels over the pairs (the numpy
    twin :func:`_others_numpy`, bit for bit the same: its ``np.maximum.at`` and five
    temporaries took 1.2 s a side at the 2.1e7 candidates of a 1M x 1M run)."""
    records = np.ascontiguousarray(records)
    odds = np.ascontiguousarray(odds, np.float64)
    state = _rival_state(records, odds, size)
    result = np.empty(len(odds), np.float64)
    _rivals(records, odds, state, 0, len(odds), result)
    return result


def _rival_state(
    records: npt.NDArray[np.integer[Any]], odds: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.float64]:
    """Per record: the sum of its pairs' odds, their largest, how many pairs tie at the
    largest and the sum of the others (one row of four, one cache line)."""
    state = np.zeros((size, 4), np.float64)
    state[:, 1] = -np.inf
    _rival_state_kernel(records, odds, state)
    return state


@numba.njit(nogil=True, cache=True)
def _rival_state_kernel(  # pragma: no cover - compiled
    records: npt.NDArray[np.integer[Any]],
    odds: npt.NDArray[np.float64],
    state: npt.NDArray[np.float64],
) -> None:
    """:func:`_others_numpy`'s per-record sums pair by pair, in its order (``np.bincount``
    adds in pair order), its maximum as ``np.maximum`` takes it (a NaN wins). The row of
    the pair ``_RECORDS_AHEAD`` on is prefetched: on the side the candidates are not sorted
    by, every pair's record is a cache miss (1.2 s -> 0.55 s for 2.1e7 pairs)."""
    base = np.uint64(state.ctypes.data)
    line = np.uint64(state.strides[0])
    pairs = records.shape[0]
    for k in range(pairs):
        if k + _RECORDS_AHEAD < pairs:
            _prefetch(base + np.uint64(records[k + _RECORDS_AHEAD]) * line)
        record = records[k]
        value = odds[k]
        state[record, 0] += value
        if value > state[record, 1] or value != value:
            state[record, 1] = value
    for k in range(pairs):
        if k + _RECORDS_AHEAD < pairs:
            _prefetch(base + np.uint64(records[k + _RECORDS_AHEAD]) * line)
        record = records[k]
        if odds[k] == state[record, 1]:
            state[record, 2] += 1.0
            state[record, 3] += 0.0
        else:
            state[record, 3] += odds[k]


@numba.njit(nogil=True, cache=True)
def _rivals(  # pragma: no cover - compiled
    records: npt.NDArray[np.integer[Any]],
    odds: npt.NDArray[np.float64],
    state: npt.NDArray[np.float64],
    start: int,
    stop: int,
    out: npt.NDArray[np.float64],
) -> None:
    """:func:`_others` of pairs [start, stop) from the records' state, into ``out[0:]``."""
    base = np.uint64(state.ctypes.data)
    line = np.uint64(state.strides[0])
    for k in range(start, stop):
        if k + _RECORDS_AHEAD < stop:
            _prefetch(base + np.uint64(records[k + _RECORDS_AHEAD]) * line)
        record = records[k]
        if odds[k] == state[record, 1] and state[record, 2] == 1.0:
            value = state[record, 3]
        else:
            value = state[record, 0] - odds[k]
        out[k - start] = 0.0 if value < 0.0 else value


_RECORDS_AHEAD = 16
_RIVAL_CHUNK = 1 << 20


def _others_numpy(
    records: npt.NDArray[np.int64], odds: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.float64]:
    """The numpy twin of :func:`_others`, whole arrays at a time."""
    total = np.bincount(records, weights=odds, minlength=size)
    largest = np.full(size, -np.inf)
    np.maximum.at(largest, records, odds)
    is_largest = odds == largest[records]
    tied = np.bincount(records, weights=is_largest.astype(np.float64), minlength=size)
    rest_of_largest = np.bincount(records, weights=np.where(is_largest, 0.0, odds), minlength=size)
    alone_largest = is_largest & (tied[records] == 1)
    others = np.where(alone_largest, rest_of_largest[records], total[records] - odds)
    result: npt.NDArray[np.float64] = np.maximum(others, 0.0)
    return result


def reference_exclusive_weights(
    left: npt.NDArray[np.int64],
    right: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    *,
    left_size: int,
    right_size: int,
    left_matched: float | None,
    right_matched: float | None,
) -> npt.NDArray[np.float64]:
    """The slow obvious twin of :func:`exclusive_weights`: one pair at a time."""
    pairs = list(zip(left.tolist(), right.tolist(), weights.tolist(), strict=True))
    out = []
    for k, (a, b, weight) in enumerate(pairs):
        odds = 2.0 ** min(max(weight, -200.0), 200.0)
        others_a = sum(
            2.0 ** min(max(w, -200.0), 200.0)
            for n, (i, _, w) in enumerate(pairs)
            if i == a and n != k
        )
        others_b = sum(
            2.0 ** min(max(w, -200.0), 200.0)
            for n, (_, j, w) in enumerate(pairs)
            if j == b and n != k
        )
        value = math.log2(odds)
        if left_matched is not None:
            value -= math.log2((1.0 - left_matched) + others_a)
        if right_matched is not None:
            value -= math.log2((1.0 - right_matched) + others_b)
        out.append(value)
    return np.array(out, dtype=np.float64)

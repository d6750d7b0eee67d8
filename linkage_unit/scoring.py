"""Scoring: the score stage of matching for encodings of several field groups
(block -> compare -> **score** -> solve).

:class:`Scorer` holds one run's parties and their layout. Before the compare it samples random
pairs (per party pair, in proportion to its comparable pairs) and picks the record-level Dice
cut for candidate pairs (:meth:`Scorer.candidate_cut`: where a random pair passes about
``candidates_per_record`` times per record). After the compare it computes every candidate
pair's per-group similarities, derives agreement levels, trains the Fellegi-Sunter model
(``fellegi_sunter.py``) and returns :class:`ScoredPairs`: the candidate pairs scored with their
match weights, and the cut the operator's match probability gives. After the solve,
:meth:`Scorer.estimate_quality` turns the model's probabilities into expected precision,
recall and F1 of the links made, without any ground truth.

Term frequencies (optional, ``ModelSettings.term_frequencies``): the linkage unit already sees
which records share an identical group encoding; how many do is the value's frequency, so
agreement on a common encoding is weighed less (as Splink's term-frequency adjustment does
with plaintext), without any frequency leaving a party. Encodings are counted by a 64-bit
hash of their words; a collision could only shift a weight a little, never a link decision
by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numba
import numpy as np
import numpy.typing as npt

from linkage_unit.estimated_quality import EstimatedQuality
from linkage_unit.fellegi_sunter import (
    FellegiSunterModel,
    GroupLevels,
    ModelSettings,
    comparison_levels,
    exclusive_weights,
    fit,
    levels_of_chunks,
    probability_of_weight,
    random_level_counts,
    weight_of_probability,
)
from linkage_unit.group_blocking import JoinRule
from linkage_unit.group_similarity import (
    GroupSimilarities,
    agreement_bits,
    counts_dtype,
    group_popcounts,
    group_similarities,
)
from linkage_unit.similarity import CandidatePairs
from linkage_unit.solving import PartyPairs
from protocol.clk_layout import ClkLayout
from protocol.errors import MatchingError

__all__ = [
    "CandidateCut",
    "EstimatedQuality",
    "MAX_CANDIDATE_CUT",
    "MIN_CANDIDATE_CUT",
    "ScoredPairs",
    "Scorer",
    "UNTRUSTED_WEIGHT",
    "estimate_quality",
    "unseen_matches",
    "unseen_matches_reference",
]

WeightsOf = Callable[[int, npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float64]]
"""``weights_of(job, left, right)``: match weights of pairs of one party pair."""

UNSEEN_BIN_WIDTH = 0.05
UNSEEN_BINS = 3
UNSEEN_MAX_RATIO = 0.9
UNSEEN_MIN_PROBABILITY = 0.01
"""The tail of matches below the candidate cut (:func:`unseen_matches`): fitted to this many
bins of this width above the cut, counting pairs of at least this match probability; each
bin below holds at most this share of the one above."""

UNTRUSTED_WEIGHT = -64.0
"""The match weight of every pair of an untrusted model (:meth:`ScoredPairs.distrusted`):
probability 2^-64, no link."""

MIN_CANDIDATE_CUT = 0.05
MAX_CANDIDATE_CUT = 0.95
"""The record-level Dice cut for candidate pairs is searched in this range."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateCut:
    """The record-level Dice cut for candidate pairs. ``at_boundary``: the data asked for a
    cut outside [MIN_CANDIDATE_CUT, MAX_CANDIDATE_CUT] and it was clamped. ``join_rule``:
    how group blocking's join judges the pairs it finds instead (at the same random-pair
    pass rate; None: by ``threshold`` too)."""

    threshold: float
    at_boundary: bool
    random_pairs: int
    join_rule: JoinRule | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoredPairs:
    """Candidate pairs per party pair whose ``scores`` are match weights (log2 odds of a match,
    float32), and the cut: a pair is a link candidate for the solver (or clustering) when its
    weight is at least ``cut_weight``, i.e. its probability at least ``match_probability``.
    ``probability_of_weight`` turns weights into probabilities.

    ``deduplicated``: per party (as the party pairs index them), whether it may hold several
    records of one person (empty: none does). ``exclusive``: weights between two parties
    already condition on their records' other candidates on every side where that holds (a
    record has at most one match in a duplicate-free party)."""

    party_pairs: tuple[PartyPairs, ...]
    match_probability: float
    model: FellegiSunterModel
    exclusive: bool = False
    deduplicated: tuple[bool, ...] = ()

    @property
    def cut_weight(self) -> float:
        return weight_of_probability(self.match_probability)

    def is_deduplicated(self, party: int) -> bool:
        return bool(self.deduplicated) and self.deduplicated[party]

    def accepted(self) -> tuple[PartyPairs, ...]:
        """The pairs at or above the cut, in the solver's terms."""
        cut = np.float32(self.cut_weight)
        kept = []
        for item in self.party_pairs:
            keep = item.pairs.scores >= cut
            pairs = CandidatePairs(
                left=item.pairs.left[keep],
                right=item.pairs.right[keep],
                scores=item.pairs.scores[keep],
                comparisons=item.pairs.comparisons,
            )
            kept.append(
                PartyPairs(left_party=item.left_party, right_party=item.right_party, pairs=pairs)
            )
        return tuple(kept)

    def distrusted(self) -> ScoredPairs:
        """These pairs as an untrusted model leaves them (``FellegiSunterModel.trusted``): none
        is a link, each weighing ``UNTRUSTED_WEIGHT`` (probability about 0), so a clustering
        reads every one as evidence against one person."""
        return replace(
            self,
            party_pairs=tuple(
                PartyPairs(
                    left_party=item.left_party,
                    right_party=item.right_party,
                    pairs=CandidatePairs(
                        left=item.pairs.left,
                        right=item.pairs.right,
                        scores=np.full(len(item.pairs.scores), UNTRUSTED_WEIGHT, np.float32),
                        comparisons=item.pairs.comparisons,
                    ),
                )
                for item in self.party_pairs
            ),
        )

    def probabilities(self) -> tuple[PartyPairs, ...]:
        """Every candidate pair with its match probability as its score (float32), for a
        clustering whose threshold is ``match_probability``."""
        out = []
        for item in self.party_pairs:
            probability = probability_of_weight(item.pairs.scores.astype(np.float64))
            pairs = CandidatePairs(
                left=item.pairs.left,
                right=item.pairs.right,
                scores=probability.astype(np.float32),
                comparisons=item.pairs.comparisons,
            )
            out.append(
                PartyPairs(left_party=item.left_party, right_party=item.right_party, pairs=pairs)
            )
        return tuple(out)


def _group_hashes(clks: npt.NDArray[np.uint64], layout: ClkLayout) -> npt.NDArray[np.uint64]:
    """``(records, groups)`` 64-bit hashes of each group's words (0 words hash to 0), in one
    numba pass over the records (:func:`_group_hashes_numpy` is the twin, word for word the
    same arithmetic: its whole-column temporaries took 0.5 s a 1M-record party)."""
    out = np.empty((len(clks), len(layout.groups)), np.uint64)
    if len(clks):
        _hash_kernel(np.ascontiguousarray(clks), np.asarray(layout.word_offsets(), np.int64), out)
    return out


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_HASH_SHIFT = np.uint64(29)


@numba.njit(nogil=True, cache=True)
def _hash_kernel(  # pragma: no cover - compiled
    clks: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64], out: npt.NDArray[np.uint64]
) -> None:
    for record in range(clks.shape[0]):
        for group in range(offsets.shape[0] - 1):
            value = np.uint64(0)
            for word in range(offsets[group], offsets[group + 1]):
                value = (value ^ clks[record, word]) * _HASH_MULTIPLIER
                value ^= value >> _HASH_SHIFT
            out[record, group] = value


def _group_hashes_numpy(clks: npt.NDArray[np.uint64], layout: ClkLayout) -> npt.NDArray[np.uint64]:
    """The numpy twin of :func:`_group_hashes`, a whole column of words at a time."""
    out = np.zeros((len(clks), len(layout.groups)), np.uint64)
    multiplier = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for g in range(len(layout.groups)):
            start, stop = layout.word_range(g)
            value = np.zeros(len(clks), np.uint64)
            for w in range(start, stop):
                value = (value ^ clks[:, w]) * multiplier
                value ^= value >> np.uint64(29)
            out[:, g] = value
    return out


def _sample_pairs(
    generator: np.random.Generator, left_size: int, right_size: int, within: bool, count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    if within:
        first = generator.integers(0, left_size, count)
        second = (first + 1 + generator.integers(0, left_size - 1, count)) % left_size
        return np.minimum(first, second), np.maximum(first, second)
    return generator.integers(0, left_size, count), generator.integers(0, right_size, count)


class Scorer:
    """One run's score stage (module docstring). ``jobs``: the party pairs compared, as
    (left party, right party) indices into ``arrays``; equal indices compare a party with
    itself."""

    def __init__(
        self,
        arrays: Sequence[npt.NDArray[np.uint64]],
        layout: ClkLayout,
        jobs: Sequence[tuple[int, int]],
        settings: ModelSettings,
        *,
        seed: int,
        workers: int | None = None,
    ) -> None:
        self.arrays = list(arrays)
        self.layout = layout
        self.jobs = list(jobs)
        self.settings = settings
        self.workers = workers
        self.popcounts = [group_popcounts(array, layout) for array in self.arrays]
        hashes = [_group_hashes(array, layout) for array in self.arrays]
        sizes = [len(array) for array in self.arrays]
        self.comparable = [
            sizes[i] * (sizes[i] - 1) // 2 if i == j else sizes[i] * sizes[j] for i, j in jobs
        ]
        if not self.jobs or sum(self.comparable) == 0:
            raise MatchingError("the model needs at least one pair of records to compare")
        self.identical_rates = _identical_rates(self.popcounts, hashes, self.jobs)
        """Per group: the share of comparable non-missing pairs with identical encodings
        (:func:`_identical_rates`)."""
        # Hashes are kept only for term-frequency adjustments: 48 MiB at 1M x 1M, otherwise
        # held through the compare for nothing.
        self.hashes = hashes if settings.term_frequencies else None
        generator = np.random.default_rng(seed)
        total = sum(self.comparable)
        per_record = sum(sizes[i] + (sizes[j] if i != j else 0) for i, j in self.jobs)
        self.tail = min(0.5, settings.candidates_per_record * per_record / total)
        wanted = max(settings.random_pairs, int(4 * settings.min_tail_samples / self.tail))
        wanted = min(wanted, settings.max_random_pairs)
        samples: list[tuple[int, int, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        for (i, j), comparable in zip(self.jobs, self.comparable, strict=True):
            count = int(np.ceil(wanted * comparable / total)) if comparable else 0
            if count == 0:
                continue
            samples.append((i, j, *_sample_pairs(generator, sizes[i], sizes[j], i == j, count)))
        sampled = sum(len(left) for _, _, left, _ in samples)
        # Level cuts come from one half of the random pairs and u from the other: cut points
        # taken from the sample they are counted on sit where that sample happens to thin out
        # (on an atom of the discrete Dice values, the bias reached a tenth of a level's mass).
        half = np.zeros(sampled, bool)
        half[generator.permutation(sampled)[: sampled // 2]] = True
        # The random pairs once, one half's rows then the other's, and the halves as views of
        # them: the same two sets as copies by mask (order matters to neither quantiles nor
        # counts), without a second copy of every random pair (360 MiB of 10M pairs at 1M x
        # 1M). The pairs are put in that order before they are compared, so no row of counts
        # is ever copied (that gather took 1.5 s at 1M x 1M).
        middle = int(half.sum())
        self.random = _similarities_in_order(
            self.arrays, layout, samples,
            np.concatenate([np.flatnonzero(half), np.flatnonzero(~half)]), workers,
        )  # fmt: skip
        self.random_for_levels = _select(self.random, slice(0, middle))
        self.random_for_u = _select(self.random, slice(middle, None))
        self.unseen_matches = 0.0
        """Expected matches below the candidate cut, from the last :meth:`score`."""

    # -- before the compare -------------------------------------------------------------------

    def candidate_cut(self) -> CandidateCut:
        """Record-level Dice at which random pairs pass about ``candidates_per_record`` times
        per record (the module docstring), clamped to the search range."""
        random = self.random
        totals = (random.left_counts + random.right_counts).sum(axis=1)
        shared = random.shared.sum(axis=1)
        dice = np.divide(2.0 * shared, totals, out=np.zeros(len(totals)), where=totals > 0)
        value = float(np.quantile(dice, 1.0 - self.tail)) if len(dice) else MAX_CANDIDATE_CUT
        clamped = float(np.clip(value, MIN_CANDIDATE_CUT, MAX_CANDIDATE_CUT))
        return CandidateCut(
            threshold=round(clamped, 4),
            at_boundary=clamped != value,
            random_pairs=len(dice),
            join_rule=self._join_rule(),
        )

    def _join_rule(self) -> JoinRule | None:
        """The join's rule (``group_blocking.JoinRule``) at the same random-pair pass rate
        as the record-level cut: each group weighed by ``-ln`` of its identical rate (a rate
        of 0 read as one identical pair in all comparable ones), its cut the same quantile
        of the random pairs' rule scores. None with fewer than two groups, or no random
        pair."""
        if len(self.layout.groups) < 2 or len(self.random) == 0:
            return None
        floor = 1.0 / max(sum(self.comparable), 1)
        raw = [
            -np.log(max(rate if rate is not None else 0.0, floor)) for rate in self.identical_rates
        ]
        mean = float(np.mean(raw))
        weights = tuple(float(weight / mean) for weight in raw)
        random = self.random
        scores = JoinRule(weights=weights, cut=1.0).scores(
            random.shared, random.left_counts, random.right_counts
        )
        value = float(np.quantile(scores, 1.0 - self.tail))
        cut = float(np.clip(value, MIN_CANDIDATE_CUT, MAX_CANDIDATE_CUT))
        return JoinRule(weights=weights, cut=round(cut, 4))

    # -- after the compare --------------------------------------------------------------------

    def similarities(self, job: int, pairs: CandidatePairs) -> GroupSimilarities:
        return self._counts_of(job, pairs, slice(None))

    def _similarity_chunks(
        self, candidates: Sequence[CandidatePairs]
    ) -> Iterator[GroupSimilarities]:
        """The candidates' group counts, job after job, ``_SIMILARITY_CHUNK`` pairs at a time."""
        for number, pairs in enumerate(candidates):
            for start in range(0, len(pairs), _SIMILARITY_CHUNK):
                yield self._counts_of(number, pairs, slice(start, start + _SIMILARITY_CHUNK))

    def _counts_of(
        self, job: int, pairs: CandidatePairs, part: slice | npt.NDArray[np.int64]
    ) -> GroupSimilarities:
        """The group counts of ``pairs[part]``, pairs of job ``job``."""
        i, j = self.jobs[job]
        return group_similarities(
            self.arrays[i], self.arrays[j], pairs.left[part], pairs.right[part], self.layout,
            workers=self.workers,
        )  # fmt: skip

    def _recount(
        self,
        candidates: Sequence[CandidatePairs],
        rows: npt.NDArray[np.int64],
        groups: Sequence[GroupLevels],
        levels: npt.NDArray[np.uint8],
    ) -> None:
        """The levels of candidates ``rows`` (of all jobs' pairs in turn) under ``groups``,
        into ``levels``: their counts taken again, a chunk at a time."""
        offset = 0
        for number, pairs in enumerate(candidates):
            low, high = np.searchsorted(rows, [offset, offset + len(pairs)])
            for start in range(int(low), int(high), _SIMILARITY_CHUNK):
                mine = rows[start : min(start + _SIMILARITY_CHUNK, int(high))]
                chunk = self._counts_of(number, pairs, mine - offset)
                levels[mine] = comparison_levels(chunk, groups)
            offset += len(pairs)

    def score(
        self,
        candidates: Sequence[CandidatePairs],
        *,
        deduplicated: Sequence[bool] = (),
        cut: float | None = None,
    ) -> ScoredPairs:
        """Train the model on the candidate pairs (one set per job, in job order) and score
        them. ``deduplicated``: per party, whether it may hold several records of one person
        (empty: none does). A record has at most one match in a duplicate-free party, so a
        pair between two parties is conditioned on its record's other candidates there
        (:func:`linkage_unit.fellegi_sunter.exclusive_weights`): on both sides between two
        duplicate-free parties, on the deduplicated party's record's side only between a
        deduplicated and a duplicate-free one, on neither between two deduplicated parties.
        Pairs within a party never are. ``cut``: the record-level similarity the candidates
        were kept at, below which :func:`unseen_matches` estimates the matches no candidate
        holds (None: none are estimated)."""
        if len(candidates) != len(self.jobs):
            raise MatchingError("one set of candidate pairs per party pair is needed")
        flags = tuple(bool(flag) for flag in deduplicated) or (False,) * len(self.arrays)
        if len(flags) != len(self.arrays):
            raise MatchingError("one deduplicated flag per party is needed")
        # The candidates' counts a chunk at a time, each chunk's levels taken as it goes:
        # held whole the counts were 18 bytes a pair, 410 MiB at the 23M candidates of a 1M
        # x 1M run and its memory peak. Only the pairs whose levels wait on the upper cuts
        # are counted again. The levels are all the rest needs (three bytes a pair).
        total = sum(len(pairs) for pairs in candidates)
        groups, levels, recount = levels_of_chunks(
            self.layout.names,
            self.random_for_levels,
            self._similarity_chunks(candidates),
            total,
            self.settings,
            agreement_bits=agreement_bits(self.layout),
        )
        random_levels = comparison_levels(self.random_for_u, groups)
        self._recount(candidates, np.flatnonzero(recount), groups, levels)
        del recount
        # Made only now: 8 bytes a pair, not held beside the counts at the stage's peak.
        if len(candidates) == 1:
            # All job 0: np.zeros' fresh zero pages are only read, so they cost neither the
            # 0.6 s of filling 8 bytes a pair nor the memory.
            jobs = np.zeros(len(candidates[0]), np.int64)
        else:
            jobs = np.concatenate(
                [np.full(len(pairs), number, np.int64) for number, pairs in enumerate(candidates)]
                or [np.empty(0, np.int64)]
            )
        sizes = [len(array) for array in self.arrays]
        model = fit(
            levels,
            jobs,
            groups,
            random_counts=random_level_counts(random_levels, groups),
            identical_rates=self.identical_rates,
            comparable_pairs=[max(count, 1) for count in self.comparable],
            # One record per person and party: at most the smaller party's records match;
            # within a party, at most every record has a duplicate (pairs grow past that only
            # for people with three or more records, which the cap then under-counts).
            max_matches=[
                float(sizes[i]) if i == j else float(min(sizes[i], sizes[j])) for i, j in self.jobs
            ],
            settings=self.settings,
        )
        self.model = model
        weights = model.match_weights(
            levels, jobs, adjustments=self._adjustments(candidates, levels, model)
        )
        del jobs, levels
        party_pairs = []
        offset = 0
        unseen = 0.0
        for number, ((i, j), pairs) in enumerate(zip(self.jobs, candidates, strict=True)):
            part = weights[offset : offset + len(pairs)]
            offset += len(pairs)
            if i != j and len(pairs) and not (flags[i] and flags[j]):
                matches = model.prior[number] * self.comparable[number]
                # A left record's candidates are rivals only if the right party is
                # duplicate-free (it holds at most one record of the left record's person).
                part = exclusive_weights(
                    pairs.left,
                    pairs.right,
                    part,
                    left_size=sizes[i],
                    right_size=sizes[j],
                    left_matched=None
                    if flags[j]
                    else float(np.clip(matches / max(sizes[i], 1), 1e-3, 0.999)),
                    right_matched=None
                    if flags[i]
                    else float(np.clip(matches / max(sizes[j], 1), 1e-3, 0.999)),
                    out=part,  # this job's slice of weights, read by nothing else
                )
            scores = part.astype(np.float32)
            if cut is not None:
                # The weights are spent once copied: probabilities in their place (a new
                # array was 150 MiB a 19M-pair job at the stage's peak).
                unseen += unseen_matches(pairs.scores, probability_of_weight(part, out=part), cut)
            party_pairs.append(
                PartyPairs(
                    left_party=i,
                    right_party=j,
                    pairs=CandidatePairs(
                        left=pairs.left,
                        right=pairs.right,
                        scores=scores,
                        comparisons=pairs.comparisons,
                    ),
                )
            )
        self.unseen_matches = unseen
        return ScoredPairs(
            party_pairs=tuple(party_pairs),
            match_probability=self.settings.match_probability,
            model=model,
            exclusive=True,
            deduplicated=flags,
        )

    def weights_of(
        self, job: int, left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Match weights of arbitrary pairs of one job under the trained model (for pairs a
        clustering joins without their being candidates)."""
        pairs = CandidatePairs(
            left=left, right=right, scores=np.zeros(len(left), np.float32), comparisons=0
        )
        levels = comparison_levels(self.similarities(job, pairs), self.model.groups)
        jobs = np.full(len(left), job, np.int64)
        per_job = [CandidatePairs.empty()] * len(self.jobs)
        per_job[job] = pairs
        adjustments = self._adjustments(per_job, levels, self.model)
        return self.model.match_weights(levels, jobs, adjustments=adjustments)

    def _adjustments(
        self,
        candidates: Sequence[CandidatePairs],
        levels: npt.NDArray[np.uint8],
        model: FellegiSunterModel,
    ) -> npt.NDArray[np.float64] | None:
        """Term-frequency adjustments (log2) for pairs on the identical level: the average
        chance that two records share an encoding over this encoding's frequency."""
        hashes = self.hashes
        if hashes is None:  # no term-frequency adjustments (the hashes were not kept)
            return None
        out = np.zeros(levels.shape, np.float64)
        for g, group in enumerate(model.groups):
            present = [counts[:, g] > 0 for counts in self.popcounts]
            pooled = np.concatenate([h[mask, g] for h, mask in zip(hashes, present, strict=True)])
            if len(pooled) == 0:
                continue
            unique, counts = np.unique(pooled, return_counts=True)
            frequency = counts / len(pooled)
            average = float((frequency**2).sum())
            offset = 0
            for (i, _), pairs in zip(self.jobs, candidates, strict=True):
                rows = slice(offset, offset + len(pairs))
                offset += len(pairs)
                same = levels[rows, g] == group.identical
                if not same.any():
                    continue
                value = hashes[i][pairs.left[same], g]
                found = frequency[np.searchsorted(unique, value)]
                part = out[rows]
                part[same, g] = np.log2(average) - np.log2(found)
        return out

    # -- after the solve ----------------------------------------------------------------------

    def estimate_quality(
        self,
        scored: ScoredPairs,
        clusters: Sequence[npt.NDArray[np.int64]],
    ) -> EstimatedQuality:
        """Expected true links, false links and missed matches of a clustering
        (:func:`estimate_quality`), scoring pairs it joins that were not candidates."""
        return estimate_quality(
            scored, clusters, self.jobs, self.weights_of, unseen=self.unseen_matches
        )


def _identical_rates(
    popcounts: Sequence[npt.NDArray[np.int32]],
    hashes: Sequence[npt.NDArray[np.uint64]],
    jobs: Sequence[tuple[int, int]],
) -> list[float | None]:
    """:attr:`Scorer.identical_rates`: each party's distinct group hashes counted on their
    own (a sort of each party's, not an argsort of all with its inverse), matched between
    two parties by intersection. Every term is a whole number far below 2^53, so the sums
    are exact in any order: the same floats as :func:`_identical_rates_numpy`, the twin."""
    rates: list[float | None] = []
    for g in range(popcounts[0].shape[1] if popcounts else 0):
        values = [h[counts[:, g] > 0, g] for h, counts in zip(hashes, popcounts, strict=True)]
        distinct = [np.unique(part, return_counts=True) for part in values]
        equal = 0.0
        comparable = 0.0
        for i, j in jobs:
            if i == j:
                counts = distinct[i][1]
                equal += float((counts * (counts - 1) // 2).sum())
                comparable += len(values[i]) * (len(values[i]) - 1) / 2
            else:
                _, left, right = np.intersect1d(
                    distinct[i][0], distinct[j][0], assume_unique=True, return_indices=True
                )
                equal += float(
                    (distinct[i][1][left].astype(np.float64) * distinct[j][1][right]).sum()
                )
                comparable += float(len(values[i])) * len(values[j])
        rates.append(equal / comparable if comparable > 0 else None)
    return rates


def _identical_rates_numpy(
    popcounts: Sequence[npt.NDArray[np.int32]],
    hashes: Sequence[npt.NDArray[np.uint64]],
    jobs: Sequence[tuple[int, int]],
) -> list[float | None]:
    """The twin of :func:`_identical_rates`: every party's hashes in one np.unique with its
    inverse, counted per party over all distinct values."""
    rates: list[float | None] = []
    for g in range(popcounts[0].shape[1] if popcounts else 0):
        present = [counts[:, g] > 0 for counts in popcounts]
        values = [h[mask, g] for h, mask in zip(hashes, present, strict=True)]
        unique, inverse = np.unique(
            np.concatenate(values or [np.empty(0, np.uint64)]), return_inverse=True
        )
        inverse = inverse.ravel()
        counts, start = [], 0
        for part in values:
            counts.append(np.bincount(inverse[start : start + len(part)], minlength=len(unique)))
            start += len(part)
        equal = 0.0
        comparable = 0.0
        for i, j in jobs:
            if i == j:
                equal += float((counts[i] * (counts[i] - 1) // 2).sum())
                comparable += len(values[i]) * (len(values[i]) - 1) / 2
            else:
                equal += float((counts[i].astype(np.float64) * counts[j]).sum())
                comparable += float(len(values[i])) * len(values[j])
        rates.append(equal / comparable if comparable > 0 else None)
    return rates


def estimate_quality(
    scored: ScoredPairs,
    clusters: Sequence[npt.NDArray[np.int64]],
    jobs: Sequence[tuple[int, int]],
    weights_of: WeightsOf,
    *,
    unseen: float = 0.0,
) -> EstimatedQuality:
    """From the model's probabilities: every pair the clustering joins (two records of the
    party pairs compared, in one cluster) is a true link with its probability; a candidate pair
    it does not join is a missed match with its probability; ``unseen`` matches (below the
    candidate cut, :func:`unseen_matches`) are missed too. Between two parties whose pair
    probabilities do not yet condition on the records' other candidates
    (``scored.exclusive`` false), that is discounted by the chance that a record's own link
    is right instead, on each side where the other party is duplicate-free (a record has at
    most one match there)."""
    tables: list[_JoinedTable] = []
    probabilities: list[npt.NDArray[np.float64]] = []
    joined_masks: list[npt.NDArray[np.bool_]] = []
    for number, (i, j) in enumerate(jobs):
        left_ids, right_ids = clusters[i], clusters[j]
        joined_left, joined_right = _joined_pairs(left_ids, right_ids, within=i == j)
        candidates = scored.party_pairs[number].pairs
        # In the float64 copy itself: its own temporaries were 150 MiB a 19M-pair job.
        probability = candidates.scores.astype(np.float64)
        probability_of_weight(probability, out=probability)
        joined = _joined_candidates(candidates, left_ids, right_ids, within=i == j)
        probabilities.append(probability)
        joined_masks.append(joined)
        # Only a joined candidate can be a joined pair: look the joined pairs up among those
        # (about 1M of 1.8e7 candidates at 1M x 1M), not in a sort of every candidate.
        width = max(len(right_ids), 1)
        rows = np.flatnonzero(joined)
        candidate_codes = candidates.left[rows] * width + candidates.right[rows]
        joined_codes = joined_left * width + joined_right
        order = np.argsort(candidate_codes)
        sorted_codes = candidate_codes[order]
        position = np.clip(np.searchsorted(sorted_codes, joined_codes), 0, None)
        found = np.zeros(len(joined_codes), bool)
        if len(sorted_codes):
            position = np.minimum(position, len(sorted_codes) - 1)
            found = sorted_codes[position] == joined_codes
        joined_probability = np.empty(len(joined_codes), np.float64)
        joined_probability[found] = probability[rows[order[position[found]]]]
        if (~found).any():
            joined_probability[~found] = probability_of_weight(
                weights_of(number, joined_left[~found], joined_right[~found])
            )
        tables.append(
            _JoinedTable(
                left=joined_left, right=joined_right, width=width, probability=joined_probability
            )
        )
    corroborated = [_corroborated(number, tables, clusters, jobs) for number in range(len(jobs))]
    true_links = 0.0
    false_links = 0.0
    missed = max(unseen, 0.0)
    for number, (i, j) in enumerate(jobs):
        table = tables[number]
        joined_probability = corroborated[number]
        true_links += float(joined_probability.sum())
        false_links += float((1.0 - joined_probability).sum())
        candidates = scored.party_pairs[number].pairs
        not_joined = ~joined_masks[number]
        if i == j or scored.exclusive:
            missed += _sum_where(probabilities[number], not_joined)
            continue
        rest = probabilities[number][not_joined]
        # At most one record of a duplicate-free party per person: a record's link there, if
        # right, rules out its other candidates there.
        best_left = np.zeros(len(clusters[i]))
        best_right = np.zeros(len(clusters[j]))
        if not scored.is_deduplicated(j):
            np.maximum.at(best_left, table.left, joined_probability)
        if not scored.is_deduplicated(i):
            np.maximum.at(best_right, table.right, joined_probability)
        rest_left = candidates.left[not_joined]
        rest_right = candidates.right[not_joined]
        missed += float(
            (rest * (1.0 - best_left[rest_left]) * (1.0 - best_right[rest_right])).sum()
        )
    return EstimatedQuality(
        expected_true_links=true_links,
        expected_false_links=false_links,
        expected_missed_matches=missed,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _JoinedTable:
    """One job's joined pairs (left, right record numbers) and their match probabilities."""

    left: npt.NDArray[np.int64]
    right: npt.NDArray[np.int64]
    width: int
    probability: npt.NDArray[np.float64]

    @property
    def codes(self) -> npt.NDArray[np.int64]:
        return self.left * self.width + self.right

    def lookup(
        self, left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """The probabilities of the given joined pairs (0 for a pair not in the table)."""
        codes = self.codes
        order = np.argsort(codes)
        wanted = left * self.width + right
        out = np.zeros(len(wanted), np.float64)
        if len(codes) == 0 or len(wanted) == 0:
            return out
        position = np.minimum(np.searchsorted(codes[order], wanted), len(codes) - 1)
        hit = codes[order][position] == wanted
        out[hit] = self.probability[order][position[hit]]
        return out


def _corroborated(
    number: int,
    tables: Sequence[_JoinedTable],
    clusters: Sequence[npt.NDArray[np.int64]],
    jobs: Sequence[tuple[int, int]],
) -> npt.NDArray[np.float64]:
    """A joined pair's probability with the evidence of its cluster's third records: two
    records ``a``, ``b`` are one person if each is the person of a record ``c`` of a third
    party in their cluster, so the pair's own probability ``p_ab`` is combined with the best
    ``p_ac * p_bc`` as ``1 - (1 - p_ab)(1 - p_ac p_bc)``. Without it every pair of a cluster
    spanning three parties is judged on its own fields alone, and the estimate counts as false
    links pairs the clustering rightly joined through their third record."""
    i, j = jobs[number]
    table = tables[number]
    own = table.probability
    if len(own) == 0:
        return own
    index = {job: k for k, job in enumerate(jobs)}
    best = np.zeros(len(own), np.float64)
    parties = {party for job in jobs for party in job}
    for k in sorted(parties - {i, j}):
        first = _oriented(index, tables, i, k)
        second = _oriented(index, tables, j, k)
        if first is None or second is None:
            continue
        # Every record of party k in each joined pair's cluster.
        cluster = clusters[i][table.left]
        order = np.argsort(clusters[k], kind="stable")
        members = clusters[k][order]
        low = np.searchsorted(members, cluster, side="left")
        high = np.searchsorted(members, cluster, side="right")
        counts = high - low
        if counts.sum() == 0:
            continue
        pair = np.repeat(np.arange(len(own)), counts)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        third = order[np.repeat(low, counts) + offsets].astype(np.int64)
        through = first(table.left[pair], third) * second(table.right[pair], third)
        np.maximum.at(best, pair, through)
    return np.asarray(1.0 - (1.0 - own) * (1.0 - best))


def _oriented(
    index: Mapping[tuple[int, int], int], tables: Sequence[_JoinedTable], party: int, other: int
) -> Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float64]] | None:
    """Look up joined pairs between a record of ``party`` and one of ``other``, whichever way
    round the run compared the two parties (None: it did not)."""
    if (party, other) in index:
        table = tables[index[party, other]]
        return table.lookup
    if (other, party) in index:
        table = tables[index[other, party]]
        return lambda mine, theirs: table.lookup(theirs, mine)
    return None


def unseen_matches(
    scores: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    probabilities: npt.NDArray[np.float64],
    cut: float,
) -> float:
    """Expected matches below the candidate cut, which no candidate pair carries.

    The model sees only pairs whose record-level similarity reached ``cut``; a match whose
    fields nearly all changed falls below it, and counting it as found would make the
    estimated recall optimistic exactly where the data are hardest. The matches' density of
    record-level similarity (candidate pairs weighted by match probability) is read in
    ``UNSEEN_BINS`` bins of ``UNSEEN_BIN_WIDTH`` just above the cut and its lower tail is
    continued below it as a geometric series: a straight line fitted through the logs of the
    bins gives the ratio from one bin to the next lower one (at most ``UNSEEN_MAX_RATIO``),
    summed bin by bin down to similarity 0. Pairs below ``UNSEEN_MIN_PROBABILITY`` are left
    out of the density: the bin at the cut holds most candidate pairs (about 95 % of them on
    synth), and their many tiny probabilities add a floor of non-matches that read as a
    tail (on synth hard with repeats, 45 matches below the cut of one party's own pairs where
    4 were, and 160 in all where 91 were). A density that does not fall towards the cut is
    no match tail but that floor, and fewer than two non-empty bins are no line: neither is
    continued (0)."""
    bins = int(min(UNSEEN_BINS, np.floor((1.0 - cut) / UNSEEN_BIN_WIDTH + 1e-9)))
    if bins < 2 or len(scores) == 0:
        return 0.0
    edges = cut + UNSEEN_BIN_WIDTH * np.arange(bins + 1)
    # The pairs of at least the least probability first (a few in a hundred of them at
    # 1M x 1M), in their order, so the bins add the same terms in the same order.
    likely = np.flatnonzero(probabilities >= UNSEEN_MIN_PROBABILITY)
    values = np.asarray(np.asarray(scores)[likely], np.float64)
    weights = probabilities[likely]
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1
    inside = (index >= 0) & (index < bins)
    mass = np.bincount(index[inside], weights=weights[inside], minlength=bins)
    present = mass > 0
    if present.sum() < 2 or not present[0]:
        return 0.0
    steps = np.arange(bins)[present]
    slope, intercept = np.polyfit(steps, np.log(mass[present]), 1)
    if slope <= 1e-9:  # flat within rounding: no fall towards the cut
        return 0.0
    ratio = float(min(np.exp(-slope), UNSEEN_MAX_RATIO))
    below = int(np.floor(cut / UNSEEN_BIN_WIDTH + 1e-9))
    if below == 0:
        return 0.0
    powers = ratio ** np.arange(1, below + 1)
    return float(np.exp(intercept) * powers.sum())


def unseen_matches_reference(
    scores: Sequence[float], probabilities: Sequence[float], cut: float
) -> float:
    """The slow obvious twin of :func:`unseen_matches`: bins by loop, the least-squares line
    by its closed form, the tail bin by bin."""
    width = UNSEEN_BIN_WIDTH
    bins = 0
    while bins < UNSEEN_BINS and cut + (bins + 1) * width <= 1.0 + 1e-9:
        bins += 1
    if bins < 2 or not scores:
        return 0.0
    mass = [0.0] * bins
    for score, probability in zip(scores, probabilities, strict=True):
        if probability < UNSEEN_MIN_PROBABILITY:
            continue
        for k in range(bins):
            low, high = cut + k * width, cut + (k + 1) * width
            if low <= score < high or (k == bins - 1 and score == high):
                mass[k] += probability
                break
    points = [(float(k), float(np.log(m))) for k, m in enumerate(mass) if m > 0]
    if len(points) < 2 or mass[0] <= 0:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    intercept = mean_y - slope * mean_x
    if slope <= 1e-9:  # flat within rounding: no fall towards the cut
        return 0.0
    ratio = min(float(np.exp(-slope)), UNSEEN_MAX_RATIO)
    total = 0.0
    level = float(np.exp(intercept))
    step = 1
    while cut - step * width > -1e-9:
        level *= ratio
        total += level
        step += 1
    return total


def _joined_candidates(
    candidates: CandidatePairs,
    left_ids: npt.NDArray[np.int64],
    right_ids: npt.NDArray[np.int64],
    *,
    within: bool,
) -> npt.NDArray[np.bool_]:
    """Per candidate pair, whether the clustering joins it: whether it is one of
    :func:`_joined_pairs` (its two records share a cluster; within one party, left < right),
    read from the records' cluster ids instead of a search of the joined pairs
    (:func:`_joined_candidates_reference`)."""
    joined = np.empty(len(candidates), bool)
    # In chunks: two whole-array gathers of cluster ids are 16 bytes a pair (340 MiB at the
    # 2.1e7 candidates of a 1M x 1M run) for a mask of 1.
    for start in range(0, len(candidates), _JOIN_CHUNK):
        rows = slice(start, start + _JOIN_CHUNK)
        left, right = candidates.left[rows], candidates.right[rows]
        np.equal(left_ids[left], right_ids[right], out=joined[rows])
        if within:
            joined[rows] &= left < right
    return joined


_JOIN_CHUNK = 1 << 20


def _sum_where(values: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]) -> float:
    """``values[mask].sum()`` a chunk at a time: the masked copy of every candidate's
    probability was 140 MiB at 1M x 1M."""
    return float(
        sum(
            values[start : start + _JOIN_CHUNK][mask[start : start + _JOIN_CHUNK]].sum()
            for start in range(0, len(values), _JOIN_CHUNK)
        )
    )


def _joined_candidates_reference(
    candidates: CandidatePairs,
    left_ids: npt.NDArray[np.int64],
    right_ids: npt.NDArray[np.int64],
    *,
    within: bool,
) -> npt.NDArray[np.bool_]:
    """The slow obvious twin of :func:`_joined_candidates`: each candidate looked up among
    the joined pairs."""
    lefts, rights = _joined_pairs(left_ids, right_ids, within=within)
    joined = set(zip(lefts.tolist(), rights.tolist(), strict=True))
    return np.array(
        [
            (a, b) in joined
            for a, b in zip(candidates.left.tolist(), candidates.right.tolist(), strict=True)
        ],
        dtype=bool,
    )


def _joined_pairs(
    left_ids: npt.NDArray[np.int64], right_ids: npt.NDArray[np.int64], *, within: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every (left, right) pair of records in one cluster (left < right within one party)."""
    if within:
        order = np.argsort(left_ids, kind="stable")
        ids = left_ids[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0)
        stops = np.r_[starts[1:], len(ids)] if len(ids) else np.empty(0)
        lefts, rights = [], []
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            if stop - start < 2:
                continue
            members = np.sort(order[start:stop])
            a, b = np.triu_indices(len(members), k=1)
            lefts.append(members[a])
            rights.append(members[b])
        if not lefts:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)
    right_order = np.argsort(right_ids, kind="stable")
    sorted_right = right_ids[right_order]
    low = np.searchsorted(sorted_right, left_ids, side="left")
    high = np.searchsorted(sorted_right, left_ids, side="right")
    counts = high - low
    firsts = np.repeat(np.arange(len(left_ids), dtype=np.int64), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    seconds = right_order[np.repeat(low, counts) + offsets].astype(np.int64)
    return firsts, seconds


def _similarities_in_order(
    arrays: Sequence[npt.NDArray[np.uint64]],
    layout: ClkLayout,
    samples: Sequence[tuple[int, int, npt.NDArray[np.int64], npt.NDArray[np.int64]]],
    rows: npt.NDArray[np.int64],
    workers: int | None,
) -> GroupSimilarities:
    """The group similarities of the sampled pairs (per job: left party, right party and the
    pairs' records) concatenated, then taken in the order ``rows``: the same as
    ``_select(_concatenate(...), rows)``, but each pair compared straight into its place."""
    groups = len(layout.groups)
    if not samples:
        return _concatenate([], groups)
    if len(samples) == 1:
        i, j, left, right = samples[0]
        return group_similarities(
            arrays[i], arrays[j], left[rows], right[rows], layout, workers=workers
        )
    shape = (len(rows), groups)
    dtype = counts_dtype(layout)
    out = GroupSimilarities(
        shared=np.empty(shape, dtype),
        left_counts=np.empty(shape, dtype),
        right_counts=np.empty(shape, dtype),
    )
    starts = np.cumsum([0] + [len(left) for _, _, left, _ in samples])
    sample_of_row = np.searchsorted(starts, rows, side="right") - 1
    for number, (i, j, left, right) in enumerate(samples):
        where = np.flatnonzero(sample_of_row == number)
        offsets = rows[where] - starts[number]
        part = group_similarities(
            arrays[i], arrays[j], left[offsets], right[offsets], layout, workers=workers
        )
        out.shared[where] = part.shared
        out.left_counts[where] = part.left_counts
        out.right_counts[where] = part.right_counts
    return out


def _select(
    similarities: GroupSimilarities, rows: npt.NDArray[np.bool_] | npt.NDArray[np.int64] | slice
) -> GroupSimilarities:
    return GroupSimilarities(
        shared=similarities.shared[rows],
        left_counts=similarities.left_counts[rows],
        right_counts=similarities.right_counts[rows],
    )


_SIMILARITY_CHUNK = 1 << 21
"""Candidate pairs whose group counts the score stage holds at once (about 36 MiB)."""


def _concatenate(parts: Sequence[GroupSimilarities], groups: int) -> GroupSimilarities:
    if not parts:
        empty = np.empty((0, groups), np.int32)
        return GroupSimilarities(shared=empty, left_counts=empty, right_counts=empty)
    if len(parts) == 1:  # one party pair: no copy (660 MiB of counts at 1M x 1M)
        return parts[0]
    return GroupSimilarities(
        shared=np.concatenate([part.shared for part in parts]),
        left_counts=np.concatenate([part.left_counts for part in parts]),
        right_counts=np.concatenate([part.right_counts for part in parts]),
    )

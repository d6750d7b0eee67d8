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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from linkage_unit.fellegi_sunter import (
    FellegiSunterModel,
    ModelSettings,
    comparison_levels,
    derive_levels,
    exclusive_weights,
    fit,
    probability_of_weight,
    random_level_counts,
    weight_of_probability,
)
from linkage_unit.group_similarity import GroupSimilarities, group_popcounts, group_similarities
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
    "estimate_quality",
]

WeightsOf = Callable[[int, npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float64]]
"""``weights_of(job, left, right)``: match weights of pairs of one party pair."""

MIN_CANDIDATE_CUT = 0.05
MAX_CANDIDATE_CUT = 0.95
"""The record-level Dice cut for candidate pairs is searched in this range."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateCut:
    """The record-level Dice cut for candidate pairs. ``at_boundary``: the data asked for a
    cut outside [MIN_CANDIDATE_CUT, MAX_CANDIDATE_CUT] and it was clamped."""

    threshold: float
    at_boundary: bool
    random_pairs: int


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


@dataclass(frozen=True, slots=True, kw_only=True)
class EstimatedQuality:
    """What the model expects of the links made: true links, false links and missed matches,
    and from them precision, recall and F1. No ground truth is used."""

    expected_true_links: float
    expected_false_links: float
    expected_missed_matches: float

    @property
    def precision(self) -> float:
        made = self.expected_true_links + self.expected_false_links
        return self.expected_true_links / made if made > 0 else 1.0

    @property
    def recall(self) -> float:
        matches = self.expected_true_links + self.expected_missed_matches
        return self.expected_true_links / matches if matches > 0 else 1.0

    @property
    def f1(self) -> float:
        denominator = (
            2 * self.expected_true_links + self.expected_false_links + self.expected_missed_matches
        )
        return 2 * self.expected_true_links / denominator if denominator > 0 else 1.0

    def __add__(self, other: EstimatedQuality) -> EstimatedQuality:
        """Expected counts of two sets of links made (e.g. several scorers of one run)."""
        return EstimatedQuality(
            expected_true_links=self.expected_true_links + other.expected_true_links,
            expected_false_links=self.expected_false_links + other.expected_false_links,
            expected_missed_matches=self.expected_missed_matches + other.expected_missed_matches,
        )


def _group_hashes(clks: npt.NDArray[np.uint64], layout: ClkLayout) -> npt.NDArray[np.uint64]:
    """``(records, groups)`` 64-bit hashes of each group's words (0 words hash to 0)."""
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
        self.hashes = [_group_hashes(array, layout) for array in self.arrays]
        sizes = [len(array) for array in self.arrays]
        self.comparable = [
            sizes[i] * (sizes[i] - 1) // 2 if i == j else sizes[i] * sizes[j] for i, j in jobs
        ]
        if not self.jobs or sum(self.comparable) == 0:
            raise MatchingError("the model needs at least one pair of records to compare")
        generator = np.random.default_rng(seed)
        total = sum(self.comparable)
        per_record = sum(sizes[i] + (sizes[j] if i != j else 0) for i, j in self.jobs)
        self.tail = min(0.5, settings.candidates_per_record * per_record / total)
        wanted = max(settings.random_pairs, int(4 * settings.min_tail_samples / self.tail))
        wanted = min(wanted, settings.max_random_pairs)
        parts: list[GroupSimilarities] = []
        for (i, j), comparable in zip(self.jobs, self.comparable, strict=True):
            count = int(np.ceil(wanted * comparable / total)) if comparable else 0
            if count == 0:
                continue
            left, right = _sample_pairs(generator, sizes[i], sizes[j], i == j, count)
            parts.append(
                group_similarities(
                    self.arrays[i],
                    self.arrays[j],
                    left,
                    right,
                    layout,
                    workers=workers,
                )  # fmt: skip
            )
        self.random = _concatenate(parts, len(layout.groups))
        # Level cuts come from one half of the random pairs and u from the other: cut points
        # taken from the sample they are counted on sit where that sample happens to thin out
        # (on an atom of the discrete Dice values, the bias reached a tenth of a level's mass).
        half = np.zeros(len(self.random), bool)
        half[generator.permutation(len(self.random))[: len(self.random) // 2]] = True
        self.random_for_levels = _select(self.random, half)
        self.random_for_u = _select(self.random, ~half)

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
            threshold=round(clamped, 4), at_boundary=clamped != value, random_pairs=len(dice)
        )

    # -- after the compare --------------------------------------------------------------------

    def similarities(self, job: int, pairs: CandidatePairs) -> GroupSimilarities:
        i, j = self.jobs[job]
        return group_similarities(
            self.arrays[i], self.arrays[j], pairs.left, pairs.right, self.layout,
            workers=self.workers,
        )  # fmt: skip

    def score(
        self, candidates: Sequence[CandidatePairs], *, deduplicated: Sequence[bool] = ()
    ) -> ScoredPairs:
        """Train the model on the candidate pairs (one set per job, in job order) and score
        them. ``deduplicated``: per party, whether it may hold several records of one person
        (empty: none does). A record has at most one match in a duplicate-free party, so a
        pair between two parties is conditioned on its record's other candidates there
        (:func:`linkage_unit.fellegi_sunter.exclusive_weights`): on both sides between two
        duplicate-free parties, on the deduplicated party's record's side only between a
        deduplicated and a duplicate-free one, on neither between two deduplicated parties.
        Pairs within a party never are."""
        if len(candidates) != len(self.jobs):
            raise MatchingError("one set of candidate pairs per party pair is needed")
        flags = tuple(bool(flag) for flag in deduplicated) or (False,) * len(self.arrays)
        if len(flags) != len(self.arrays):
            raise MatchingError("one deduplicated flag per party is needed")
        parts = [self.similarities(number, pairs) for number, pairs in enumerate(candidates)]
        similarities = _concatenate(parts, len(self.layout.groups))
        jobs = np.concatenate(
            [np.full(len(pairs), number, np.int64) for number, pairs in enumerate(candidates)]
            or [np.empty(0, np.int64)]
        )
        groups = derive_levels(
            self.layout.names, self.random_for_levels, similarities, self.settings
        )
        random_levels = comparison_levels(self.random_for_u, groups)
        levels = comparison_levels(similarities, groups)
        identical_rates = self._identical_rates()
        sizes = [len(array) for array in self.arrays]
        model = fit(
            levels,
            jobs,
            groups,
            random_counts=random_level_counts(random_levels, groups),
            identical_rates=identical_rates,
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
        party_pairs = []
        offset = 0
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
                )
            party_pairs.append(
                PartyPairs(
                    left_party=i,
                    right_party=j,
                    pairs=CandidatePairs(
                        left=pairs.left,
                        right=pairs.right,
                        scores=part.astype(np.float32),
                        comparisons=pairs.comparisons,
                    ),
                )
            )
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

    def _identical_rates(self) -> list[float | None]:
        """Per group: the share of all comparable non-missing pairs whose group encodings are
        identical, exactly, from counts of equal encodings (true matches included, as in a
        random sample)."""
        hashes = self.hashes
        rates: list[float | None] = []
        for g in range(len(self.layout.groups)):
            present = [counts[:, g] > 0 for counts in self.popcounts]
            values = [h[mask, g] for h, mask in zip(hashes, present, strict=True)]
            unique, inverse = np.unique(
                np.concatenate(values or [np.empty(0, np.uint64)]), return_inverse=True
            )
            inverse = inverse.ravel()
            counts, start = [], 0
            for part in values:
                counts.append(
                    np.bincount(inverse[start : start + len(part)], minlength=len(unique))
                )
                start += len(part)
            equal = 0.0
            comparable = 0.0
            for i, j in self.jobs:
                if i == j:
                    equal += float((counts[i] * (counts[i] - 1) // 2).sum())
                    comparable += len(values[i]) * (len(values[i]) - 1) / 2
                else:
                    equal += float((counts[i].astype(np.float64) * counts[j]).sum())
                    comparable += float(len(values[i])) * len(values[j])
            rates.append(equal / comparable if comparable > 0 else None)
        return rates

    def _adjustments(
        self,
        candidates: Sequence[CandidatePairs],
        levels: npt.NDArray[np.uint8],
        model: FellegiSunterModel,
    ) -> npt.NDArray[np.float64] | None:
        """Term-frequency adjustments (log2) for pairs on the identical level: the average
        chance that two records share an encoding over this encoding's frequency."""
        if not self.settings.term_frequencies:
            return None
        hashes = self.hashes
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
        return estimate_quality(scored, clusters, self.jobs, self.weights_of)


def estimate_quality(
    scored: ScoredPairs,
    clusters: Sequence[npt.NDArray[np.int64]],
    jobs: Sequence[tuple[int, int]],
    weights_of: WeightsOf,
) -> EstimatedQuality:
    """From the model's probabilities: every pair the clustering joins (two records of the
    party pairs compared, in one cluster) is a true link with its probability; a candidate pair
    it does not join is a missed match with its probability. Between two parties whose pair
    probabilities do not yet condition on the records' other candidates
    (``scored.exclusive`` false), that is discounted by the chance that a record's own link
    is right instead, on each side where the other party is duplicate-free (a record has at
    most one match there)."""
    true_links = 0.0
    false_links = 0.0
    missed = 0.0
    for number, (i, j) in enumerate(jobs):
        left_ids, right_ids = clusters[i], clusters[j]
        joined_left, joined_right = _joined_pairs(left_ids, right_ids, within=i == j)
        candidates = scored.party_pairs[number].pairs
        probability = probability_of_weight(candidates.scores.astype(np.float64))
        width = max(len(right_ids), 1)
        candidate_codes = candidates.left * width + candidates.right
        joined_codes = joined_left * width + joined_right
        order = np.argsort(candidate_codes)
        position = np.clip(np.searchsorted(candidate_codes[order], joined_codes), 0, None)
        found = np.zeros(len(joined_codes), bool)
        if len(candidate_codes):
            position = np.minimum(position, len(candidate_codes) - 1)
            found = candidate_codes[order][position] == joined_codes
        joined_probability = np.empty(len(joined_codes), np.float64)
        joined_probability[found] = probability[order][position[found]]
        if (~found).any():
            joined_probability[~found] = probability_of_weight(
                weights_of(number, joined_left[~found], joined_right[~found])
            )
        true_links += float(joined_probability.sum())
        false_links += float((1.0 - joined_probability).sum())
        not_joined = ~np.isin(candidate_codes, joined_codes)
        rest = probability[not_joined]
        if i == j or scored.exclusive:
            missed += float(rest.sum())
            continue
        # At most one record of a duplicate-free party per person: a record's link there, if
        # right, rules out its other candidates there.
        best_left = np.zeros(len(left_ids))
        best_right = np.zeros(len(right_ids))
        if not scored.is_deduplicated(j):
            np.maximum.at(best_left, joined_left, joined_probability)
        if not scored.is_deduplicated(i):
            np.maximum.at(best_right, joined_right, joined_probability)
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


def _select(similarities: GroupSimilarities, rows: npt.NDArray[np.bool_]) -> GroupSimilarities:
    return GroupSimilarities(
        shared=similarities.shared[rows],
        left_counts=similarities.left_counts[rows],
        right_counts=similarities.right_counts[rows],
    )


def _concatenate(parts: Sequence[GroupSimilarities], groups: int) -> GroupSimilarities:
    if not parts:
        empty = np.empty((0, groups), np.int32)
        return GroupSimilarities(shared=empty, left_counts=empty, right_counts=empty)
    return GroupSimilarities(
        shared=np.concatenate([part.shared for part in parts]),
        left_counts=np.concatenate([part.left_counts for part in parts]),
        right_counts=np.concatenate([part.right_counts for part in parts]),
    )

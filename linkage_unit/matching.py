"""Matching: the linkage unit's one entry point from checked CLKs to a link structure.

Stages behind it: compare (``comparison.py``: blocking.py generates candidate pairs and
similarity.py scores them, in this process or on Dask) -> score -> solve (``solving.py``,
one-to-one) or cluster (``clustering.py``, when a party is deduplicated). Scoring is one of
two:

* **Dice** (single record-level CLKs, encoding v1): a pair's score is its Dice similarity;
  ``threshold.py`` chooses the Dice threshold from the run's own scores when the operator set
  none.
* **Fellegi-Sunter** (encodings of several field groups, ``protocol/clk_layout.py``): candidate
  pairs above a record-level Dice cut chosen from random pairs get one similarity per group,
  an EM-trained model gives each its match probability (``scoring.py``,
  ``fellegi_sunter.py``), and the solver takes pairs at or above the operator's probability
  (0.5 by default). The model's estimated precision, recall and F1 come with the result. A
  model whose matches differ from its non-matches on fewer than two field groups is not
  trusted (``FellegiSunterModel.trusted``): its pairs make no link.

The solve is the same for both: a run with no deduplicated party links one-to-one
(``solve_linkage`` over the pairs at or above the cut); a run that deduplicates a party makes
one call into ``clustering.py`` with every candidate pair and the cut, in the scores' own
units (Dice and the Dice threshold, or match probabilities and the probability cut, a pair
never scored counting as probability 0). A deduplicated party's own pairs are found and
scored from its own records alone, as a deduplication-only run of its extract would: with
Dice at the threshold that run would choose, with the model by a model trained on its
records alone. Which of its records share a link key then depends on nothing another party
uploads (``clustering.py``: no membership oracle through a party's own keys).

The service calls :func:`link` and gets, for every party, one cluster id per record position;
link keys are issued per cluster (``linkage_unit/link_keys.py``). Nothing here sees a secret
or a raw value, and no message names a score or a CLK.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from linkage_unit.blocking import BlockingMode, BlockingSettings
from linkage_unit.clustering import (
    DEFAULT_MAX_CLUSTER_SIZE,
    DEFAULT_UNSCORED_MARGIN,
    ClusterSettings,
    PartyRecords,
    cluster_records,
)
from linkage_unit.comparison import (
    Comparer,
    CompareSettings,
    CompareStatistics,
    Comparison,
    LocalComparer,
    ProgressCallback,
)
from linkage_unit.fellegi_sunter import FellegiSunterModel, ModelSettings
from linkage_unit.group_blocking import GroupBlockingSettings
from linkage_unit.scoring import CandidateCut, EstimatedQuality, ScoredPairs, Scorer
from linkage_unit.similarity import (
    DEFAULT_MAX_CANDIDATE_PAIRS,
    CandidatePairs,
    best_scores,
    candidate_pairs,
    check_clks,
)
from linkage_unit.solving import MAX_PARTIES, PartyPairs, Solution, solve_linkage
from linkage_unit.threshold import (
    MIN_THRESHOLD,
    NullPoint,
    ThresholdChoice,
    ThresholdMethod,
    choose_threshold,
    choose_threshold_with_null,
)
from protocol.clk_layout import ClkLayout
from protocol.errors import MatchingError

__all__ = [
    "LinkResult",
    "LinkStatistics",
    "MatchSettings",
    "ProgressCallback",
    "Scoring",
    "choose_run_threshold",
    "link",
]


class Scoring(StrEnum):
    """How candidate pairs are scored: ``auto`` uses the Fellegi-Sunter model when the
    encoding has several field groups and Dice when it has one (encoding v1, as before). The
    model needs at least two groups: with one, asking for it is an error."""

    AUTO = "auto"
    DICE = "dice"
    FELLEGI_SUNTER = "fellegi-sunter"


_CLEAR_MARGIN = 0.05  # Dice above the 99th percentile of second-best scores
_MIN_CLEAR = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchSettings:
    """How a run matches.

    ``threshold``: the Dice threshold of Dice scoring (None: chosen from the run's own
    scores); with Fellegi-Sunter scoring, the record-level Dice cut for candidate pairs (None:
    chosen from random pairs), while the link cut is ``model.match_probability``.
    ``blocking``: ``auto`` compares exhaustively up to 20k x 20k pairs (faster there) and uses
    LSH above; ``lsh`` always blocks; ``none`` never does. ``blocking_seed`` is the linkage
    unit's per-project seed for the LSH bit positions and the model's random pairs (None:
    fresh from ``secrets``). ``deduplicated``: the parties whose extracts may hold several
    records of one person; with any, the solve is the clustering in ``clustering.py``, which
    fails the run rather than give one person more than ``max_cluster_size`` records of one
    party.
    ``scoring``: see :class:`Scoring`.
    ``group_blocking``: for an encoding of several field groups, block by identical group
    encodings plus LSH at a high cut (``group_blocking.py``) wherever ``blocking`` would use
    LSH; None (the default): LSH alone.
    """

    threshold: float | None = None
    blocking: BlockingMode = BlockingMode.AUTO
    deduplicated: frozenset[str] = frozenset()
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE
    blocking_settings: BlockingSettings = field(default_factory=BlockingSettings)
    blocking_seed: int | None = None
    max_candidate_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS
    threshold_sample: int = 5000
    workers: int | None = None
    scoring: Scoring = Scoring.AUTO
    model: ModelSettings = field(default_factory=ModelSettings)
    group_blocking: GroupBlockingSettings | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not (0.0 < self.threshold <= 1.0):
            raise MatchingError("threshold must be in (0, 1], or unset for automatic")
        for name, vocabulary in (("blocking", BlockingMode), ("scoring", Scoring)):
            try:
                object.__setattr__(self, name, vocabulary(getattr(self, name)))
            except ValueError:
                choices = ", ".join(repr(str(value)) for value in vocabulary)
                raise MatchingError(f"{name} must be one of {choices}") from None
        if self.max_candidate_pairs < 1:
            raise MatchingError("max_candidate_pairs must be >= 1")
        if self.threshold_sample < 1:
            raise MatchingError("threshold_sample must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise MatchingError("workers must be >= 1")
        if self.max_cluster_size < 2:
            raise MatchingError("max_cluster_size must be at least 2 records")

    def compare_settings(self, seed: int, layout: ClkLayout | None) -> CompareSettings:
        """What a compare of this run gets: the operator's blocking (its LSH shape and group
        blocking) with this run's seed; ``layout``'s groups, when the pairs are scored per
        group, for group blocking's join. One-off and spine runs both build it here."""
        return CompareSettings(
            blocking=self.blocking,
            blocking_settings=self.blocking_settings,
            seed=seed,
            max_pairs=self.max_candidate_pairs,
            workers=self.workers,
            group_blocking=self.group_blocking,
            group_offsets=None if layout is None else layout.word_offsets(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatistics:
    """What a run did and what its model expects of its links.

    ``compare``: comparisons and blocking figures. ``largest_cluster``: records in the
    largest cluster made. ``own_thresholds``: with Dice scoring, the cut of each
    deduplicated party's own pairs (chosen from its records alone). ``threshold_non_match_mode`` / ``threshold_match_mode``: the
    automatic Dice threshold's view of the two score modes.
    With Fellegi-Sunter scoring: ``candidate_cut`` (the record-level Dice cut), ``model`` (the
    trained m, u and priors) and ``estimated`` (expected precision, recall and F1 of the links
    made, from the model alone). With Dice scoring and the null-model threshold:
    ``estimated`` from the null model at the threshold used (its counts per party record, as
    the null model reads them off a sample) and ``dice_curve``, its estimate at every Dice
    threshold searched. ``untrusted_models``: the parties (``moj``, or ``moj+dfe`` across
    parties) of each model that separated its matches on fewer than two field groups
    (``FellegiSunterModel.trusted``), whose pairs were therefore linked by nothing."""

    compare: CompareStatistics = field(default_factory=CompareStatistics)
    candidate_pairs: int = 0
    accepted_pairs: int = 0
    largest_cluster: int = 0
    own_thresholds: Mapping[str, float] = field(default_factory=dict)
    threshold_non_match_mode: float | None = None
    threshold_match_mode: float | None = None
    candidate_cut: CandidateCut | None = None
    model: FellegiSunterModel | None = None
    estimated: EstimatedQuality | None = None
    dice_curve: tuple[NullPoint, ...] = ()
    untrusted_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkResult:
    """The link structure: records with the same cluster id (across or within parties) are
    the same person. Every record of every party has a cluster id.

    ``threshold``: the Dice threshold (Dice scoring) or the match probability cut
    (Fellegi-Sunter); ``threshold_method``: how it was found, as status and the audit log show
    it (:attr:`linkage_unit.threshold.ThresholdChoice.label`). ``scored``: with
    Fellegi-Sunter scoring, every candidate pair with its match weight and the cut (what a
    clustering or a quality report consumes)."""

    clusters: Mapping[str, npt.NDArray[np.int64]]
    threshold: float
    cluster_count: int
    linked_record_count: int
    comparisons: int
    statistics: LinkStatistics = field(default_factory=LinkStatistics)
    threshold_method: str = ThresholdMethod.OPERATOR.value
    candidate_pair_count: int = 0
    scored: ScoredPairs | None = None


def _second_best(
    sample: npt.NDArray[np.uint64],
    other: npt.NDArray[np.uint64],
    best: npt.NDArray[np.float64],
    settings: MatchSettings,
) -> npt.NDArray[np.float64]:
    """Second-best scores of sampled records that clearly have a match (each one's best
    non-match, for the null model in ``threshold.py``). Only records whose best is at least
    the sample's median best are looked at: their best record is found among the pairs at or
    above that floor, then excluded."""
    floor = max(float(np.median(best)), MIN_THRESHOLD)
    limit = 50 * len(sample)
    try:
        pairs = candidate_pairs(sample, other, floor, workers=settings.workers, max_pairs=limit)
    except MatchingError:  # a flat distribution: too many ties above the median
        return np.empty(0)
    if len(pairs) == 0:
        return np.empty(0)
    # Per sampled record, the right position of its highest pair (ties: the first).
    order = np.lexsort((pairs.right, -pairs.scores.astype(np.float64), pairs.left))
    left, right = pairs.left[order], pairs.right[order]
    first = np.ones(len(left), bool)
    first[1:] = left[1:] != left[:-1]
    rows, argmax = left[first], right[first]
    second = best_scores(sample[rows], other, excluded=argmax, workers=settings.workers)
    # An unmatched record's second-best is the second-highest of its non-match scores, lower
    # than the best non-match the null model needs; keep records clearly above the non-match
    # scores (matched, so their second-best IS their best non-match).
    clear = best[rows] >= np.quantile(second, 0.99) + _CLEAR_MARGIN
    return second[clear] if int(clear.sum()) >= _MIN_CLEAR else second


def _other_party(index: int, deduplicated: list[bool]) -> tuple[int, bool]:
    """The party a sample of ``index``'s records is scored against, and whether their
    second-best scores are best non-matches: the next duplicate-free party (a record has at
    most one match there), else simply the next party (its second-best may be a repeat)."""
    count = len(deduplicated)
    for step in range(1, count):
        other = (index + step) % count
        if not deduplicated[other]:
            return other, True
    return (index + 1) % count, False


def _choose_threshold(
    arrays: list[npt.NDArray[np.uint64]],
    settings: MatchSettings,
    seed: int,
    deduplicated: list[bool] | None = None,
) -> ThresholdChoice:
    """Best (and, with two or more parties, second-best) score of a sample of each party's
    records against another party (a duplicate-free one where there is one); alone, best
    against the rest of its own records. The null model needs second-best scores that are
    best non-matches; without a duplicate-free party to give them, the valley method."""
    flags = deduplicated if deduplicated is not None else [False] * len(arrays)
    generator = np.random.default_rng(seed)
    bests, nulls = [], []
    for index, array in enumerate(arrays):
        if len(array) == 0:
            continue
        take = min(len(array), settings.threshold_sample)
        sample = np.sort(generator.choice(len(array), size=take, replace=False))
        if len(arrays) > 1:
            other_index, second_is_null = _other_party(index, flags)
            other = arrays[other_index]
            if len(other):
                best = best_scores(array[sample], other, workers=settings.workers)
                bests.append(best)
                if len(other) > 1 and second_is_null:
                    nulls.append(_second_best(array[sample], other, best, settings))
        elif len(array) > 1:
            bests.append(
                best_scores(array[sample], array, excluded=sample, workers=settings.workers)
            )
    if not bests:
        return choose_threshold(np.empty(0))
    if nulls:
        return choose_threshold_with_null(
            np.concatenate(bests), np.concatenate(nulls), one_to_one=not any(flags)
        )
    return choose_threshold(np.concatenate(bests))


def choose_run_threshold(
    arrays: Sequence[npt.NDArray[np.uint64]],
    settings: MatchSettings,
    seed: int,
    deduplicated: Sequence[bool],
) -> ThresholdChoice:
    """The Dice threshold :func:`link` would choose for these parties' records (the
    operator's when set): what a run into a spine cuts its new-vs-spine pairs at."""
    if settings.threshold is not None:
        return ThresholdChoice(threshold=settings.threshold, method=ThresholdMethod.OPERATOR)
    return _choose_threshold(list(arrays), settings, seed, list(deduplicated))


def _solve(
    parties: Sequence[str],
    sizes: Sequence[int],
    party_pairs: Sequence[PartyPairs],
    settings: MatchSettings,
    *,
    threshold: float,
    own_thresholds: Mapping[int, float] | None = None,
    unscored_margin: float = DEFAULT_UNSCORED_MARGIN,
) -> Solution:
    """One-to-one over the pairs at or above ``threshold`` when no party is deduplicated;
    else one call into ``clustering.py`` with every scored pair (generic scores, the cut in
    their units)."""
    if not settings.deduplicated:
        return solve_linkage(sizes, party_pairs)
    own = own_thresholds or {}
    return cluster_records(
        [
            PartyRecords(
                name=party,
                size=size,
                deduplicated=party in settings.deduplicated,
                own_threshold=own.get(index),
            )
            for index, (party, size) in enumerate(zip(parties, sizes, strict=True))
        ],
        party_pairs,
        ClusterSettings(
            threshold=threshold,
            unscored_margin=unscored_margin,
            max_cluster_size=settings.max_cluster_size,
        ),
    )


def _check_layout(layout: ClkLayout | None, words: int | None) -> ClkLayout | None:
    if layout is None or words is None:
        return layout
    if layout.total_words != words:
        raise MatchingError(
            f"the CLKs have {words * 64} bits but their layout says {layout.total_bits}: "
            "the encoding and its layout disagree"
        )
    return layout


def link(
    clks_by_party: Mapping[str, npt.NDArray[np.uint64]],
    settings: MatchSettings,
    *,
    layout: ClkLayout | None = None,
    progress: ProgressCallback | None = None,
    executor: Comparer | None = None,
) -> LinkResult:
    """Link every party's CLKs into clusters: at most one record per party per cluster, or,
    for the parties in ``settings.deduplicated``, several (clustered against chaining).

    ``layout``: which bits of a record are which field group (None: one record-level CLK);
    the CLKs must be exactly that wide.
    ``executor``: the compare stage (:class:`linkage_unit.comparison.Comparer`), e.g. a
    ``DaskExecutor`` for a Dask cluster; None compares in this process. The link structure is
    the same either way."""
    parties = list(clks_by_party)
    if not parties:
        raise MatchingError("no parties to link: at least one party's CLKs are needed")
    if len(parties) > MAX_PARTIES:
        raise MatchingError(f"at most {MAX_PARTIES} parties can be linked in one run")
    unknown = settings.deduplicated - set(parties)
    if unknown:
        raise MatchingError(
            f"cannot deduplicate {', '.join(sorted(unknown))}: not a party to this run"
        )
    if len(parties) == 1 and not settings.deduplicated:
        raise MatchingError("linking needs at least two parties; deduplicate a party alone")
    deduplicated = [party in settings.deduplicated for party in parties]
    arrays = [check_clks(clks_by_party[party], name=f"party {party!r}") for party in parties]
    widths = {array.shape[1] for array in arrays if len(array)}
    if len(widths) > 1:
        raise MatchingError("parties' CLKs have different lengths; they cannot be compared")
    words = next(iter(widths)) if widths else None
    layout = _check_layout(layout, words)
    sizes = [len(array) for array in arrays]
    seed = settings.blocking_seed if settings.blocking_seed is not None else secrets.randbits(128)
    jobs: list[tuple[int, int]] = [
        (i, j) for i in range(len(parties)) for j in range(i + 1, len(parties))
    ]
    jobs += [(i, i) for i in range(len(parties)) if deduplicated[i]]
    comparer: Comparer = executor if executor is not None else LocalComparer()
    compare_settings = settings.compare_settings(seed, layout)
    groups = 1 if layout is None else len(layout.groups)
    use_model = settings.scoring is Scoring.FELLEGI_SUNTER or (
        settings.scoring is Scoring.AUTO and groups > 1
    )
    if use_model and groups < 2:
        # One similarity per pair is one indicator: EM cannot tell matches from the noise in
        # the random pairs' u at busy levels, so the model would link nearly nothing.
        raise MatchingError(
            "Fellegi-Sunter scoring needs an encoding of at least two field groups; a single "
            "record-level CLK is scored by Dice"
        )
    comparable = sum(
        sizes[i] * (sizes[i] - 1) // 2 if i == j else sizes[i] * sizes[j] for i, j in jobs
    )
    if use_model and words is not None and comparable > 0:
        return _link_with_model(
            parties, arrays, jobs, layout or ClkLayout.single(words * 64), settings,
            compare_settings, comparer, progress,
        )  # fmt: skip

    if settings.threshold is not None:
        choice = ThresholdChoice(threshold=settings.threshold, method=ThresholdMethod.OPERATOR)
    else:
        if progress is not None:
            progress("threshold", 0, 1)
        choice = _choose_threshold(arrays, settings, seed, deduplicated)
    # A deduplicated party's own pairs are cut where a deduplication-only run of its extract
    # alone would cut them, so which of its records share a link key depends on nothing
    # another party uploads (clustering.py: no membership oracle through one's own keys).
    own_thresholds = {
        i: choice.threshold
        if settings.threshold is not None or len(parties) == 1
        else _choose_threshold([arrays[i]], settings, own_seed(arrays[i]), [True]).threshold
        for i in range(len(parties))
        if deduplicated[i]
    }
    thresholds = [own_thresholds[i] if i == j else choice.threshold for i, j in jobs]
    comparisons = comparer.compare(arrays, jobs, thresholds, compare_settings, progress=progress)
    party_pairs = [
        PartyPairs(left_party=item.left_party, right_party=item.right_party, pairs=item.pairs)
        for item in comparisons
    ]
    candidate_count = _check_candidate_count(comparisons, settings, max(thresholds, default=1.0))
    if progress is not None:
        progress("solve", 0, 1)
    solution = _solve(
        parties, sizes, party_pairs, settings,
        threshold=choice.threshold, own_thresholds=own_thresholds,
    )  # fmt: skip
    if progress is not None:
        progress("solve", 1, 1)
    statistics = LinkStatistics(
        compare=_total(comparisons),
        candidate_pairs=candidate_count,
        accepted_pairs=solution.accepted_pairs,
        largest_cluster=_largest(solution),
        own_thresholds={parties[i]: value for i, value in own_thresholds.items()},
        threshold_non_match_mode=choice.non_match_mode,
        threshold_match_mode=choice.match_mode,
        estimated=_null_estimate(choice, sizes),
        dice_curve=choice.curve,
    )
    return _result(parties, sizes, solution, choice, statistics)


def _null_estimate(choice: ThresholdChoice, sizes: Sequence[int]) -> EstimatedQuality | None:
    """The null model's estimate at the threshold used, scaled from shares of the sampled
    records to a party's records (the mean party size): a one-to-one link is one record on
    each side."""
    point = choice.estimated_at(choice.threshold)
    if point is None:
        return None
    records = sum(sizes) / max(len(sizes), 1)
    share = point.estimated
    return EstimatedQuality(
        expected_true_links=share.expected_true_links * records,
        expected_false_links=share.expected_false_links * records,
        expected_missed_matches=share.expected_missed_matches * records,
    )


def _link_with_model(
    parties: list[str],
    arrays: list[npt.NDArray[np.uint64]],
    jobs: list[tuple[int, int]],
    layout: ClkLayout,
    settings: MatchSettings,
    compare_settings: CompareSettings,
    comparer: Comparer,
    progress: ProgressCallback | None,
) -> LinkResult:
    """The Fellegi-Sunter path of :func:`link` (module docstring). Pairs across parties are
    scored by one model over every party pair; with other parties in the run, a deduplicated
    party's own pairs by a model of its records alone (as a deduplication-only run of its
    extract: the same random pairs, candidate cut and training), so that its partition of its
    own records depends on nothing another party uploads."""
    if progress is not None:
        progress("model: random pairs", 0, 1)
    deduplicated = [party in settings.deduplicated for party in parties]
    sizes = [len(array) for array in arrays]
    # Each scorer: its parties (indices into arrays) and its jobs in its own numbering.
    groups: list[tuple[list[int], list[tuple[int, int]]]] = []
    if len(parties) > 1 and any(deduplicated):
        cross = [(i, j) for i, j in jobs if i != j]
        if any(sizes[i] * sizes[j] for i, j in cross):
            groups.append((list(range(len(parties))), cross))
        groups += [([i], [(0, 0)]) for i, j in jobs if i == j and sizes[i] > 1]
    else:
        groups.append((list(range(len(parties))), jobs))
    # A party's own scorer samples its random pairs from a seed of its own encodings, not the
    # run's fresh seed: its partition is then a function of its upload alone, the same in every
    # run, and no other party's upload or the run's randomness can move it.
    scorers = [
        Scorer(
            [arrays[i] for i in members],
            layout,
            own_jobs,
            settings.model,
            seed=own_seed(arrays[members[0]]) if own else compare_settings.seed,
            workers=settings.workers,
        )  # fmt: skip
        for members, own_jobs, own in (
            (members, own_jobs, len(members) == 1 and deduplicated[members[0]])
            for members, own_jobs in groups
        )
    ]
    if settings.threshold is not None:
        cuts = [
            CandidateCut(
                threshold=settings.threshold, at_boundary=False, random_pairs=len(scorer.random)
            )
            for scorer in scorers
        ]
    else:
        cuts = [scorer.candidate_cut() for scorer in scorers]
    # Every job's record-level cut: its scorer's (a job no scorer takes has no comparable pair).
    job_cut: dict[tuple[int, int], CandidateCut] = {}
    for (members, own_jobs), cut in zip(groups, cuts, strict=True):
        for i, j in own_jobs:
            job_cut[members[i], members[j]] = cut
    thresholds = [job_cut.get(job, cuts[0]).threshold for job in jobs]
    comparisons = comparer.compare(
        arrays, jobs, thresholds, compare_settings,
        join_rules=[job_cut.get(job, cuts[0]).join_rule for job in jobs], progress=progress,
    )  # fmt: skip
    candidate_count = _check_candidate_count(comparisons, settings, max(thresholds))
    by_job = {(item.left_party, item.right_party): item.pairs for item in comparisons}
    if progress is not None:
        progress("model: train and score", 0, 1)
    scored_parts: list[ScoredPairs] = []
    untrusted: list[str] = []
    for (members, own_jobs), scorer, cut in zip(groups, scorers, cuts, strict=True):
        part = scorer.score(
            [by_job[members[i], members[j]] for i, j in own_jobs],
            deduplicated=[deduplicated[member] for member in members],
            cut=cut.threshold,
        )
        if not part.model.trusted:
            # Its "matches" are look-alikes on fewer than two groups (fellegi_sunter.py,
            # MIN_SEPARATING_GROUPS): what EM finds in pairs holding no true match, e.g. a
            # duplicate-free extract deduplicated. Its pairs link nothing.
            part = part.distrusted()
            untrusted.append("+".join(parties[member] for member in members))
        scored_parts.append(part)
    scored = _combine(scored_parts, groups, jobs, deduplicated)
    if progress is not None:
        progress("solve", 0, 1)
    if settings.deduplicated:
        # Every candidate pair with its probability: below the cut is evidence against one
        # person too. A pair never scored is below the candidate Dice cut, where the model's
        # probability is about 0: it counts as 0 (margin = the cut).
        probability = settings.model.match_probability
        solution = _solve(
            parties, sizes, scored.probabilities(), settings,
            threshold=probability, unscored_margin=probability,
        )  # fmt: skip
    else:
        solution = _solve(parties, sizes, scored.accepted(), settings, threshold=scored.cut_weight)
    if progress is not None:
        progress("solve", 1, 1)
    estimated = EstimatedQuality(
        expected_true_links=0.0, expected_false_links=0.0, expected_missed_matches=0.0
    )
    for (members, _), scorer, part in zip(groups, scorers, scored_parts, strict=True):
        estimated = estimated + scorer.estimate_quality(
            part, [solution.clusters[member] for member in members]
        )
    choice = ThresholdChoice(
        threshold=settings.model.match_probability, method=ThresholdMethod.FELLEGI_SUNTER
    )
    statistics = LinkStatistics(
        compare=_total(comparisons),
        candidate_pairs=candidate_count,
        accepted_pairs=solution.accepted_pairs,
        largest_cluster=_largest(solution),
        candidate_cut=cuts[0],
        model=scored.model,
        estimated=estimated,
        untrusted_models=tuple(untrusted),
    )
    return _result(parties, sizes, solution, choice, statistics, scored=scored)


def own_seed(clks: npt.NDArray[np.uint64]) -> int:
    """The seed of a deduplicated party's own sampling (its own cut, its own model's random
    pairs): from its encodings alone, so a deduplication within a linkage run gives the same
    partition as a deduplication-only run of the same upload, whatever else the run holds."""
    digest = hashlib.sha256(np.ascontiguousarray(clks).tobytes()).digest()
    return int.from_bytes(digest[:16], "big")


def _combine(
    parts: Sequence[ScoredPairs],
    groups: Sequence[tuple[list[int], list[tuple[int, int]]]],
    jobs: Sequence[tuple[int, int]],
    deduplicated: Sequence[bool],
) -> ScoredPairs:
    """One run's scored pairs, in job order and the run's party numbers, from its scorers'
    (the first scorer's model is the run's: across parties, or a lone party's own)."""
    found: dict[tuple[int, int], PartyPairs] = {}
    for part, (members, _) in zip(parts, groups, strict=True):
        for item in part.party_pairs:
            i, j = members[item.left_party], members[item.right_party]
            found[i, j] = PartyPairs(left_party=i, right_party=j, pairs=item.pairs)
    return ScoredPairs(
        party_pairs=tuple(
            found.get(
                job, PartyPairs(left_party=job[0], right_party=job[1], pairs=CandidatePairs.empty())
            )
            for job in jobs
        ),  # fmt: skip
        match_probability=parts[0].match_probability,
        model=parts[0].model,
        exclusive=True,
        deduplicated=tuple(deduplicated),
    )


def _largest(solution: Solution) -> int:
    if not solution.clusters or not sum(len(ids) for ids in solution.clusters):
        return 0
    ids = np.concatenate(solution.clusters)
    return int(np.bincount(ids, minlength=solution.cluster_count).max())


def _total(comparisons: Sequence[Comparison]) -> CompareStatistics:
    total = CompareStatistics()
    for item in comparisons:
        total = total + item.statistics
    return total


def _check_candidate_count(
    comparisons: Sequence[Comparison], settings: MatchSettings, threshold: float
) -> int:
    count = sum(len(item.pairs) for item in comparisons)
    if count > settings.max_candidate_pairs:
        raise MatchingError(
            f"more than {settings.max_candidate_pairs} candidate pairs in total at threshold "
            f"{threshold}: raise the threshold or the candidate-pair limit"
        )
    return count


def _result(
    parties: list[str],
    sizes: list[int],
    solution: Solution,
    choice: ThresholdChoice,
    statistics: LinkStatistics,
    *,
    scored: ScoredPairs | None = None,
) -> LinkResult:
    clusters = dict(zip(parties, solution.clusters, strict=True))
    all_ids = np.concatenate(solution.clusters) if sum(sizes) else np.empty(0, np.int64)
    cluster_sizes = np.bincount(all_ids, minlength=solution.cluster_count)
    linked = int((cluster_sizes[all_ids] > 1).sum()) if len(all_ids) else 0
    return LinkResult(
        clusters=clusters,
        threshold=choice.threshold,
        cluster_count=solution.cluster_count,
        linked_record_count=linked,
        comparisons=statistics.compare.comparisons,
        statistics=statistics,
        threshold_method=choice.label,
        candidate_pair_count=statistics.candidate_pairs,
        scored=scored,
    )

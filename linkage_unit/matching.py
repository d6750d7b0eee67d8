"""Matching: the linkage unit's one entry point from checked CLKs to a link structure.

Stages behind it: block (``blocking.py``) -> compare (``similarity.py``) -> solve
(``solving.py``, one-to-one) or cluster (``clustering.py``, when a party is deduplicated),
with ``threshold.py`` choosing the Dice threshold when the operator set none. The service calls :func:`link` and gets, for every party, one cluster id per record
position; link keys are issued per cluster (``linkage_unit/link_keys.py``). Nothing here sees
a secret or a raw value, and no message names a score or a CLK.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from linkage_unit.blocking import EXHAUSTIVE_BELOW_COMPARISONS, BlockingIndex, BlockingSettings
from linkage_unit.clustering import (
    DEFAULT_MAX_CLUSTER_SIZE,
    ClusterSettings,
    PartyRecords,
    cluster_records,
)
from linkage_unit.distributed import DaskExecutor, compare_on_cluster
from linkage_unit.similarity import (
    DEFAULT_MAX_CANDIDATE_PAIRS,
    CandidatePairs,
    best_scores,
    candidate_pairs,
    candidate_pairs_within,
    check_clks,
)
from linkage_unit.solving import MAX_PARTIES, PartyPairs, solve_linkage
from linkage_unit.threshold import (
    MIN_THRESHOLD,
    ThresholdChoice,
    choose_threshold,
    choose_threshold_with_null,
)
from protocol.clk_layout import ClkLayout
from protocol.errors import MatchingError

__all__ = ["LinkResult", "MatchSettings", "link"]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; counts only, never data."""

BLOCKING_MODES = ("auto", "lsh", "none")
_CLEAR_MARGIN = 0.05  # Dice above the 99th percentile of second-best scores
_MIN_CLEAR = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchSettings:
    """How a run matches. ``threshold=None`` means choose it from the run's own scores.

    ``blocking``: "auto" compares exhaustively up to 20k x 20k pairs (faster there) and uses
    LSH above; "lsh" always blocks; "none" never does. ``blocking_seed`` is the linkage
    unit's per-project seed for the LSH bit positions (None: fresh from ``secrets``).
    ``deduplicated``: the parties whose extracts may hold several records of one person;
    with any, the solve is the clustering in ``clustering.py``, which fails the run rather
    than give one person more than ``max_cluster_size`` records of one party.
    """

    threshold: float | None = None
    blocking: str = "auto"
    deduplicated: frozenset[str] = frozenset()
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE
    blocking_settings: BlockingSettings = field(default_factory=BlockingSettings)
    blocking_seed: int | None = None
    max_candidate_pairs: int = DEFAULT_MAX_CANDIDATE_PAIRS
    threshold_sample: int = 5000
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not (0.0 < self.threshold <= 1.0):
            raise MatchingError("threshold must be in (0, 1], or unset for automatic")
        if self.blocking not in BLOCKING_MODES:
            raise MatchingError("blocking must be 'auto', 'lsh' or 'none'")
        if self.max_candidate_pairs < 1:
            raise MatchingError("max_candidate_pairs must be >= 1")
        if self.threshold_sample < 1:
            raise MatchingError("threshold_sample must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise MatchingError("workers must be >= 1")
        if self.max_cluster_size < 2:
            raise MatchingError("max_cluster_size must be at least 2 records")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkResult:
    """The link structure: records with the same cluster id (across or within parties) are
    the same person. Every record of every party has a cluster id."""

    clusters: Mapping[str, npt.NDArray[np.int64]]
    threshold: float
    cluster_count: int
    linked_record_count: int
    comparisons: int
    statistics: Mapping[str, float] = field(default_factory=dict)
    threshold_method: str = "operator"
    candidate_pair_count: int = 0


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


def _use_lsh(
    left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64] | None, settings: MatchSettings
) -> bool:
    n_left = len(left)
    exhaustive = n_left * (n_left - 1) // 2 if right is None else n_left * len(right)
    return settings.blocking == "lsh" or (
        settings.blocking == "auto" and exhaustive > EXHAUSTIVE_BELOW_COMPARISONS
    )


def _compare(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64] | None,
    threshold: float,
    settings: MatchSettings,
    seed: int,
    statistics: dict[str, float],
) -> CandidatePairs:
    if not _use_lsh(left, right, settings):
        if right is None:
            return candidate_pairs_within(
                left, threshold, workers=settings.workers, max_pairs=settings.max_candidate_pairs
            )
        return candidate_pairs(
            left, right, threshold, workers=settings.workers,
            max_pairs=settings.max_candidate_pairs,
        )  # fmt: skip
    index = BlockingIndex(
        left, right, settings=settings.blocking_settings, seed=seed, workers=settings.workers
    )
    plan = index.plan
    statistics["blocked_comparisons_planned"] = (
        statistics.get("blocked_comparisons_planned", 0) + plan.block_comparisons
    )
    statistics["oversized_blocks_skipped"] = (
        statistics.get("oversized_blocks_skipped", 0) + plan.oversized_blocks
    )
    statistics["oversized_block_comparisons_skipped"] = (
        statistics.get("oversized_block_comparisons_skipped", 0) + plan.oversized_comparisons
    )
    return index.candidate_pairs(threshold, max_pairs=settings.max_candidate_pairs)


def link(
    clks_by_party: Mapping[str, npt.NDArray[np.uint64]],
    settings: MatchSettings,
    *,
    progress: ProgressCallback | None = None,
    executor: DaskExecutor | None = None,
    layout: ClkLayout | None = None,
) -> LinkResult:
    """Link every party's CLKs into clusters: at most one record per party per cluster, or,
    for the parties in ``settings.deduplicated``, several (clustered against chaining).

    ``executor``: run the compare stage on a Dask cluster (``linkage_unit/distributed.py``);
    None compares in this process. The link structure is the same either way.
    ``layout``: which words of a record are which field group (None: one record-level CLK);
    the CLKs must be exactly that wide."""
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
    if layout is not None and widths - {layout.total_words}:
        raise MatchingError("the CLKs are not as wide as the project's layout says")
    sizes = [len(array) for array in arrays]
    seed = settings.blocking_seed if settings.blocking_seed is not None else secrets.randbits(128)

    if settings.threshold is not None:
        choice = ThresholdChoice(threshold=settings.threshold, method="operator")
    else:
        if progress is not None:
            progress("threshold", 0, 1)
        choice = _choose_threshold(arrays, settings, seed, deduplicated)
    threshold = choice.threshold
    # A deduplicated party's own pairs are cut where a deduplication-only run of its extract
    # alone would cut them, so which of its records share a link key depends on nothing
    # another party uploads (clustering.py: no membership oracle through one's own keys).
    own_threshold = {
        i: threshold
        if settings.threshold is not None or len(parties) == 1
        else _choose_threshold([arrays[i]], settings, seed, [True]).threshold
        for i in range(len(parties))
        if deduplicated[i]
    }

    def cut(i: int, j: int) -> float:
        return own_threshold[i] if i == j else threshold

    jobs: list[tuple[int, int]] = [
        (i, j) for i in range(len(parties)) for j in range(i + 1, len(parties))
    ]
    jobs += [(i, i) for i in range(len(parties)) if deduplicated[i]]
    statistics: dict[str, float] = {}
    party_pairs: list[PartyPairs] = []
    if executor is None:
        if progress is not None:
            progress("block and compare", 0, len(jobs))
        for done, (i, j) in enumerate(jobs, start=1):
            pairs = _compare(
                arrays[i], None if i == j else arrays[j], cut(i, j), settings, seed, statistics
            )
            party_pairs.append(PartyPairs(left_party=i, right_party=j, pairs=pairs))
            if progress is not None:
                progress("block and compare", done, len(jobs))
    else:
        with executor.session() as session:
            for number, (i, j) in enumerate(jobs, start=1):
                right = None if i == j else arrays[j]
                pairs = compare_on_cluster(
                    session,
                    arrays[i],
                    right,
                    cut(i, j),
                    use_lsh=_use_lsh(arrays[i], right, settings),
                    blocking=settings.blocking_settings,
                    seed=seed,
                    max_pairs=settings.max_candidate_pairs,
                    statistics=statistics,
                    progress=progress,
                    stage=f"compare on Dask (party pair {number} of {len(jobs)})",
                )
                party_pairs.append(PartyPairs(left_party=i, right_party=j, pairs=pairs))
                # Workers keep a party's CLKs only while a later party pair needs them.
                later = {party for job in jobs[number:] for party in job}
                for party in {i, j} - later:
                    session.forget(arrays[party])
    comparisons = sum(item.pairs.comparisons for item in party_pairs)
    candidate_count = sum(len(item.pairs) for item in party_pairs)
    if candidate_count > settings.max_candidate_pairs:
        raise MatchingError(
            f"more than {settings.max_candidate_pairs} candidate pairs in total at threshold "
            f"{threshold}: raise the threshold or the candidate-pair limit"
        )
    if progress is not None:
        progress("solve", 0, 1)
    if settings.deduplicated:
        solution = cluster_records(
            [
                PartyRecords(
                    name=party, size=size, deduplicated=flag, own_threshold=own_threshold.get(i)
                )
                for i, (party, size, flag) in enumerate(
                    zip(parties, sizes, deduplicated, strict=True)
                )
            ],
            party_pairs,
            ClusterSettings(threshold=threshold, max_cluster_size=settings.max_cluster_size),
        )
    else:
        solution = solve_linkage(sizes, party_pairs)
    if progress is not None:
        progress("solve", 1, 1)
    clusters = dict(zip(parties, solution.clusters, strict=True))
    all_ids = np.concatenate(solution.clusters) if sum(sizes) else np.empty(0, np.int64)
    cluster_sizes = np.bincount(all_ids, minlength=solution.cluster_count)
    linked = int((cluster_sizes[all_ids] > 1).sum()) if len(all_ids) else 0
    statistics["candidate_pairs"] = candidate_count
    statistics["accepted_pairs"] = solution.accepted_pairs
    statistics["largest_cluster"] = int(cluster_sizes.max()) if len(cluster_sizes) else 0
    for i, own in own_threshold.items():
        statistics[f"own_threshold:{parties[i]}"] = own
    if choice.non_match_mode is not None and choice.match_mode is not None:
        statistics["threshold_non_match_mode"] = choice.non_match_mode
        statistics["threshold_match_mode"] = choice.match_mode
    return LinkResult(
        clusters=clusters,
        threshold=threshold,
        cluster_count=solution.cluster_count,
        linked_record_count=linked,
        comparisons=comparisons,
        statistics=statistics,
        threshold_method=choice.method,
        candidate_pair_count=candidate_count,
    )

"""Match-quality report (after solving): the aggregates an operator sees of a finished run.

A run keeps, at run time, only aggregates: a histogram of its candidate pairs' match weights
with the model's fitted match / non-match split of every bin, the model's expected precision,
recall and F1 against the probability cut, and per-party match rates, and for a grouped encoding each party's field-group completeness
(records with a group present). No CLK, record position
or per-record figure is in it, so the report can be stored and shown after the run.

The fitted curves are the model's own: each candidate pair counts ``p`` towards the match
curve and ``1 - p`` towards the non-match curve of its bin, ``p`` its match probability.
The threshold curve counts, at a cut ``c``, the expected true links ``sum p`` and false links
``sum (1 - p)`` of the pairs with ``p >= c``; the expected matches are ``sum p`` over every
candidate pair plus the missed matches the run's estimate already counts beyond the
candidates. It ignores the one-to-one solver (which only removes pairs), so it is an
approximation away from the run's own cut; at the run's cut the run's own estimate is given.
A Dice run (one record-level CLK) has no model. With the automatic (null-model) threshold
its estimates are the null model's, read off the run's sampled best and second-best scores
(``linkage_unit/threshold.py``), and its curve is over Dice thresholds, not probabilities.
With an operator's threshold or the valley method nothing is estimated, and nothing is guessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import numpy.typing as npt

from linkage_unit.fellegi_sunter import probability_of_weight
from linkage_unit.matching import LinkResult
from protocol.clk_layout import ClkLayout
from protocol.errors import InvariantError

__all__ = [
    "GroupCompleteness",
    "PartyRate",
    "ReportHistogram",
    "RunReport",
    "ThresholdPoint",
    "build_report",
]

HISTOGRAM_BINS = 40
CURVE_CUTS = tuple(round(0.05 * step, 2) for step in range(1, 20))
"""Probability cuts of the threshold curve: 0.05, 0.10, ..., 0.95."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportHistogram:
    """Candidate pairs per match-weight bin (``edges`` has one more entry than ``counts``),
    with the model's expected matches and non-matches per bin."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    expected_matches: tuple[float, ...]
    expected_non_matches: tuple[float, ...]

    def __post_init__(self) -> None:
        bins = len(self.counts)
        if len(self.edges) != bins + 1 or not (
            len(self.expected_matches) == len(self.expected_non_matches) == bins
        ):
            raise InvariantError("a report histogram needs one more edge than bins")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdPoint:
    """The model's expected precision, recall and F1 of links at a probability cut."""

    cut: float
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyRate:
    """How many of a party's records were linked to at least one other record."""

    party: str
    records: int
    linked_records: int

    @property
    def match_rate(self) -> float:
        return self.linked_records / self.records if self.records else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCompleteness:
    """How many of a party's records have any bit set in a field group of a grouped (v2)
    encoding: a group whose fields were all missing is encoded with no bits."""

    party: str
    group: str
    records: int
    present: int


def group_completeness(
    clks_by_party: Mapping[str, npt.NDArray[np.uint64]], layout: ClkLayout | None
) -> tuple[GroupCompleteness, ...]:
    """Per party and field group, the records with the group present (none without a
    layout: one record-level CLK does not say which field is missing)."""
    if layout is None:
        return ()
    out = []
    for party, clks in clks_by_party.items():
        start = 0
        for group in layout.groups:
            words = group.bits // 64
            block = clks[:, start : start + words] if len(clks) else np.empty((0, words))
            present = int(np.any(block != 0, axis=1).sum()) if len(clks) else 0
            out.append(
                GroupCompleteness(party=party, group=group.name, records=len(clks), present=present)
            )
            start += words
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """A finished run's report (aggregates only; module docstring)."""

    scoring: str
    threshold: float
    threshold_method: str
    estimated_precision: float | None
    estimated_recall: float | None
    estimated_f1: float | None
    candidate_pairs: int
    accepted_pairs: int
    cluster_count: int
    linked_record_count: int
    parties: tuple[PartyRate, ...]
    histogram: ReportHistogram | None = None
    threshold_curve: tuple[ThresholdPoint, ...] = ()
    completeness: tuple[GroupCompleteness, ...] = ()
    record_threshold: float | None = None
    """The record-level Dice cut candidate pairs were found at (a Dice run's threshold, or a
    model run's candidate cut)."""
    comparisons: int = 0
    lsh_shapes: tuple[tuple[int, int], ...] = ()
    """(bands, bits per band) of each party pair blocked with LSH, in job order."""
    group_lsh_thresholds: tuple[float, ...] = ()
    """With group blocking (``group_blocking.py``): the record-level Dice each party pair's
    LSH part was fitted to, in job order (its shape is in ``lsh_shapes``)."""
    group_recall_estimates: tuple[float, ...] = ()
    """With group blocking: each checked party pair's blocking recall on a sample, taken
    before the join was used or set aside (``group_blocking.falls_back``)."""
    oversized_group_blocks: int = 0
    oversized_group_block_pairs: int = 0
    """Group blocks skipped as larger than ``max_group_block_pairs``, and their pairs."""
    join_weights: tuple[float, ...] = ()
    join_cut: float | None = None
    """Where group blocking's join was used: the rule it judged its pairs by instead of
    ``record_threshold`` (``group_blocking.JoinRule``: each group's weight, and the cut)."""
    untrusted_models: tuple[str, ...] = ()
    """The parties (``moj``, ``moj+dfe``; ``spine`` for new-vs-spine pairs) whose model was
    not trusted (``FellegiSunterModel.trusted``) and so linked nothing: a low match rate there
    is the model's failure, not the data's. Operator-only, like the whole report."""

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["parties"] = [{**asdict(rate), "match_rate": rate.match_rate} for rate in self.parties]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RunReport:
        data = json.loads(text)
        histogram = data.get("histogram")
        return cls(
            scoring=str(data["scoring"]),
            threshold=float(data["threshold"]),
            threshold_method=str(data["threshold_method"]),
            estimated_precision=_optional(data.get("estimated_precision")),
            estimated_recall=_optional(data.get("estimated_recall")),
            estimated_f1=_optional(data.get("estimated_f1")),
            candidate_pairs=int(data["candidate_pairs"]),
            accepted_pairs=int(data["accepted_pairs"]),
            cluster_count=int(data["cluster_count"]),
            linked_record_count=int(data["linked_record_count"]),
            parties=tuple(
                PartyRate(
                    party=str(item["party"]),
                    records=int(item["records"]),
                    linked_records=int(item["linked_records"]),
                )
                for item in data["parties"]
            ),
            histogram=None
            if histogram is None
            else ReportHistogram(
                edges=tuple(float(value) for value in histogram["edges"]),
                counts=tuple(int(value) for value in histogram["counts"]),
                expected_matches=tuple(float(v) for v in histogram["expected_matches"]),
                expected_non_matches=tuple(float(v) for v in histogram["expected_non_matches"]),
            ),
            threshold_curve=tuple(
                ThresholdPoint(
                    cut=float(item["cut"]),
                    precision=float(item["precision"]),
                    recall=float(item["recall"]),
                    f1=float(item["f1"]),
                )
                for item in data.get("threshold_curve", ())
            ),
            completeness=tuple(
                GroupCompleteness(
                    party=str(item["party"]),
                    group=str(item["group"]),
                    records=int(item["records"]),
                    present=int(item["present"]),
                )
                for item in data.get("completeness", ())
            ),
            record_threshold=_optional(data.get("record_threshold")),
            comparisons=int(data.get("comparisons", 0)),
            lsh_shapes=tuple((int(bands), int(bits)) for bands, bits in data.get("lsh_shapes", ())),
            group_lsh_thresholds=tuple(
                float(value) for value in data.get("group_lsh_thresholds", ())
            ),
            group_recall_estimates=tuple(
                float(value) for value in data.get("group_recall_estimates", ())
            ),
            oversized_group_blocks=int(data.get("oversized_group_blocks", 0)),
            oversized_group_block_pairs=int(data.get("oversized_group_block_pairs", 0)),
            join_weights=tuple(float(value) for value in data.get("join_weights", ())),
            join_cut=_optional(data.get("join_cut")),
            untrusted_models=tuple(str(party) for party in data.get("untrusted_models", ())),
        )


def _optional(value: object) -> float | None:
    return None if value is None else float(str(value))


def party_rates(clusters: Mapping[str, npt.NDArray[np.int64]]) -> tuple[PartyRate, ...]:
    """Each party's records in a cluster of two or more (across or within parties)."""
    arrays = list(clusters.values())
    if not arrays or not sum(len(ids) for ids in arrays):
        return tuple(PartyRate(party=p, records=0, linked_records=0) for p in clusters)
    all_ids = np.concatenate(arrays)
    sizes = np.bincount(all_ids)
    return tuple(
        PartyRate(
            party=party,
            records=len(ids),
            linked_records=int((sizes[ids] > 1).sum()) if len(ids) else 0,
        )
        for party, ids in clusters.items()
    )


def threshold_curve(
    probabilities: npt.NDArray[np.float64],
    missed_beyond_candidates: float,
    cuts: Sequence[float] = CURVE_CUTS,
) -> tuple[ThresholdPoint, ...]:
    """Expected precision, recall and F1 of keeping the pairs with probability >= each cut
    (module docstring). ``missed_beyond_candidates``: expected matches no candidate holds."""
    total_matches = float(probabilities.sum()) + max(missed_beyond_candidates, 0.0)
    points = []
    for cut in cuts:
        kept = probabilities[probabilities >= cut]
        true_links = float(kept.sum())
        false_links = float(len(kept)) - true_links
        precision = true_links / (true_links + false_links) if len(kept) else 1.0
        recall = true_links / total_matches if total_matches > 0 else 1.0
        denominator = 2 * true_links + false_links + (total_matches - true_links)
        f1 = 2 * true_links / denominator if denominator > 0 else 1.0
        points.append(ThresholdPoint(cut=cut, precision=precision, recall=recall, f1=f1))
    return tuple(points)


def threshold_curve_reference(
    probabilities: Sequence[float],
    missed_beyond_candidates: float,
    cuts: Sequence[float] = CURVE_CUTS,
) -> tuple[ThresholdPoint, ...]:
    """The slow obvious twin of :func:`threshold_curve`: a loop over pairs per cut."""
    total = sum(probabilities) + max(missed_beyond_candidates, 0.0)
    points = []
    for cut in cuts:
        true_links = 0.0
        false_links = 0.0
        for probability in probabilities:
            if probability >= cut:
                true_links += probability
                false_links += 1.0 - probability
        made = true_links + false_links
        precision = true_links / made if made > 0 else 1.0
        recall = true_links / total if total > 0 else 1.0
        missed = total - true_links
        denominator = 2 * true_links + false_links + missed
        f1 = 2 * true_links / denominator if denominator > 0 else 1.0
        points.append(ThresholdPoint(cut=cut, precision=precision, recall=recall, f1=f1))
    return tuple(points)


def build_report(
    result: LinkResult,
    clks_by_party: Mapping[str, npt.NDArray[np.uint64]] | None = None,
    layout: ClkLayout | None = None,
) -> RunReport:
    """The report of a run's link result (aggregates only); with the run's CLKs and a grouped
    layout, each party's field-group completeness too."""
    statistics = result.statistics
    estimated = statistics.estimated
    cut = statistics.candidate_cut
    joined = bool(statistics.compare.group_lsh_thresholds)  # some party pair used the join
    rule = cut.join_rule if cut is not None and joined else None
    dice = RunReport(
        scoring="dice",
        threshold=result.threshold,
        threshold_method=result.threshold_method,
        estimated_precision=None,
        estimated_recall=None,
        estimated_f1=None,
        candidate_pairs=statistics.candidate_pairs,
        accepted_pairs=statistics.accepted_pairs,
        cluster_count=result.cluster_count,
        linked_record_count=result.linked_record_count,
        parties=party_rates(result.clusters),
        completeness=group_completeness(clks_by_party or {}, layout),
        record_threshold=result.threshold
        if statistics.candidate_cut is None
        else statistics.candidate_cut.threshold,
        comparisons=statistics.compare.comparisons,
        lsh_shapes=statistics.compare.lsh_shapes,
        group_lsh_thresholds=statistics.compare.group_lsh_thresholds,
        group_recall_estimates=statistics.compare.group_recall_estimates,
        oversized_group_blocks=statistics.compare.oversized_group_blocks,
        oversized_group_block_pairs=statistics.compare.oversized_group_block_pairs,
        join_weights=() if rule is None else rule.weights,
        join_cut=None if rule is None else rule.cut,
        untrusted_models=statistics.untrusted_models,
    )
    if estimated is None:
        return dice
    if result.scored is None:
        # Dice scoring: the null model's estimate at the threshold used and at every Dice
        # threshold it searched (the curve's cut is a Dice threshold here).
        return replace(
            dice,
            estimated_precision=estimated.precision,
            estimated_recall=estimated.recall,
            estimated_f1=estimated.f1,
            threshold_curve=tuple(
                ThresholdPoint(
                    cut=point.threshold,
                    precision=point.estimated.precision,
                    recall=point.estimated.recall,
                    f1=point.estimated.f1,
                )
                for point in statistics.dice_curve
            ),
        )
    weights = [item.pairs.scores.astype(np.float64) for item in result.scored.party_pairs]
    all_weights = np.concatenate(weights) if weights else np.empty(0)
    probabilities = probability_of_weight(all_weights) if len(all_weights) else np.empty(0)
    histogram = None
    if len(all_weights):
        low, high = float(all_weights.min()), float(all_weights.max())
        if high <= low:
            high = low + 1.0
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
        counts, _ = np.histogram(all_weights, bins=edges)
        matches, _ = np.histogram(all_weights, bins=edges, weights=probabilities)
        histogram = ReportHistogram(
            edges=tuple(float(edge) for edge in edges),
            counts=tuple(int(count) for count in counts),
            expected_matches=tuple(float(value) for value in matches),
            expected_non_matches=tuple(
                float(count - match) for count, match in zip(counts, matches, strict=True)
            ),
        )
    # Matches the estimate counts as missed but no candidate pair carries (below the
    # candidate Dice cut): the estimate's missed matches less those among the candidates.
    kept = probabilities[probabilities >= result.scored.match_probability]
    candidate_missed = float(probabilities.sum() - kept.sum())
    beyond = estimated.expected_missed_matches - candidate_missed
    return replace(
        dice,
        scoring="fellegi-sunter",
        estimated_precision=estimated.precision,
        estimated_recall=estimated.recall,
        estimated_f1=estimated.f1,
        histogram=histogram,
        threshold_curve=threshold_curve(probabilities, beyond),
    )

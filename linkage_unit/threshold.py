"""Threshold: choosing the Dice threshold from a run's own scores when the operator set none
(a step before compare; no ground truth is used).

Method ("valley"): take each sampled record's best Dice score against the other party. A
record with a true match has a high best score (the match mode, typically 0.85-1.0); one
without has the best of many random pairs (the non-match mode, lower). Histogram the best
scores in 0.01 bins on a log scale (the match mode may hold only a few per cent of records),
smooth it, find the two most prominent peaks, and put the threshold at the centre of the
lowest stretch between them; when the upper one is the spike of exact copies at 1.0, the
valley below the tallest peak between them (the match mode proper).

Method ("null-model"), used when the second-best scores are available (two or more
parties): a record's second-best score is the best of its non-matches (at most one record per
party is the same person), so the second-best scores of the sampled records are a sample of
the "best non-match" distribution. From them and the best scores, for each candidate
threshold ``t``, estimate

* unmatched records ``U``: records whose best score lies below the null sample's median,
  doubled (a true match almost never scores below the median best non-match); at least 1 %
  of the sample, so a run that looks fully matched still pays for false positives;
* matched records found, ``TP(t) = #(best >= t) - U * P(null >= t)``, and the matched
  records in all, ``M = max over t of TP(t)`` (below the matches the excess over the null
  stops growing; this is steadier than ``n - U``, whose small error would swamp ``FN``);
* false positives ``FP(t) = U * P(null >= t) * U / n``: an unmatched record whose best
  non-match is at least ``t``, whose partner is itself unmatched (a matched partner is taken
  first by its own, higher-scoring, match in the one-to-one solve). When a party is
  deduplicated (``one_to_one=False``) nothing takes the partner first, since a cluster may
  hold several of that party's records: ``FP(t) = U * P(null >= t)``;
* false negatives ``FN(t) = M - TP(t)``;

and take the ``t`` (0.005 steps) that maximises the estimated F1 ``2TP / (2TP + FP + FN)``.
This is the Fellegi-Sunter decision rule with both distributions read off the run itself:
no ground truth, no labelled pairs.

Fallback ("default"): if there are too few scores or no valley at least ``min_depth`` below
the smaller peak (one mode only: every record matches, or none does), use
``DEFAULT_THRESHOLD``. The chosen value is clamped to [MIN_THRESHOLD, MAX_THRESHOLD] so a
stray valley cannot make a run link everything or nothing; a value on either end is reported
as such (``null-model-at-floor``, ``valley-at-ceiling``), never as a normal choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from linkage_unit.estimated_quality import EstimatedQuality
from protocol.errors import InvariantError, MatchingError

__all__ = [
    "DEFAULT_THRESHOLD",
    "MAX_THRESHOLD",
    "MIN_THRESHOLD",
    "NullPoint",
    "SearchBoundary",
    "ThresholdChoice",
    "ThresholdMethod",
    "choose_threshold",
    "choose_threshold_with_null",
]

DEFAULT_THRESHOLD = 0.8
MIN_THRESHOLD = 0.5
MAX_THRESHOLD = 0.95
_BINS = 100
_MIN_SCORES = 50


class ThresholdMethod(StrEnum):
    """How a run's threshold was found. ``fellegi-sunter``: the operator's (or the default)
    posterior match probability of the model in ``fellegi_sunter.py``."""

    NULL_MODEL = "null-model"
    VALLEY = "valley"
    DEFAULT = "default"
    OPERATOR = "operator"
    FELLEGI_SUNTER = "fellegi-sunter"


class SearchBoundary(StrEnum):
    """A searched threshold that landed on an end of its search range: the data asked for a
    value outside it, so the value is a limit, not a choice."""

    FLOOR = "floor"
    CEILING = "ceiling"


@dataclass(frozen=True, slots=True, kw_only=True)
class NullPoint:
    """The null model's estimate at one Dice threshold, in shares of the sampled records:
    matched records linked (true links), unmatched ones linked to a free partner (false
    links) and matched ones left out (missed matches)."""

    threshold: float
    estimated: EstimatedQuality


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdChoice:
    """The threshold a run uses, how it was found, and whether a searched value sits on an end
    of its search range (``boundary``). ``curve``: with the null model, its estimate at every
    threshold searched (empty for the other methods, which estimate nothing)."""

    threshold: float
    method: ThresholdMethod
    boundary: SearchBoundary | None = None
    non_match_mode: float | None = None
    match_mode: float | None = None
    curve: tuple[NullPoint, ...] = ()

    def __post_init__(self) -> None:
        if not (0.0 < self.threshold <= 1.0):
            raise MatchingError("threshold must be in (0, 1]")
        try:
            object.__setattr__(self, "method", ThresholdMethod(self.method))
        except ValueError:
            choices = ", ".join(str(method) for method in ThresholdMethod)
            raise MatchingError(f"threshold method must be one of {choices}") from None

    def estimated_at(self, threshold: float) -> NullPoint | None:
        """The null model's point nearest ``threshold`` (None without a curve, or when the
        threshold lies outside the searched range: an operator's 0.3 is no point of it)."""
        if not self.curve:
            return None
        nearest = min(self.curve, key=lambda point: abs(point.threshold - threshold))
        return nearest if abs(nearest.threshold - threshold) <= _STEP / 2 + 1e-9 else None

    @property
    def label(self) -> str:
        """What status, logs and the audit log show: the method, and ``-at-floor`` or
        ``-at-ceiling`` when the value is a boundary of the search, never a normal choice."""
        if self.boundary is None:
            return str(self.method)
        return f"{self.method}-at-{self.boundary}"


def _boundary(value: float) -> SearchBoundary | None:
    if value <= MIN_THRESHOLD:
        return SearchBoundary.FLOOR
    if value >= MAX_THRESHOLD:
        return SearchBoundary.CEILING
    return None


def _smooth(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    kernel /= kernel.sum()
    return np.convolve(np.pad(values, 2, mode="edge"), kernel, mode="valid")


def _peaks(curve: npt.NDArray[np.float64]) -> list[int]:
    """Indices of local maxima (plateaus report their first index)."""
    found = []
    for index in range(len(curve)):
        left = curve[index - 1] if index > 0 else -np.inf
        right = curve[index + 1] if index + 1 < len(curve) else -np.inf
        if curve[index] > left and curve[index] >= right and curve[index] > 0:
            found.append(index)
    return found


def choose_threshold(best_scores: npt.ArrayLike, *, min_depth: float = 1.0) -> ThresholdChoice:
    """Threshold from the distribution of each record's best score (see module docstring).

    ``min_depth`` is in natural-log units of count: 1.0 means the valley floor holds at most
    about a third of the smaller peak.
    """
    scores = np.asarray(best_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < _MIN_SCORES:
        return ThresholdChoice(threshold=DEFAULT_THRESHOLD, method=ThresholdMethod.DEFAULT)
    counts, edges = np.histogram(np.clip(scores, 0.0, 1.0), bins=_BINS, range=(0.0, 1.0))
    curve = _smooth(np.log1p(counts.astype(np.float64)))
    peaks = _peaks(curve)
    if len(peaks) < 2:
        return ThresholdChoice(threshold=DEFAULT_THRESHOLD, method=ThresholdMethod.DEFAULT)
    # The two most prominent: the highest, then the best "peak minus valley to the highest".
    highest = max(peaks, key=lambda index: curve[index])
    best_pair: tuple[float, int, int] | None = None
    for other in peaks:
        if other == highest:
            continue
        low, high = sorted((highest, other))
        floor = curve[low : high + 1].min()
        depth = min(curve[low], curve[high]) - floor
        if best_pair is None or depth > best_pair[0]:
            best_pair = (depth, low, high)
    if best_pair is None:  # two peaks or more were found above, so a pair was too
        raise InvariantError("the valley search found no pair of peaks")
    depth, low, high = best_pair
    if depth < min_depth:
        return ThresholdChoice(threshold=DEFAULT_THRESHOLD, method=ThresholdMethod.DEFAULT)
    # Exact copies (score 1.0) make a spike in the top bin beside the match mode, and the dip
    # between the two can be lower than the valley below the match mode: against the spike,
    # the valley is sought below the tallest peak between (the match mode proper).
    middle = [index for index in peaks if low < index < high]
    if high == _BINS - 1 and middle:
        mode = max(middle, key=lambda index: curve[index])
        if min(curve[low], curve[mode]) - curve[low : mode + 1].min() >= min_depth / 2:
            high = mode
    stretch = curve[low : high + 1]
    floor_positions = np.flatnonzero(stretch <= stretch.min() + 1e-9) + low
    centre = (floor_positions[0] + floor_positions[-1] + 1) / 2.0
    value = float(edges[0] + centre * (edges[1] - edges[0]))
    value = float(np.clip(round(value, 3), MIN_THRESHOLD, MAX_THRESHOLD))
    width = edges[1] - edges[0]
    return ThresholdChoice(
        threshold=value,
        method=ThresholdMethod.VALLEY,
        boundary=_boundary(value),
        non_match_mode=float(edges[low] + width / 2),
        match_mode=float(edges[high] + width / 2),
    )


_STEP = 0.005
_MIN_UNMATCHED_FRACTION = 0.002


def choose_threshold_with_null(
    best_scores: npt.ArrayLike, null_scores: npt.ArrayLike, *, one_to_one: bool = True
) -> ThresholdChoice:
    """Threshold maximising the F1 estimated from the best scores and a sample of best
    non-match scores (each record's second-best); see the module docstring.
    ``one_to_one=False``: the run clusters deduplicated parties (false links need no free
    partner)."""
    best = np.asarray(best_scores, dtype=np.float64)
    best = best[np.isfinite(best)]
    null = np.asarray(null_scores, dtype=np.float64)
    null = np.sort(null[np.isfinite(null)])
    if len(best) < _MIN_SCORES or len(null) < _MIN_SCORES:
        return choose_threshold(best)
    records = len(best)
    null_median = float(np.median(null))
    unmatched = 2.0 * float((best < null_median).sum())
    unmatched = float(np.clip(unmatched, _MIN_UNMATCHED_FRACTION * records, records))
    candidates = np.round(np.arange(MIN_THRESHOLD, MAX_THRESHOLD + _STEP / 2, _STEP), 3)
    sorted_best = np.sort(best)
    above = records - np.searchsorted(sorted_best, candidates - 1e-9, side="left")
    null_above = (len(null) - np.searchsorted(null, candidates - 1e-9, side="left")) / len(null)
    # Beyond the sample's top decile, never less than an exponential tail fitted to it (best
    # non-match scores are maxima, so their tail is about exponential): with fewer null
    # scores than unmatched records the sample's maximum is not the distribution's.
    decile = float(np.quantile(null, 0.9))
    excess = null[null > decile] - decile
    scale = max(float(excess.mean()) if len(excess) else 0.0, 1e-3)
    tail = 0.1 * np.exp(-(candidates - decile) / scale)
    null_above = np.where(candidates > decile, np.maximum(null_above, tail), null_above)
    # Matched records with a best score >= t: all best scores >= t, less the unmatched ones.
    true_positives = np.maximum(above - unmatched * null_above, 0.0)
    matched = float(true_positives.max())  # where the excess over the null stops growing
    # An unmatched record's best non-match only becomes a false positive if that partner is
    # free, i.e. not taken first by its own (higher-scoring) match: about U / n of them.
    false_positives = unmatched * null_above * (unmatched / records if one_to_one else 1.0)
    false_negatives = np.maximum(matched - true_positives, 0.0)
    denominator = 2 * true_positives + false_positives + false_negatives
    f1 = np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1e-12), 0.0)
    # Several thresholds can tie (the estimate sees no errors either way): take the one
    # farthest from any best score, the middle of the widest empty gap, so a run whose
    # sample differs a little (another party order) still makes the same links.
    # Within half an expected error of the best counts as a tie.
    tolerance = 0.5 / max(2.0 * matched, 1.0)
    top = candidates[f1 >= f1.max() - tolerance]
    slot = np.clip(np.searchsorted(sorted_best, top), 1, records - 1)
    distance = np.minimum(
        np.abs(top - sorted_best[slot - 1]),
        np.abs(sorted_best[np.minimum(slot, records - 1)] - top),
    )
    value = float(top[int(np.argmax(distance))])
    return ThresholdChoice(
        threshold=value,
        method=ThresholdMethod.NULL_MODEL,
        boundary=_boundary(value),
        non_match_mode=null_median,
        match_mode=float(np.median(best[best >= value])) if (best >= value).any() else None,
        curve=tuple(
            NullPoint(
                threshold=float(t),
                estimated=EstimatedQuality(
                    expected_true_links=float(tp) / records,
                    expected_false_links=float(fp) / records,
                    expected_missed_matches=float(fn) / records,
                ),
            )
            for t, tp, fp, fn in zip(
                candidates, true_positives, false_positives, false_negatives, strict=True
            )
        ),
    )

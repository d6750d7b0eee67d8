"""The graph-matching attack: re-identify encodings from their similarity structure alone.

Stage: privacy evaluation. In the style of Vidanage et al. (CIKM 2020): the linkage unit can
compute the Dice similarity of any two encodings, so it holds a similarity graph of the
encoded people; an attacker with a plaintext reference that shares people with the file (and
the schema, which is not secret) builds the same graph for the reference and aligns the two.
Nothing here looks at individual bits, so hardening that keeps similarities (balancing,
permutations, salting, diffusion that preserves Dice) does not stop it; only a loss of
similarity structure, or a reference that shares few people, does.

The attacker's plaintext similarity is the *expected* Dice of two reference records under the
schema: it encodes the reference under ``shadows`` keys of its own (the recipe is public,
only the key is secret) and averages. Averaging removes most of the hash-collision noise, so
one side of the comparison is nearly exact.

* **seeded** (an insider who knows some (encoding, plaintext) pairs): every record's
  fingerprint is its Dice to each seed, per field group; fingerprints are compared (columns
  standardised per side), matched one-to-one greedily, and the most confident matches become
  new seeds for the next round (percolation);
* **keyless**: node features from each side's own similarity graph (weight, mean similarity,
  quantiles, the best neighbours' similarities, degrees at several thresholds, the
  neighbours' mean similarity), matched the same way; its most confident matches seed the
  percolation above.

A match is claimed when its distance is an outlier for its row (standardised distance below
an Otsu split of all assigned pairs'), so precision is that of what the attacker would act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from bloomlink.attacks.results import AttackName, GraphMatchResult
from bloomlink.attacks.views import dice_matrix

__all__ = [
    "GraphMatchSettings",
    "GraphSides",
    "Matching",
    "greedy_assignment",
    "keyless_matching",
    "match_features",
    "otsu_threshold",
    "reference_greedy_assignment",
    "score_matching",
    "seeded_matching",
]

Bits = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphMatchSettings:
    """Knobs of both forms; the defaults re-identify most of a half-overlapping 3,000-record
    file with 50 seeds on today's default schema."""

    rounds: int = 4
    growth: float = 0.1
    keyless_pseudo_seeds: int = 100
    thresholds: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
    neighbours: int = 10

    def __post_init__(self) -> None:
        if self.rounds < 1 or not 0.0 <= self.growth <= 1.0 or self.keyless_pseudo_seeds < 1:
            raise ValueError("graph matching needs a round and at least one pseudo-seed")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class GraphSides:
    """Both graphs' raw material, per field group: the encodings' bits, and the reference's
    bits under each of the attacker's shadow keys."""

    target: tuple[Bits, ...]
    shadows: tuple[tuple[Bits, ...], ...]

    def __post_init__(self) -> None:
        if not self.shadows or any(len(shadow) != len(self.target) for shadow in self.shadows):
            raise ValueError("every shadow encoding needs the same groups as the target")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Matching:
    """A one-to-one assignment of target records to reference records; ``confidence`` is the
    standardised distance of each pair within its row (lower is surer)."""

    target: npt.NDArray[np.intp]
    reference: npt.NDArray[np.intp]
    confidence: npt.NDArray[np.float64]
    claimed: npt.NDArray[np.bool_]


@numba.njit(cache=True)
def _greedy(
    keys: npt.NDArray[np.uint64],
    columns: int,
    taken_row: npt.NDArray[np.bool_],
    taken_column: npt.NDArray[np.bool_],
    out: npt.NDArray[np.int64],
    remaining: int,
) -> int:
    """Take pairs in ``keys`` order (low 32 bits: flat index) while both ends are free;
    return how many assignments are still wanted."""
    for key in keys:
        if remaining == 0:
            break
        flat = np.int64(key & np.uint64(0xFFFFFFFF))
        row, column = flat // columns, flat % columns
        if taken_row[row] or taken_column[column]:
            continue
        taken_row[row] = True
        taken_column[column] = True
        out[row] = column
        remaining -= 1
    return remaining


def _order_keys(cost: npt.NDArray[np.float32]) -> npt.NDArray[np.uint64]:
    """One uint64 per finite cost that sorts as (cost, flat index): the float's bits made
    order-preserving as an unsigned integer, above the index."""
    flat = cost.ravel().astype(np.float32) + np.float32(0.0)  # -0.0 becomes +0.0
    index = np.flatnonzero(np.isfinite(flat))
    bits = flat[index].view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    keys: npt.NDArray[np.uint64] = (ordered << np.uint64(32)) | index.astype(np.uint64)
    return keys


def greedy_assignment(cost: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """One-to-one greedy assignment, cheapest pair first (ties by position): each row's
    column, or -1. Infinite costs are never assigned. Sorts only the cheapest pairs unless
    they run out before every row or column is taken."""
    rows, columns = cost.shape
    if rows * columns >= 2**32:
        raise ValueError("greedy assignment takes fewer than 2**32 pairs")
    out = np.full(rows, -1, dtype=np.int64)
    keys = _order_keys(cost)
    taken_row = np.zeros(rows, dtype=np.bool_)
    taken_column = np.zeros(columns, dtype=np.bool_)
    remaining = min(rows, columns)
    cheapest = min(len(keys), 32 * max(rows, columns))
    if 0 < cheapest < len(keys):
        keys = np.partition(keys, cheapest - 1)
        head, keys = np.sort(keys[:cheapest]), keys[cheapest:]
        remaining = _greedy(head, columns, taken_row, taken_column, out, remaining)
    if remaining and len(keys):
        _greedy(np.sort(keys), columns, taken_row, taken_column, out, remaining)
    return out


def reference_greedy_assignment(cost: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Slow, obvious twin of :func:`greedy_assignment`."""
    rows, columns = cost.shape
    pairs = sorted(
        (float(cost[row, column]), row * columns + column, row, column)
        for row in range(rows)
        for column in range(columns)
        if np.isfinite(cost[row, column])
    )
    out = np.full(rows, -1, dtype=np.int64)
    used: set[int] = set()
    for _, _, row, column in pairs:
        if out[row] < 0 and column not in used:
            out[row] = column
            used.add(column)
    return out


def otsu_threshold(values: npt.NDArray[np.float64], bins: int = 128) -> float:
    """The split of ``values`` that maximises the between-class variance (Otsu)."""
    if len(values) == 0:
        return 0.0
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    other = total - weight
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (total_mass * weight / total - mass) ** 2 / (weight * other)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _standardise(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    spread = features.std(axis=0)
    centred = features - features.mean(axis=0)
    return np.where(spread > 0, centred / np.where(spread > 0, spread, 1.0), 0.0).astype(np.float32)


def _distances(
    left: npt.NDArray[np.float32], right: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    squared = (left**2).sum(axis=1)[:, None] + (right**2).sum(axis=1)[None, :] - 2 * left @ right.T
    result: npt.NDArray[np.float32] = np.maximum(squared, 0.0).astype(np.float32)
    return result


def match_features(
    target_features: npt.NDArray[np.float32],
    reference_features: npt.NDArray[np.float32],
    known: npt.NDArray[np.intp],
) -> Matching:
    """Match rows of two feature tables one-to-one: standardise each table's columns, compare
    by Euclidean distance, assign greedily and mark the confident pairs as claimed. Rows and
    columns of the ``known`` pairs (``(k, 2)``) are left out."""
    distance = _distances(_standardise(target_features), _standardise(reference_features))
    if len(known):
        distance[known[:, 0], :] = np.inf
        distance[:, known[:, 1]] = np.inf
    assigned = greedy_assignment(distance)
    rows = np.flatnonzero(assigned >= 0)
    columns = assigned[rows]
    chosen = distance[rows, columns]
    others = distance[rows]
    others[np.arange(len(rows)), columns] = np.inf
    open_columns = np.ones(distance.shape[1], dtype=bool)
    open_columns[known[:, 1]] = False
    scale = np.median(distance[np.ix_(rows, np.flatnonzero(open_columns))], axis=1)
    # how much nearer the assigned reference is than the row's best alternative
    confidence = (chosen - others.min(axis=1)) / np.where(scale > 0, scale, 1.0)
    # a positive confidence (a row that lost its best reference to another) is never
    # claimed; clipping keeps those far-off values out of the split
    clipped = np.minimum(confidence, 0.0)
    claimed = (
        (confidence < 0) & (clipped <= otsu_threshold(clipped)) if len(rows) else np.zeros(0, bool)
    )
    return Matching(
        target=rows.astype(np.intp),
        reference=columns.astype(np.intp),
        confidence=confidence.astype(np.float64),
        claimed=claimed,
    )


def _seed_features(groups: Sequence[Bits], seeds: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
    """Each record's Dice to each seed, per group. A seed's similarity to itself (1) is set
    to its column's mean, so a wrong pseudo-seed cannot vouch for itself in the next round."""
    features = np.concatenate([dice_matrix(bits, bits[seeds]) for bits in groups], axis=1)
    columns = np.arange(len(seeds))
    for group in range(len(groups)):
        block = features[:, group * len(seeds) : (group + 1) * len(seeds)]
        block[seeds, columns] = np.nan
        block[seeds, columns] = np.nanmean(block, axis=0)[columns]
    return features


def _percolate(
    sides: GraphSides,
    groups: Sequence[int],
    known: npt.NDArray[np.intp],
    start: npt.NDArray[np.intp],
    settings: GraphMatchSettings,
) -> Matching:
    """Rounds of seeded matching; each round adds its surest claims to the seeds."""
    target = [sides.target[index] for index in groups]
    shadows = [[shadow[index] for index in groups] for shadow in sides.shadows]
    seeds = start
    matching = Matching(
        target=np.zeros(0, np.intp),
        reference=np.zeros(0, np.intp),
        confidence=np.zeros(0),
        claimed=np.zeros(0, bool),
    )
    for round_number in range(settings.rounds):
        target_features = _seed_features(target, seeds[:, 0])
        reference_features = np.mean(
            [_seed_features(shadow, seeds[:, 1]) for shadow in shadows], axis=0
        ).astype(np.float32)
        matching = match_features(target_features, reference_features, known)
        if round_number == settings.rounds - 1:
            break
        claimed = np.flatnonzero(matching.claimed)
        surest = claimed[np.argsort(matching.confidence[claimed], kind="stable")]
        size = min(len(sides.target[0]), len(sides.shadows[0][0]))
        surest = surest[: int(settings.growth * size * (round_number + 1))]
        grown = np.column_stack([matching.target[surest], matching.reference[surest]])
        seeds = np.concatenate([known, grown]).astype(np.intp) if len(known) else grown
        if len(seeds) == 0:
            break
    return matching


def seeded_matching(
    sides: GraphSides,
    groups: Sequence[int],
    seeds: npt.NDArray[np.intp],
    settings: GraphMatchSettings = GraphMatchSettings(),
) -> Matching:
    """Seeded graph matching on the field groups ``groups`` from known ``(target, reference)``
    pairs (``(k, 2)``)."""
    seeds = np.asarray(seeds, dtype=np.intp).reshape(-1, 2)
    return _percolate(sides, groups, seeds, seeds, settings)


def _node_features(
    groups: Sequence[Bits], thresholds: Sequence[float], neighbours: int
) -> npt.NDArray[np.float32]:
    """Per record: structural features of its own similarity graph (no cross-side identity)."""
    columns = []
    for bits in groups:
        similarity = dice_matrix(bits, bits)
        np.fill_diagonal(similarity, -1.0)
        ordered = np.sort(similarity, axis=1)[:, 1:]  # ascending, the record itself dropped
        others = ordered.shape[1]
        mean = ordered.mean(axis=1)
        quantiles = [
            ordered[:, min(others - 1, int(q * (others - 1)))] for q in (0.5, 0.9, 0.99, 0.999)
        ]
        best = ordered[:, ::-1][:, :neighbours]
        nearest = np.argpartition(-similarity, neighbours - 1, axis=1)[:, :neighbours]
        degrees = [(ordered >= t).mean(axis=1) for t in thresholds]
        columns.extend(
            [
                bits.sum(axis=1, keepdims=True),
                mean[:, None],
                np.stack(quantiles, axis=1),
                best,
                np.stack(degrees, axis=1),
                mean[nearest].mean(axis=1, keepdims=True),
            ]
        )
    return np.concatenate(columns, axis=1).astype(np.float32)


def keyless_matching(
    sides: GraphSides,
    groups: Sequence[int],
    settings: GraphMatchSettings = GraphMatchSettings(),
) -> Matching:
    """Keyless graph matching: align node features, then percolate from the surest matches."""
    target = [sides.target[index] for index in groups]
    target_features = _node_features(target, settings.thresholds, settings.neighbours)
    reference_features = np.mean(
        [
            _node_features(
                [shadow[index] for index in groups], settings.thresholds, settings.neighbours
            )
            for shadow in sides.shadows
        ],
        axis=0,
    ).astype(np.float32)
    first = match_features(target_features, reference_features, np.zeros((0, 2), np.intp))
    surest = np.argsort(first.confidence, kind="stable")[: settings.keyless_pseudo_seeds]
    start = np.column_stack([first.target[surest], first.reference[surest]]).astype(np.intp)
    return _percolate(sides, groups, np.zeros((0, 2), np.intp), start, settings)


def score_matching(
    matching: Matching,
    target_people: Sequence[object],
    reference_people: Sequence[object],
    *,
    seeds: npt.NDArray[np.intp],
    view: str,
    attack: AttackName,
) -> GraphMatchResult:
    """Correct claims among the overlapping people (the known seeds left out)."""
    seeds = np.asarray(seeds, dtype=np.intp).reshape(-1, 2)
    seeded_people = {target_people[row] for row in seeds[:, 0].tolist()}
    overlapping = (set(target_people) & set(reference_people)) - seeded_people
    claimed_rows = matching.target[matching.claimed]
    claimed_columns = matching.reference[matching.claimed]
    correct = sum(
        target_people[row] == reference_people[column]
        for row, column in zip(claimed_rows.tolist(), claimed_columns.tolist(), strict=True)
    )
    return GraphMatchResult(
        attack=attack,
        view=view,
        seeds=len(seeds),
        overlapping=len(overlapping),
        claimed=len(claimed_rows),
        correct=int(correct),
    )

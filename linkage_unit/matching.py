"""Matching: the linkage unit's one entry point from checked CLKs to a link structure.

Stages behind it: block -> compare (Dice) -> solve. The service calls :func:`link` and gets,
for every party, one cluster id per record position; link keys are issued per cluster
(``linkage_unit/link_keys.py``). Nothing here sees a secret or a raw value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from protocol.errors import MatchingError

__all__ = ["LinkResult", "MatchSettings", "link"]

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; counts only, never data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchSettings:
    """How a run matches. ``threshold=None`` means choose it from the run's own scores."""

    threshold: float | None = None
    blocking: str = "lsh"
    deduplicate: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None and not (0.0 < self.threshold <= 1.0):
            raise MatchingError("threshold must be in (0, 1], or unset for automatic")
        if self.blocking not in ("lsh", "none"):
            raise MatchingError("blocking must be 'lsh' or 'none'")


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


def _popcounts(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    return np.bitwise_count(clks).sum(axis=1, dtype=np.int64)


def _dice_matrix(
    left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64]
) -> npt.NDArray[np.float64]:
    """Exhaustive Dice, the slow obvious way (the stand-in until the engine lands)."""
    shared = np.bitwise_count(left[:, None, :] & right[None, :, :]).sum(axis=2, dtype=np.int64)
    total = _popcounts(left)[:, None] + _popcounts(right)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2.0 * shared / np.maximum(total, 1), 0.0)


def link(
    clks_by_party: Mapping[str, npt.NDArray[np.uint64]],
    settings: MatchSettings,
    *,
    progress: ProgressCallback | None = None,
) -> LinkResult:
    """Link every party's CLKs into clusters holding at most one record per party.

    Stand-in engine: exhaustive Dice between every pair of parties, then a greedy solve over
    all candidate pairs in descending score order (ties by party order and position).
    """
    parties = list(clks_by_party)
    threshold = settings.threshold if settings.threshold is not None else 0.8
    offsets: dict[str, int] = {}
    total = 0
    for party in parties:
        offsets[party] = total
        total += len(clks_by_party[party])
    candidates: list[tuple[float, int, int]] = []
    comparisons = 0
    for i, left_party in enumerate(parties):
        for right_party in parties[i + 1 :]:
            left, right = clks_by_party[left_party], clks_by_party[right_party]
            scores = _dice_matrix(np.asarray(left), np.asarray(right))
            comparisons += scores.size
            rows, cols = np.nonzero(scores >= threshold)
            for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
                candidates.append(
                    (float(scores[row, col]), offsets[left_party] + row, offsets[right_party] + col)
                )
            if progress:
                progress("compare", comparisons, comparisons)
    party_of = np.repeat(np.arange(len(parties)), [len(clks_by_party[p]) for p in parties])
    cluster = np.arange(total, dtype=np.int64)
    members: dict[int, set[int]] = {index: {int(party_of[index])} for index in range(total)}
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
    for _, a, b in candidates:
        root_a, root_b = cluster[a], cluster[b]
        if root_a == root_b or members[int(root_a)] & members[int(root_b)]:
            continue
        cluster[cluster == root_b] = root_a
        members[int(root_a)] |= members.pop(int(root_b))
    ids, dense = np.unique(cluster, return_inverse=True)
    clusters = {
        party: dense[offsets[party] : offsets[party] + len(clks_by_party[party])].astype(np.int64)
        for party in parties
    }
    sizes = np.bincount(dense)
    return LinkResult(
        clusters=clusters,
        threshold=threshold,
        cluster_count=len(ids),
        linked_record_count=int((sizes[dense] > 1).sum()),
        comparisons=comparisons,
    )

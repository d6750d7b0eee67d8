"""Link quality against the synthetic truth: what the demo and the benchmarks report.

Stage: evaluation (after the parties join their link keys). Only synthetic data has a truth,
so this lives with the generator. A pair is two records of different departments; it is
linked when both got the same link key and true when both belong to the same person.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LinkQuality", "link_quality"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkQuality:
    """Pairwise counts and rates of one linkage against the truth."""

    true_pairs: int
    linked_pairs: int
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.linked_pairs if self.linked_pairs else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.true_pairs if self.true_pairs else 0.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def _cross_pairs(
    label: Mapping[tuple[str, str], str], parties: tuple[str, ...]
) -> set[tuple[str, str, str, str]]:
    groups: dict[str, dict[str, list[str]]] = {}
    for (party, record), value in label.items():
        groups.setdefault(value, {}).setdefault(party, []).append(record)
    found: set[tuple[str, str, str, str]] = set()
    for members in groups.values():
        for left, right in itertools.combinations(parties, 2):
            for pair in itertools.product(members.get(left, []), members.get(right, [])):
                found.add((left, pair[0], right, pair[1]))
    return found


def link_quality(truth_path: Path | str, keys_paths: Mapping[str, Path | str]) -> LinkQuality:
    """Score joined link-key files (``own_record_id,link_key``, one per party) against
    ``truth.csv`` (``department,record_id,person_id``), over every pair of parties."""
    parties = tuple(sorted(keys_paths))
    person_of: dict[tuple[str, str], str] = {}
    with Path(truth_path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["department"] in keys_paths:
                person_of[(row["department"], row["record_id"])] = row["person_id"]
    key_of: dict[tuple[str, str], str] = {}
    for party, path in keys_paths.items():
        with Path(path).open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                key_of[(party, row["own_record_id"])] = row["link_key"]
    predicted = _cross_pairs(key_of, parties)
    actual = _cross_pairs(person_of, parties)
    return LinkQuality(
        true_pairs=len(actual), linked_pairs=len(predicted), correct=len(predicted & actual)
    )

"""Estimated quality: what a run expects of its links without ground truth (score stage).

Expected true links, false links and missed matches, and precision, recall and F1 from them:
the Fellegi-Sunter model's (``scoring.py``) or, for a Dice run, the null model's that chose
its threshold (``threshold.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EstimatedQuality"]


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

"""What an attack run reports: the attacks by name, and one result per attack and view.

Stage: privacy evaluation. Attribute attacks report a :class:`ValueScore` per scored value
and a few lines of what they recovered; graph matching reports re-identification figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bloomlink.attacks.attributes import ValueScore

__all__ = ["AttackName", "AttributeAttackResult", "GraphMatchResult"]


class AttackName(StrEnum):
    FREQUENCY = "frequency"
    PATTERN_MINING = "pattern mining"
    SIGNATURE_ORACLE = "signature (oracle)"
    SIGNATURE_INSIDER = "signature (insider)"
    GRAPH_KEYLESS = "graph matching (keyless)"
    GRAPH_SEEDED = "graph matching (seeded)"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributeAttackResult:
    """One attack on one view: the score of every scored attribute value."""

    attack: AttackName
    view: str
    scores: tuple[ValueScore, ...]
    findings: tuple[str, ...] = ()

    @property
    def best(self) -> ValueScore | None:
        return max(self.scores, key=lambda score: score.min_pr, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class GraphMatchResult:
    """A graph-matching run on one view: of the ``overlapping`` people in both the encodings
    and the plaintext reference (not counting the known seeds), ``correct`` were among the
    ``claimed`` matches."""

    attack: AttackName
    view: str
    seeds: int
    overlapping: int
    claimed: int
    correct: int

    @property
    def reidentified_share(self) -> float:
        return self.correct / self.overlapping if self.overlapping else 0.0

    @property
    def precision(self) -> float:
        return self.correct / self.claimed if self.claimed else 0.0

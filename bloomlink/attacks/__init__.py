"""Attacks we run on our own encodings: what a curious linkage unit could learn without the key.

Stage: privacy evaluation (benchmarks/attacks.py and the tests; never part of a linkage run).
The attacker holds the encodings (any layout: one record-level CLK or several field-group
CLKs), the schema, a public-style reference population, and for graph matching plaintext
records of some of the same people; never the key. One module per attack:

* :mod:`~bloomlink.attacks.frequency`: identical encodings ranked against value frequencies;
* :mod:`~bloomlink.attacks.patterns`: keyless pattern mining, mined bit sets aligned to
  plaintext tokens by frequency and co-occurrence;
* :mod:`~bloomlink.attacks.signatures`: the bit-correlation signature attack, each mined bit
  set read as a membership signature, labelled by the truth (oracle) or by known records;
* :mod:`~bloomlink.attacks.graph_matching`: re-identification from the similarity graph,
  keyless and seeded with known pairs;
* :mod:`~bloomlink.attacks.linear`: not an attack of its own but a view: a group's linear
  diffusion undone (its pre-diffusion Bloom filters recovered up to a permutation of
  positions), on which the attribute attacks run again.

:func:`assess` runs them all on each field group and on the whole record (and the attribute
attacks on each group whose diffusion it undid, and on the whole record with those undone);
docs/attacks.md says how each is scored and what it finds on the shipped default.
"""

from bloomlink.attacks.assessment import (
    AssessmentSettings,
    AttackReport,
    Reference,
    Truth,
    assess,
)
from bloomlink.attacks.attributes import Attribute, AttributeTable, ValueScore
from bloomlink.attacks.encoders import schema_encoder
from bloomlink.attacks.results import AttackName, AttributeAttackResult, GraphMatchResult
from bloomlink.attacks.views import WHOLE_RECORD, EncodedRecords, RowEncoder

__all__ = [
    "WHOLE_RECORD",
    "AssessmentSettings",
    "AttackName",
    "AttackReport",
    "Attribute",
    "AttributeAttackResult",
    "AttributeTable",
    "EncodedRecords",
    "GraphMatchResult",
    "Reference",
    "RowEncoder",
    "Truth",
    "ValueScore",
    "assess",
    "schema_encoder",
]

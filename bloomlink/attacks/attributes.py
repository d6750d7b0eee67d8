"""The attribute values an attack may disclose, and how a disclosure is scored.

Stage: privacy evaluation. Every attack ends in a claim "these records have value v of
attribute a" (a predicted label per record, or a set of records); it is scored against the
truth as precision (the share of the claimed records that have v) and recall (the share of
the records with v that were claimed). An attribute value counts as identified when both are
high: ``min(precision, recall)`` is the figure the benchmark reports.

Attributes come from the normalised values in schema order, found by field kind and name:
sex; birth day, month and year (a date field); postcode area (the leading letters of the
outward code); forename (first word) and surname (person-name fields named so, else the first
and second person-name fields).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from bloomlink.attacks.views import Row
from protocol.schema import LinkageSchema

__all__ = [
    "Attribute",
    "AttributeTable",
    "ValueScore",
    "attribute_labels",
    "best_scores",
    "score_predictions",
]


class Attribute(StrEnum):
    SEX = "sex"
    BIRTH_DAY = "birth_day"
    BIRTH_MONTH = "birth_month"
    BIRTH_YEAR = "birth_year"
    POSTCODE_AREA = "postcode_area"
    FORENAME = "forename"
    SURNAME = "surname"


# How many of the most common values are scored; None scores every value with support.
_TOP_VALUES: Mapping[Attribute, int | None] = {
    Attribute.SEX: None,
    Attribute.BIRTH_DAY: None,
    Attribute.BIRTH_MONTH: None,
    Attribute.BIRTH_YEAR: None,
    Attribute.POSTCODE_AREA: 10,
    Attribute.FORENAME: 5,
    Attribute.SURNAME: 5,
}
Labels = npt.NDArray[np.object_]
"""One label (str, or None when the value is missing or not claimed) per record."""


def _field_index(schema: LinkageSchema, kind: str, name: str | None, nth: int) -> int | None:
    if name is not None:
        for index, spec in enumerate(schema.fields):
            if spec.kind == kind and spec.name == name:
                return index
    of_kind = [index for index, spec in enumerate(schema.fields) if spec.kind == kind]
    return of_kind[nth] if len(of_kind) > nth else None


def _postcode_area(value: str) -> str | None:
    outward = value.split(" ", 1)[0]
    letters = ""
    for character in outward:
        if not character.isalpha():
            break
        letters += character
    return letters or None


def attribute_labels(
    schema: LinkageSchema, rows: Sequence[Row], *, fields: Sequence[str] | None = None
) -> dict[Attribute, Labels]:
    """Each attribute's label per row, for the attributes ``schema`` carries. With
    ``fields``, only attributes from those fields (the rest are left out)."""
    allowed = set(fields) if fields is not None else {spec.name for spec in schema.fields}
    date = _field_index(schema, "date", None, 0)
    sex = _field_index(schema, "sex", None, 0)
    postcode = _field_index(schema, "postcode", None, 0)
    forename = _field_index(schema, "person_name", "forename", 0)
    surname = _field_index(schema, "person_name", "surname", 1)
    if surname == forename:
        surname = None

    def column(index: int | None) -> list[str | None] | None:
        if index is None or schema.fields[index].name not in allowed:
            return None
        return [row[index] for row in rows]

    labels: dict[Attribute, Labels] = {}

    def put(attribute: Attribute, values: Sequence[str | None]) -> None:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        labels[attribute] = array

    if (values := column(sex)) is not None:
        put(Attribute.SEX, values)
    if (values := column(date)) is not None:
        parts = [value.split("-") if value else None for value in values]
        put(Attribute.BIRTH_DAY, [part[2] if part else None for part in parts])
        put(Attribute.BIRTH_MONTH, [part[1] if part else None for part in parts])
        put(Attribute.BIRTH_YEAR, [part[0] if part else None for part in parts])
    if (values := column(postcode)) is not None:
        put(Attribute.POSTCODE_AREA, [_postcode_area(value) if value else None for value in values])
    if (values := column(forename)) is not None:
        put(Attribute.FORENAME, [value.split(" ", 1)[0] if value else None for value in values])
    if (values := column(surname)) is not None:
        put(Attribute.SURNAME, values)
    return labels


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AttributeTable:
    """The truth for scoring: each attribute's label per encoded record, and which of its
    values are scored (those with at least ``min_support`` records; the most common few for
    names and postcode areas)."""

    labels: Mapping[Attribute, Labels]
    values: Mapping[Attribute, tuple[str, ...]]

    @classmethod
    def of(
        cls, schema: LinkageSchema, rows: Sequence[Row], *, min_support: int | None = None
    ) -> AttributeTable:
        labels = attribute_labels(schema, rows)
        support = min_support if min_support is not None else max(10, len(rows) // 200)
        values: dict[Attribute, tuple[str, ...]] = {}
        for attribute, column in labels.items():
            counts = Counter(value for value in column.tolist() if value is not None)
            ranked = [value for value, count in counts.most_common() if count >= support]
            top = _TOP_VALUES[attribute]
            values[attribute] = tuple(sorted(ranked[:top] if top is not None else ranked))
        return cls(labels=MappingProxyType(labels), values=MappingProxyType(values))

    @property
    def records(self) -> int:
        return len(next(iter(self.labels.values()))) if self.labels else 0

    def indicators(self) -> tuple[list[tuple[Attribute, str]], npt.NDArray[np.float32]]:
        """Every scored (attribute, value) and a ``(records, values)`` 0/1 matrix of who has it."""
        keys = [(attribute, value) for attribute, values in self.values.items() for value in values]
        matrix = np.zeros((self.records, len(keys)), dtype=np.float32)
        for column, (attribute, value) in enumerate(keys):
            matrix[:, column] = self.labels[attribute] == value
        return keys, matrix


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueScore:
    """How well an attack identified one attribute value."""

    attribute: Attribute
    value: str
    precision: float
    recall: float
    support: int
    claimed: int
    how: str = ""

    @property
    def min_pr(self) -> float:
        return min(self.precision, self.recall)


def score_predictions(
    table: AttributeTable, predicted: Mapping[Attribute, Labels], how: str = ""
) -> list[ValueScore]:
    """Scores of a per-record prediction (None = no claim) for every scored value."""
    scores = []
    for attribute, values in table.values.items():
        guess = predicted.get(attribute)
        truth = table.labels[attribute]
        for value in values:
            has = truth == value
            claimed = guess == value if guess is not None else np.zeros(len(truth), bool)
            hits = int((has & claimed).sum())
            scores.append(
                ValueScore(
                    attribute=attribute,
                    value=value,
                    precision=hits / int(claimed.sum()) if claimed.any() else 0.0,
                    recall=hits / int(has.sum()) if has.any() else 0.0,
                    support=int(has.sum()),
                    claimed=int(claimed.sum()),
                    how=how,
                )
            )
    return scores


def best_scores(scores: Sequence[ValueScore]) -> dict[Attribute, ValueScore]:
    """Each attribute's best-identified value (highest ``min(P, R)``)."""
    best: dict[Attribute, ValueScore] = {}
    for score in scores:
        if score.attribute not in best or score.min_pr > best[score.attribute].min_pr:
            best[score.attribute] = score
    return best

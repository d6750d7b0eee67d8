"""The frequency attack: identical encodings ranked against plaintext value frequencies.

Stage: privacy evaluation. The simplest form of Christen et al. (PAKDD 2017): identical
encodings of a view are grouped and ranked by size; each group gets the plaintext value (the
view's fields, projected from a reference population) of the same frequency rank. It works
when a view holds few fields, so many people share one encoding (a field-level Bloom filter,
or a field group holding only sex or a date); with several fields per encoding almost every
encoding is unique and it finds nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

from bloomlink.attacks.attributes import AttributeTable, attribute_labels, score_predictions
from bloomlink.attacks.results import AttackName, AttributeAttackResult
from bloomlink.attacks.views import EncodedRecords, Row
from protocol.schema import LinkageSchema

__all__ = ["frequency_attack", "frequency_guesses"]

EncodingT = TypeVar("EncodingT", bound=Hashable)
ValueT = TypeVar("ValueT", bound=Hashable)


def frequency_guesses(
    encodings: Sequence[EncodingT], reference: Sequence[ValueT], *, min_count: int = 1
) -> list[ValueT | None]:
    """Each encoding's guessed plaintext: the reference value whose frequency rank equals the
    rank of the encoding's group of identical encodings. Groups smaller than ``min_count``
    (and ranks past the reference's distinct values) get no guess."""
    groups = [(encoding, count) for encoding, count in Counter(encodings).most_common()]
    values = [value for value, _ in Counter(reference).most_common()]
    guess: dict[EncodingT, ValueT | None] = {}
    for rank, (encoding, count) in enumerate(groups):
        guess[encoding] = values[rank] if rank < len(values) and count >= min_count else None
    return [guess[encoding] for encoding in encodings]


def frequency_attack(
    records: EncodedRecords,
    schema: LinkageSchema,
    reference: Sequence[Row],
    table: AttributeTable,
    *,
    group_indices: Sequence[int],
    view: str,
    min_count: int = 2,
) -> AttributeAttackResult:
    """The frequency attack on the words of ``group_indices``: attribute values guessed from
    the reference rows (projected to those groups' fields) of equal frequency rank."""
    field_names = [spec.name for spec in schema.fields]
    fields = records.fields_of(group_indices, field_names)
    columns = [field_names.index(name) for name in fields]
    words = np.concatenate([records.group(index) for index in group_indices], axis=1)
    encodings = [row.tobytes() for row in words]
    projected = [tuple(row[column] for column in columns) for row in reference]
    guesses = frequency_guesses(encodings, projected, min_count=min_count)
    rows: list[Row] = []
    for guess in guesses:
        row: list[str | None] = [None] * len(field_names)
        if guess is not None:
            for column, value in zip(columns, guess, strict=True):
                row[column] = value
        rows.append(row)
    predicted = attribute_labels(schema, rows, fields=fields)
    scores = score_predictions(table, predicted, how="frequency rank")
    distinct = len(set(encodings))
    guessed = sum(guess is not None for guess in guesses)
    findings = (
        f"{distinct} distinct encodings among {len(encodings)} records; "
        f"{guessed} records in groups of {min_count} or more given a guess",
    )
    return AttributeAttackResult(
        attack=AttackName.FREQUENCY, view=view, scores=tuple(scores), findings=findings
    )

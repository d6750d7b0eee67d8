"""What the attacker analyses: the encodings a linkage unit holds, cut into bit views.

Stage: privacy evaluation (after encode, at the linkage unit). An encoded file is a
``(records, layout.total_words)`` uint64 array and its :class:`~protocol.clk_layout.ClkLayout`;
each field group is attacked on its own bits, and when there are several groups, the record
as a whole (every bit) is attacked too. Bits are unpacked to ``float32`` 0/1 matrices so
co-occurrence counts and Dice numerators are one BLAS product each (exact below 2**24).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from protocol.clk_layout import ClkLayout

__all__ = [
    "WHOLE_RECORD",
    "BitView",
    "EncodedRecords",
    "Row",
    "RowEncoder",
    "bit_matrix",
    "bit_views",
    "dice_matrix",
]

WHOLE_RECORD = "whole record"
"""The view name of every bit of a record, used when a layout has more than one group."""

Row = Sequence[str | None]
"""One record's normalised values, in schema field order (None for missing)."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EncodedRecords:
    """Encodings as the linkage unit holds them, plus which schema fields each group encodes.

    ``group_fields`` maps a group name to the schema field names in it: the schema is not
    secret (every party and the linkage unit hold it), so the attacker knows it too.
    """

    clks: npt.NDArray[np.uint64]
    layout: ClkLayout
    group_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clks.ndim != 2 or self.clks.shape[1] != self.layout.total_words:
            raise ValueError(
                f"encodings must be a (records, {self.layout.total_words}) uint64 array "
                "for their layout"
            )
        unknown = set(self.group_fields) - set(self.layout.names)
        if unknown:
            raise ValueError("group_fields names groups the layout does not have")
        object.__setattr__(self, "group_fields", MappingProxyType(dict(self.group_fields)))

    def __len__(self) -> int:
        return len(self.clks)

    def group(self, index: int) -> npt.NDArray[np.uint64]:
        start, stop = self.layout.word_range(index)
        return np.ascontiguousarray(self.clks[:, start:stop])

    def fields_of(self, group_indices: Sequence[int], all_fields: Sequence[str]) -> tuple[str, ...]:
        """The schema fields a set of groups encodes (all of them when not declared)."""
        names = [self.layout.groups[index].name for index in group_indices]
        if not all(name in self.group_fields for name in names):
            return tuple(all_fields)
        wanted = {item for name in names for item in self.group_fields[name]}
        return tuple(name for name in all_fields if name in wanted)


RowEncoder = Callable[[Sequence[Row], bytes], EncodedRecords]
"""Encodes normalised rows under a 32-byte key: the project's encoder for the real CLKs, and
the same recipe under the attacker's own keys for its shadow encodings of the reference."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class BitView:
    """Some of a record's bits: one field group, or the whole record (``groups`` all)."""

    name: str
    groups: tuple[int, ...]
    bits: npt.NDArray[np.float32]


def bit_matrix(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.float32]:
    """``(records, words)`` uint64 -> ``(records, 64 * words)`` 0/1 float32, bit i = CLK bit i."""
    raw = np.ascontiguousarray(clks, dtype="<u8").view(np.uint8)
    return np.unpackbits(raw, axis=1, bitorder="little").astype(np.float32)


def bit_views(records: EncodedRecords) -> tuple[BitView, ...]:
    """Each group's bits, then the whole record when the layout has more than one group."""
    groups = records.layout.groups
    views = [
        BitView(name=group.name, groups=(index,), bits=bit_matrix(records.group(index)))
        for index, group in enumerate(groups)
    ]
    if len(groups) > 1:
        views.append(
            BitView(
                name=WHOLE_RECORD,
                groups=tuple(range(len(groups))),
                bits=np.concatenate([view.bits for view in views], axis=1),
            )
        )
    return tuple(views)


def dice_matrix(
    left: npt.NDArray[np.float32], right: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Dice of every (left, right) pair of 0/1 bit rows; two empty rows score 0, as at the
    linkage unit."""
    shared = left @ right.T
    total = left.sum(axis=1)[:, None] + right.sum(axis=1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(total > 0, 2.0 * shared / total, 0.0)
    return scores.astype(np.float32)

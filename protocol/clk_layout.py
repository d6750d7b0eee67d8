"""The layout of one record's encoding: which bits hold which field group's CLK.

Shared by the encoder (which writes it), the encoded file (which carries it) and the linkage
unit (which compares group by group). A record's encoding is the concatenation of its groups'
CLKs, in the layout's order, each a whole number of 64-bit words, so group ``g`` of a record
read as little-endian uint64 words is the word slice :meth:`ClkLayout.word_range` gives.

A group with no value in a record (every field of it missing) is all zero bits: the linkage
unit can tell "missing" from "different" without learning any value. A single record-level
CLK (encoding v1) is the layout with one group, ``record``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from protocol.errors import ConfigurationError
from protocol.hardening import HARDENING_DESCRIPTOR_PATTERN, NO_HARDENING, parse_descriptor
from protocol.labels import check_label

__all__ = ["MAX_GROUPS", "RECORD_GROUP", "ClkLayout", "GroupLayout"]

MAX_GROUPS = 16
RECORD_GROUP = "record"
"""The one group of a single record-level CLK (encoding v1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLayout:
    """One field group's CLK: its label, length in bits (a multiple of 64, after hardening)
    and the canonical descriptor of the hardening applied to it."""

    name: str
    bits: int
    hardening: str = NO_HARDENING

    def __post_init__(self) -> None:
        check_label(self.name, what="field group name")
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not (64 <= self.bits <= 65536)
            or self.bits % 64
        ):
            raise ConfigurationError(
                "a field group's CLK must be a multiple of 64 bits between 64 and 65536"
            )
        if not isinstance(self.hardening, str) or not HARDENING_DESCRIPTOR_PATTERN.fullmatch(
            self.hardening
        ):
            raise ConfigurationError("a field group's hardening must be a hardening descriptor")
        parse_descriptor(self.hardening)  # canonical spelling only

    @property
    def words(self) -> int:
        return self.bits // 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ClkLayout:
    """The groups of a record's encoding, in order; their bits add up to :attr:`total_bits`."""

    groups: tuple[GroupLayout, ...]

    def __post_init__(self) -> None:
        if not (1 <= len(self.groups) <= MAX_GROUPS):
            raise ConfigurationError(f"an encoding has 1 to {MAX_GROUPS} field groups")
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise ConfigurationError("field group names must be distinct")

    @classmethod
    def single(cls, bits: int) -> ClkLayout:
        """A single record-level CLK of ``bits`` bits (encoding v1)."""
        return cls(groups=(GroupLayout(name=RECORD_GROUP, bits=bits),))

    @property
    def total_bits(self) -> int:
        return sum(group.bits for group in self.groups)

    @property
    def total_words(self) -> int:
        return self.total_bits // 64

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(group.name for group in self.groups)

    @property
    def geometry(self) -> tuple[tuple[str, int], ...]:
        """Names and lengths only: what comparing group by group needs."""
        return tuple((group.name, group.bits) for group in self.groups)

    def to_record(self) -> list[dict[str, Any]]:
        """Plain data for JSON (settings, manifests, storage): one object per group."""
        return [
            {"name": group.name, "bits": group.bits, "hardening": group.hardening}
            for group in self.groups
        ]

    @classmethod
    def from_record(cls, record: Sequence[Any]) -> ClkLayout:
        """The inverse of :meth:`to_record`; :class:`ConfigurationError` if malformed."""
        if not isinstance(record, list | tuple):
            raise ConfigurationError("a layout must be a list of groups")
        groups = []
        for item in record:
            if not isinstance(item, dict) or set(item) != {"name", "bits", "hardening"}:
                raise ConfigurationError("a layout group must have exactly name, bits, hardening")
            groups.append(
                GroupLayout(name=item["name"], bits=item["bits"], hardening=item["hardening"])
            )
        return cls(groups=tuple(groups))

    def canonical_json(self) -> str:
        """Compact sorted-key ASCII JSON of :meth:`to_record`."""
        return json.dumps(self.to_record(), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`canonical_json`: what the audit log records."""
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    def word_range(self, index: int) -> tuple[int, int]:
        """``(start, stop)`` word offsets of group ``index`` within a record."""
        start = sum(group.words for group in self.groups[:index])
        return start, start + self.groups[index].words

    def word_offsets(self) -> tuple[int, ...]:
        """Start word of every group, then the total: ``len(groups) + 1`` offsets."""
        offsets = [0]
        for group in self.groups:
            offsets.append(offsets[-1] + group.words)
        return tuple(offsets)

"""The one adapter between the encode recipe and the attacks: rows in, encodings out.

Stage: privacy evaluation. Attacks see an encoded file as a uint64 array plus its
:class:`~protocol.clk_layout.ClkLayout` and which schema fields each group encodes; the
attacker runs the same public recipe under keys of its own (shadow encodings). Encoding v1 is
one record-level CLK, a layout of one group holding every field. An encoder that knows its
grouped layout (``ClkEncoder.layout``, and the schema's ``group_index`` per field: encoding
v2) is read as such, so field groups need no change here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from bloomlink.attacks.views import EncodedRecords, Row, RowEncoder
from protocol.clk_layout import ClkLayout
from protocol.encoding import ClkEncoder
from protocol.schema import LinkageSchema
from protocol.secret import LinkageSecret

__all__ = ["encoded_layout", "group_fields", "schema_encoder"]


def encoded_layout(encoder: ClkEncoder) -> ClkLayout:
    """The layout of what ``encoder`` emits: its own when it has one (grouped encodings),
    else one record-level CLK of its encoded length."""
    layout = getattr(encoder, "layout", None)
    if isinstance(layout, ClkLayout):
        return layout
    return ClkLayout.single(encoder.encoded_bits)


def group_fields(schema: LinkageSchema, layout: ClkLayout) -> Mapping[str, tuple[str, ...]]:
    """Each group's schema fields: by the schema's ``group_index`` where it has one, else
    every field in the one group."""
    names = [spec.name for spec in schema.fields]
    index_of: Callable[[int], int] | None = getattr(schema, "group_index", None)
    if index_of is None or len(layout.groups) == 1:
        return {layout.groups[0].name: tuple(names)}
    out: dict[str, list[str]] = {group.name: [] for group in layout.groups}
    for position, name in enumerate(names):
        out[layout.groups[index_of(position)].name].append(name)
    return {group: tuple(fields) for group, fields in out.items()}


def schema_encoder(schema: LinkageSchema, *, project_id: str) -> RowEncoder:
    """Encodes normalised rows under ``schema`` with a given 32-byte key (the project's, or an
    attacker's own for shadow encodings)."""

    def encode(rows: Sequence[Row], key: bytes) -> EncodedRecords:
        encoder = ClkEncoder(schema, LinkageSecret(key), project_id=project_id)
        clks = encoder.encode_many(rows)
        layout = encoded_layout(encoder)
        return EncodedRecords(clks=clks, layout=layout, group_fields=group_fields(schema, layout))

    return encode

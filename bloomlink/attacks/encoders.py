"""The one adapter between the encode recipe and the attacks: rows in, encodings out.

Stage: privacy evaluation. Attacks see an encoded file as a uint64 array plus its
:class:`~protocol.clk_layout.ClkLayout`, and the attacker runs the same public recipe under
keys of its own (shadow encodings). Encoding v1 is one record-level CLK, the layout of one
group holding every field; when the encoder returns several field groups, only this module
changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from bloomlink.attacks.views import EncodedRecords, Row, RowEncoder
from protocol.clk_layout import RECORD_GROUP, ClkLayout
from protocol.encoding import ClkEncoder
from protocol.schema import LinkageSchema
from protocol.secret import LinkageSecret

__all__ = ["schema_encoder"]


def schema_encoder(schema: LinkageSchema, *, project_id: str) -> RowEncoder:
    """Encodes normalised rows under ``schema`` with a given 32-byte key (the project's, or an
    attacker's own for shadow encodings)."""
    fields = tuple(spec.name for spec in schema.fields)

    def encode(rows: Sequence[Row], key: bytes) -> EncodedRecords:
        encoder = ClkEncoder(schema, LinkageSecret(key), project_id=project_id)
        clks = encoder.encode_many(rows)
        return EncodedRecords(
            clks=clks,
            layout=ClkLayout.single(encoder.encoded_bits),
            group_fields={RECORD_GROUP: fields},
        )

    return encode

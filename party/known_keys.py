"""Re-encodings of a department's own records under a publicly known key.

Stage: audit, department side (feeds the leak scanner's unkeyed-encoding check in
``party/leak_scan.py``). A CLK made without the linkage secret - by a placeholder all-zero
key, or a tool run before the secret was configured - can be reproduced by anyone who has the
schema and a list of names, which is the dictionary attack keyed encoding exists to stop. The
party can test for it without the secret: re-encode a sample of its records under the known
key and compare. Keyed CLKs look unrelated to the re-encodings; unkeyed ones are near copies.

The re-encodings stay in memory in this process: they are as sensitive as the extract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from party.extract import open_extract
from party.leak_scan import UnkeyedReencoder
from party.link_key_file import read_positions
from party.mapping import DepartmentMapping
from protocol.clk_file import read_header
from protocol.encoding import ClkEncoder
from protocol.errors import ConfigurationError, RecordError
from protocol.schema import LinkageSchema
from protocol.secret import SECRET_BYTES, LinkageSecret

__all__ = ["KNOWN_KEY", "known_key_reencoder"]

# The placeholder every hand-rolled setup reaches for first.
KNOWN_KEY = bytes(SECRET_BYTES)


def known_key_reencoder(
    *,
    encoded_path: Path | str,
    positions_path: Path | str,
    extract_path: Path | str,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
) -> UnkeyedReencoder:
    """A function from shuffled positions to CLKs of those records under :data:`KNOWN_KEY`.

    Records are found through the private positions file and re-read from the extract; a
    record that cannot be re-read (its row was skipped as bad) is encoded as all-missing,
    which only lowers the paired similarity the check looks for.
    """
    header = read_header(encoded_path)
    encoder = ClkEncoder(schema, LinkageSecret(KNOWN_KEY), project_id=header.project_id)

    def reencode(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        asked = {int(position) for position in positions}
        wanted = {
            record_id: position
            for _, record_id, position in read_positions(positions_path)
            if position in asked
        }
        if len(wanted) != len(asked):
            raise ConfigurationError(
                "the positions file does not cover the encoded file (wrong positions file?)"
            )
        values: dict[int, list[str | None]] = {}
        with open_extract(extract_path, dialect=mapping.dialect) as reader:
            bound = mapping.bind(
                schema,
                list(reader.header),
                source=str(extract_path),
                date_columns=reader.date_columns,
            )
            row_number = 0
            for chunk in reader:
                for row in chunk.rows:
                    row_number += 1
                    if len(row) != bound.width:
                        continue
                    position = wanted.get(row[bound.record_id_index].strip())
                    if position is None:
                        continue
                    try:
                        values[position] = bound.normalise(row, row_number=row_number)
                    except RecordError:
                        continue
        missing: list[str | None] = [None] * len(schema.fields)
        return encoder.encode_many(values.get(int(position), missing) for position in positions)

    return reencode

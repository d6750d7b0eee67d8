"""The party's link-key file: its own record ids joined to the link keys it fetched.

The positions file (written by the encoder, private to the party) maps each record id to
the 0-based position of its CLK in the encoded file; the linkage unit only ever saw
positions. The output CSV ``own_record_id,link_key`` is written atomically, owner-only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from party.positions_file import read_positions
from protocol.atomic_file import atomic_output
from protocol.errors import ExtractError

__all__ = ["join_link_keys", "read_positions"]


def join_link_keys(
    positions_path: Path | str,
    positions: Sequence[int],
    link_keys: Sequence[str],
    output_path: Path | str,
) -> int:
    """Write ``own_record_id,link_key`` for every record; return how many rows were written."""
    path = str(positions_path)
    key_at = dict(zip(positions, link_keys, strict=True))
    rows: list[tuple[str, str]] = []
    for line, record_id, position in read_positions(positions_path):
        if position not in key_at:
            raise ExtractError(
                f"line {line}: no link key for its position; was this positions file "
                "written for the encoded file that was submitted?",
                path=path,
            )
        rows.append((record_id, key_at.pop(position)))
    if key_at:
        raise ExtractError(
            f"{len(key_at)} link key(s) have no record in the positions file; it does not "
            "belong to the submitted encoded file",
            path=path,
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["own_record_id", "link_key"])
    writer.writerows(rows)
    with atomic_output(output_path, mode=0o600) as handle:
        handle.write(text.getvalue().encode("utf-8"))
    return len(rows)

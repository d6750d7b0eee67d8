"""The party's link-key file: its own record ids joined to the link keys it fetched.

Stage: the department side after issue keys. The positions file (written by the encoder,
private to the party) maps each record id to the 0-based position of its CLK in the encoded
file; the linkage unit only ever saw positions. The output CSV ``own_record_id,link_key`` is
written atomically, owner-only.

A million records are joined as arrays (``join_link_keys``); ``reference_join_link_keys``
is the row-by-row join beside it, and both write the same bytes and refuse alike.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from party.positions_file import read_position_columns, read_positions
from protocol.atomic_file import atomic_output
from protocol.errors import ExtractError

__all__ = ["join_link_keys", "read_positions", "reference_join_link_keys"]

_HEADER = ["own_record_id", "link_key"]
# What makes the csv module quote a field (its delimiter, quote character or a line break).
_QUOTED = re.compile(r'[,"\r\n]')


def _no_key(path: str, line: int) -> ExtractError:
    return ExtractError(
        f"line {line}: no link key for its position; was this positions file "
        "written for the encoded file that was submitted?",
        path=path,
    )


def _keys_left(path: str, count: int) -> ExtractError:
    return ExtractError(
        f"{count} link key(s) have no record in the positions file; it does not "
        "belong to the submitted encoded file",
        path=path,
    )


def _distinct_last(
    values: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """The distinct values ascending, and where each last occurs (as a dict built from them
    keeps the last)."""
    backwards = values[::-1]
    order = np.argsort(backwards, kind="stable")
    ordered = backwards[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return ordered[first], len(values) - 1 - order[first]


def _write(output_path: Path | str, record_ids: Sequence[str], keys: Sequence[str]) -> None:
    # One search over every id; the separator is none of the characters searched for.
    if _QUOTED.search("\0".join(record_ids)):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(_HEADER)
        writer.writerows(zip(record_ids, keys, strict=True))
        body = text.getvalue()
    else:  # nothing to quote: the lines the csv module would write, joined directly
        lines = (f"{record_id},{key}\n" for record_id, key in zip(record_ids, keys, strict=True))
        body = ",".join(_HEADER) + "\n" + "".join(lines)
    with atomic_output(output_path, mode=0o600) as handle:
        handle.write(body.encode("utf-8"))


def join_link_keys(
    positions_path: Path | str,
    positions: Sequence[int],
    link_keys: Sequence[str],
    output_path: Path | str,
) -> int:
    """Write ``own_record_id,link_key`` for every record; return how many rows were written."""
    path = str(positions_path)
    if len(positions) != len(link_keys):
        raise ValueError("positions and link keys differ in length")
    record_ids, wanted, first_line = read_position_columns(positions_path)
    fetched, last = _distinct_last(np.asarray(positions, dtype=np.int64))
    # A row has a key if its position was fetched and no earlier row took it.
    slot = np.minimum(np.searchsorted(fetched, wanted), max(len(fetched) - 1, 0))
    found = fetched[slot] == wanted if len(fetched) else np.zeros(len(wanted), dtype=bool)
    order = np.argsort(wanted, kind="stable")
    taken = np.zeros(len(wanted), dtype=bool)
    taken[order[1:][wanted[order][1:] == wanted[order][:-1]]] = True
    refused = ~found | taken
    if refused.any():
        raise _no_key(path, first_line + int(np.argmax(refused)))
    if len(fetched) > len(wanted):
        raise _keys_left(path, len(fetched) - len(wanted))
    keys = np.asarray(link_keys)[last[slot]].tolist()
    _write(output_path, record_ids, keys)
    return len(record_ids)


def reference_join_link_keys(
    positions_path: Path | str,
    positions: Sequence[int],
    link_keys: Sequence[str],
    output_path: Path | str,
) -> int:
    """``join_link_keys`` a row at a time through a dict."""
    path = str(positions_path)
    key_at = dict(zip(positions, link_keys, strict=True))
    rows: list[tuple[str, str]] = []
    for line, record_id, position in read_positions(positions_path):
        if position not in key_at:
            raise _no_key(path, line)
        rows.append((record_id, key_at.pop(position)))
    if key_at:
        raise _keys_left(path, len(key_at))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(_HEADER)
    writer.writerows(rows)
    with atomic_output(output_path, mode=0o600) as handle:
        handle.write(text.getvalue().encode("utf-8"))
    return len(rows)

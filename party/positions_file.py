"""The private positions file: each record id and the shuffled position of its CLK.

Stage: encoder output, department side (written by the encoder run, read by ``fetch`` to join
link keys to the department's own ids, and by the leak scan's known-key check). It never
leaves the department.

Format (version 2, UTF-8 CSV as the ``csv`` module writes it; party/position_lines.py)::

    # bloomlink-positions-v2 project=p1 payload_sha256=<64 hex> records=3
    record_id,position
    MJ-000001,2
    "id, with comma",0
    ...

The first line binds the file to its encoded file: the project and the SHA-256 of the
payload the linkage unit receives. ``fetch`` refuses a positions file whose binding does not
match the submission it fetches keys for (a re-encode with the same ``--out`` would
otherwise join the new shuffle to the old keys). Version 1 files (no first line) are still
read; they cannot be checked and ``fetch`` says so.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from protocol.atomic_file import atomic_output
from protocol.errors import ExtractError
from protocol.labels import check_label

__all__ = [
    "POSITIONS_HEADER",
    "PositionsBinding",
    "read_binding",
    "read_position_columns",
    "read_positions",
    "write_positions",
]

POSITIONS_HEADER = ["record_id", "position"]
_MAGIC = "# bloomlink-positions-v2"
_BINDING = re.compile(
    r"^# bloomlink-positions-v2 project=(?P<project>\S+) payload_sha256=(?P<digest>[0-9a-f]{64})"
    r" records=(?P<records>\d+)$"
)
_IDS_BLOCK_BYTES = 1 << 20  # record id text read per block


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionsBinding:
    """Which encoded file a positions file belongs to."""

    project_id: str
    payload_sha256: str
    """Hex SHA-256 of the encoded file's payload (its header says the same)."""
    record_count: int

    def __post_init__(self) -> None:
        check_label(self.project_id, what="positions file project id")
        if not re.fullmatch(r"[0-9a-f]{64}", self.payload_sha256):
            raise ExtractError("positions file payload digest must be 64 lower-case hex digits")

    def line(self) -> str:
        return (
            f"{_MAGIC} project={self.project_id} payload_sha256={self.payload_sha256} "
            f"records={self.record_count}\n"
        )


def write_positions(
    positions_path: Path,
    ids_scratch: Path,
    position_of: npt.NDArray[np.int64],
    binding: PositionsBinding,
) -> None:
    """Write the positions file, in extract order, atomically and owner-only.

    ``ids_scratch`` holds one record id per line (ids never hold a newline: the encoder
    refuses ids with control characters); ``position_of[i]`` is record i's position.
    """
    from party.position_lines import position_lines  # numba: only for an encoder run

    with (
        atomic_output(positions_path, mode=0o600) as raw,
        ids_scratch.open("rb") as ids_in,
    ):
        raw.write(binding.line().encode("utf-8"))
        raw.write((",".join(POSITIONS_HEADER) + "\n").encode("utf-8"))
        done = 0
        rest = b""
        # Whole lines per block, cut at the last newline; the id is quoted only where the
        # csv module would quote it (a comma or a quote in it).
        while block := ids_in.read(_IDS_BLOCK_BYTES):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
            count = block.count(b"\n")
            lines = position_lines(block, position_of[done : done + count])
            if lines is None:
                break
            raw.write(lines)
            done += count
        if rest or done != len(position_of):
            raise ExtractError("the encoder's record-id scratch file is inconsistent")


def read_binding(positions_path: Path | str) -> PositionsBinding | None:
    """The binding line of a positions file, or None for a version 1 file (none written)."""
    path = str(positions_path)
    try:
        with open(positions_path, encoding="utf-8", newline="") as handle:
            first = handle.readline().rstrip("\n")
    except OSError as error:
        raise ExtractError(f"cannot read positions file: {error.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise ExtractError("positions file is not UTF-8 text", path=path) from None
    if not first.startswith("#"):
        return None
    match = _BINDING.fullmatch(first)
    if match is None:
        raise ExtractError(
            "positions file's first line is not a bloomlink-positions-v2 binding", path=path
        )
    return PositionsBinding(
        project_id=match["project"],
        payload_sha256=match["digest"],
        record_count=int(match["records"]),
    )


def _rows(handle: TextIO, path: str) -> tuple[Iterator[list[str]], int]:
    """The rows after the header (and the version-2 binding line before it), and the line
    number of the first."""
    reader = csv.reader(handle)
    first = next(reader, None)
    header_line = 1
    if first and first[0].startswith(_MAGIC):
        first, header_line = next(reader, None), 2
    if first != POSITIONS_HEADER:
        raise ExtractError(
            "positions file must start with the header record_id,position", path=path
        )
    return reader, header_line + 1


def _is_position(row: list[str]) -> bool:
    # isdecimal, not isdigit: a superscript digit is a digit that int() refuses.
    return len(row) == 2 and row[1].isdecimal()


def read_positions(positions_path: Path | str) -> Iterator[tuple[int, str, int]]:
    """``(line, record_id, position)`` for every row of a positions file (version 1 or 2),
    checked as read."""
    path = str(positions_path)
    try:
        with open(positions_path, newline="", encoding="utf-8") as handle:
            rows, first_line = _rows(handle, path)
            for line, row in enumerate(rows, start=first_line):
                if not _is_position(row):
                    raise ExtractError(f"line {line} is not record_id,position", path=path)
                yield line, row[0], int(row[1])
    except OSError as error:
        raise ExtractError(f"cannot read positions file: {error.strerror}", path=path) from None


def read_position_columns(
    positions_path: Path | str,
) -> tuple[list[str], npt.NDArray[np.int64], int]:
    """A whole positions file at once, checked as ``read_positions`` checks it: the record
    ids, their positions, and the line of the first row (row ``i`` is on line ``first + i``)."""
    path = str(positions_path)
    try:
        with open(positions_path, newline="", encoding="utf-8") as handle:
            reader, first_line = _rows(handle, path)
            rows = list(reader)
    except OSError as error:
        raise ExtractError(f"cannot read positions file: {error.strerror}", path=path) from None
    if not all(len(row) == 2 and row[1].isdecimal() for row in rows):
        index = next(i for i, row in enumerate(rows) if not _is_position(row))
        raise ExtractError(f"line {first_line + index} is not record_id,position", path=path)
    positions = np.fromiter((int(row[1]) for row in rows), dtype=np.int64, count=len(rows))
    return [row[0] for row in rows], positions, first_line

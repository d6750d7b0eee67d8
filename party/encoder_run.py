"""An encoder run: extract -> normalise -> tokenise -> encode -> shuffle -> encoded file.

Reads the extract in chunks, encodes them on every core (separate processes, each with its
own encoder built from the secret), keeps at most a few chunks in flight so memory stays flat
however large the file, then writes the CLKs in a fresh random order with the encoded file's
header, and a private positions file (``record_id,position``, party/positions_file.py) that
maps each shuffled position back to the department's own record id and names the project and
payload digest of its encoded file. The positions file never leaves the department. Both
files appear only if the whole run succeeds.

This is a primitive: a department runs :func:`party.prepare.prepare_upload`, which also
leak-scans the output and signs its manifest in the same pass over the extract.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
import operator
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from party.extract import ExtractChunk, ReadProgress, open_extract
from party.mapping import BoundMapping, DepartmentMapping
from party.positions_file import (
    PositionsBinding,
    read_binding,
    read_positions,
    write_positions,
)
from protocol.clk_file import ClkFileWriter
from protocol.encoding import ClkEncoder
from protocol.errors import (
    ConfigurationError,
    ExtractError,
    InvariantError,
    RecordError,
    ValueRejectedError,
)
from protocol.labels import check_label
from protocol.schema import LinkageSchema
from protocol.secret import LinkageSecret

__all__ = [
    "BadRowLimit",
    "BadRowPolicy",
    "EncodeProgress",
    "EncodeSummary",
    "FieldCounts",
    "RowObserver",
    "RowProblem",
    "encode_extract",
]


class BadRowPolicy(StrEnum):
    """What an encoder run does with a row it cannot use."""

    FAIL = "fail"
    """Stop at the first unusable row; nothing is written."""
    SKIP = "skip"
    """Leave such rows out (counted, within the bad-row limit)."""
    BLANK = "blank"
    """Treat an unusable value as missing (a required field's row is still skipped)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RowProblem:
    """Why one row (1-based data row) could not be used as it was: field and reason, never
    the value. ``field`` is None for a problem with the row as a whole."""

    row: int
    field: str | None
    reason: str

    def error(self) -> RecordError:
        return RecordError(self.reason, row=self.row, field=self.field)


_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class BadRowLimit:
    """How many unusable rows ``skip`` and ``blank`` accept before the run stops: a count
    (``rows``) or a share of the rows read (``percent``)."""

    rows: int | None = None
    percent: float | None = None

    def __post_init__(self) -> None:
        if (self.rows is None) == (self.percent is None):
            raise ConfigurationError("a bad-row limit is a number of rows or a percentage")
        if self.rows is not None and self.rows < 0:
            raise ConfigurationError("the bad-row limit cannot be negative")
        if self.percent is not None and not 0 <= self.percent <= 100:
            raise ConfigurationError("a bad-row percentage must be between 0 and 100")

    @classmethod
    def parse(cls, text: str) -> BadRowLimit:
        """``"25"`` (rows) or ``"2.5%"`` (of the rows read)."""
        match = _LIMIT.fullmatch(text)
        if match is None:
            raise ConfigurationError(
                "--max-bad-rows takes a number of rows (25) or a percentage (2.5%)"
            )
        number, percent = match.groups()
        if percent:
            return cls(percent=float(number))
        if "." in number:
            raise ConfigurationError("a bad-row count must be a whole number (or give N%)")
        return cls(rows=int(number))

    def allows(self, bad_rows: int, rows_read: int) -> bool:
        if self.rows is not None:
            return bad_rows <= self.rows
        if self.percent is None:
            raise InvariantError("a bad-row limit is a count or a percentage")
        return bad_rows * 100 <= self.percent * rows_read

    def __str__(self) -> str:
        return f"{self.rows}" if self.rows is not None else f"{self.percent:g}%"


DEFAULT_BAD_ROW_LIMIT = BadRowLimit(percent=1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldCounts:
    """Counts for one schema field over an encoder run (never a value)."""

    field: str
    missing: int
    """Encoded records with no value for the field (blanked values included)."""
    blanked: int
    """Values that could not be read and were treated as missing (``blank``)."""
    skipped_rows: int
    """Rows left out because of this field (``skip``, or a required field under ``blank``)."""
    records: int

    @property
    def fill_rate(self) -> float:
        """Share of encoded records with a value for the field."""
        return (self.records - self.missing) / self.records if self.records else 0.0

    def to_record(self) -> dict[str, object]:
        return {
            "field": self.field,
            "missing": self.missing,
            "blanked": self.blanked,
            "skipped_rows": self.skipped_rows,
            "fill_rate": round(self.fill_rate, 6),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeProgress:
    """Where an encoder run is: rows read so far and how far through the file that is."""

    rows_read: int
    read: ReadProgress | None


Progress = Callable[[EncodeProgress], None]


class RowObserver(Protocol):
    """Sees every chunk of the extract as the encoder reads it (in the calling process), and
    where each kept row's CLK landed: lets a caller sample rows in the same pass."""

    def start(self, header: list[str], date_columns: frozenset[str]) -> None: ...

    def observe(self, chunk: ExtractChunk) -> None: ...

    def placed(self, row_numbers: npt.NDArray[np.int64], positions: npt.NDArray[np.int64]) -> None:
        """``row_numbers[i]`` (a 1-based data row) was encoded at shuffled ``positions[i]``."""


PARALLEL_FROM_BYTES = 4 << 20  # smaller extracts encode in-process: workers cost ~0.5 s to start
_TABLE_ROWS = 1 << 16  # distinct raw values remembered per field (8 MiB at 1024 bits)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeSummary:
    """What an encoder run produced: counts, digests and where the files are (no values)."""

    rows_read: int
    records_encoded: int
    rows_skipped: int
    values_blanked: int
    rows_blanked: int = 0
    """Rows that had at least one value blanked."""
    problems_by_field: dict[str, int] = field(default_factory=dict)
    fields: tuple[FieldCounts, ...] = ()
    project_id: str = ""
    clk_bits: int
    schema_fingerprint: str
    kcv: str
    payload_sha256: str
    encoded_path: Path
    positions_path: Path
    seconds: float
    workers: int

    @property
    def records_per_second(self) -> float:
        return self.records_encoded / self.seconds if self.seconds > 0 else 0.0

    def field_lines(self) -> list[str]:
        """Per field: fill rate and counts of missing, blanked and skipped (no values)."""
        lines = []
        for counts in self.fields:
            extra = ""
            if counts.blanked:
                extra += f", {counts.blanked:,} blanked"
            if counts.skipped_rows:
                extra += f", {counts.skipped_rows:,} rows skipped"
            lines.append(
                f"  {counts.field:<16} filled {counts.fill_rate:7.2%}  "
                f"({counts.missing:,} missing{extra})"
            )
        return lines

    def to_record(self) -> dict[str, object]:
        """The summary as JSON-ready data (counts, digests and paths; never a value)."""
        return {
            "project_id": self.project_id,
            "rows_read": self.rows_read,
            "records_encoded": self.records_encoded,
            "rows_skipped": self.rows_skipped,
            "rows_blanked": self.rows_blanked,
            "values_blanked": self.values_blanked,
            "fields": [counts.to_record() for counts in self.fields],
            "clk_bits": self.clk_bits,
            "schema_fingerprint": self.schema_fingerprint,
            "kcv": self.kcv,
            "payload_sha256": self.payload_sha256,
            "encoded_path": str(self.encoded_path),
            "positions_path": str(self.positions_path),
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
        }

    def one_line(self) -> str:
        """A summary a person can paste into a ticket."""
        skipped = f", {self.rows_skipped} rows skipped" if self.rows_skipped else ""
        blanked = f", {self.values_blanked} values blanked" if self.values_blanked else ""
        return (
            f"encoded {self.records_encoded} of {self.rows_read} rows{skipped}{blanked} into "
            f"{self.encoded_path} ({self.clk_bits}-bit CLKs, schema {self.schema_fingerprint[:12]}, "
            f"KCV {self.kcv[:8]}, payload sha256 {self.payload_sha256[:12]}) in "
            f"{self.seconds:.1f}s ({self.records_per_second:,.0f} records/s on {self.workers} "
            f"process{'es' if self.workers != 1 else ''})"
        )


class _MaskTable:
    """One field's raw value (or, for a salted field, raw value and salt values) -> row of a
    bit-mask table of the field's group, bounded so memory stays flat.

    Row 0 is the empty mask (a missing value). The array grows by doubling up to
    ``capacity`` rows (a field with few distinct values, or a small file, never pays for the
    whole table); when a chunk's new values would not fit, the table starts again (a chunk's
    own distinct values always fit). Rejected values are never remembered, so each
    occurrence is reported.
    """

    __slots__ = ("capacity", "masks", "rows", "used")

    def __init__(self, words: int) -> None:
        self.capacity = _TABLE_ROWS
        self.rows: dict[Any, int] = {}
        self.masks = np.zeros((min(1024, self.capacity), words), dtype=np.uint64)
        self.used = 1

    def make_room(self, count: int) -> bool:
        """Ensure ``count`` more rows fit; True if that meant forgetting every value."""
        forget = self.used + count > self.capacity
        if forget:
            self.capacity = max(self.capacity, count + 1)
            self.rows.clear()
            self.used = 1
        if self.used + count > len(self.masks):
            size = min(self.capacity, max(2 * len(self.masks), self.used + count))
            grown = np.zeros((size, self.masks.shape[1]), dtype=np.uint64)
            grown[: self.used] = self.masks[: self.used]
            self.masks = grown
        return forget

    def add(self, raws: list[Any], masks: npt.NDArray[np.uint64]) -> None:
        """Remember ``raws`` with their masks (call :meth:`make_room` for them first)."""
        start = self.used
        self.masks[start : start + len(raws)] = masks
        self.rows.update(zip(raws, range(start, start + len(raws)), strict=True))
        self.used += len(raws)


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    clks: bytes
    record_ids: list[str]
    row_numbers: list[int]
    skipped: list[RowProblem]
    blanked: list[RowProblem]
    # Per schema field: kept records with no value for it (blanked ones included).
    missing: list[int]
    # Under the "fail" policy: the first unusable row. Carried as data, not raised in the
    # worker: our errors take keyword-only context and do not survive pickling back from a
    # worker process (the pool would report a broken process instead).
    failure: RowProblem | None = None


class _ChunkEncoder:
    """Everything one process needs to encode chunks. Built once per worker."""

    def __init__(
        self,
        schema: LinkageSchema,
        mapping: DepartmentMapping,
        header: list[str],
        secret_material: bytes,
        project_id: str,
        policy: BadRowPolicy,
        source: str,
        date_columns: frozenset[str] = frozenset(),
    ) -> None:
        self.bound: BoundMapping = mapping.bind(
            schema, header, source=source, date_columns=date_columns
        )
        self.encoder = ClkEncoder(schema, LinkageSecret(secret_material), project_id=project_id)
        self.policy = policy
        ranges = [self.encoder.field_word_range(index) for index in range(len(schema.fields))]
        self._tables = [_MaskTable(stop - start) for start, stop in ranges]
        self._ranges = ranges
        # Schema v2 salting: a salted field's bits depend on another field's normalised value,
        # so that field's values are worked out per chunk and the salted field's table is
        # keyed by (raw value, salt values).
        position = {spec.name: index for index, spec in enumerate(schema.fields)}
        self._salt_fields = {
            name: position[name]
            for index in range(len(schema.fields))
            for name in self.encoder.field_salts(index)
        }
        self._salt_cache: dict[str, dict[str, str | None]] = {
            name: {} for name in self._salt_fields
        }

    def _salt_column(self, name: str, column: list[str]) -> list[str | None]:
        """Normalised values of salt field ``name`` (None where missing or rejected: such a
        value salts nothing, and its own field reports it)."""
        cache = self._salt_cache[name]
        fresh = [raw for raw in dict.fromkeys(column) if raw not in cache]
        if fresh:
            if len(cache) + len(fresh) > _TABLE_ROWS:
                cache.clear()
                fresh = list(dict.fromkeys(column))
            reader = self.bound.fields[self._salt_fields[name]]
            try:
                cache.update(zip(fresh, reader.normalise_many(fresh), strict=True))
            except ValueRejectedError:
                for raw in fresh:
                    try:
                        cache[raw] = reader.normalise(raw)
                    except ValueRejectedError:
                        cache[raw] = None
        return list(map(cache.__getitem__, column))

    def encode(self, chunk: ExtractChunk) -> _ChunkResult:
        """Encode a chunk column by column: per-row interpreter work is what limits a Python
        encoder, so each field's raw values become rows of a mask table (each distinct new
        value normalised once, all of them encoded in one column call) and the CLKs are the
        OR of the fields' table rows, gathered in numpy."""
        rows = chunk.rows
        first = chunk.first_row
        width = self.bound.width
        problems: dict[int, tuple[str | None, str]] = {}  # row offset -> (field, reason)
        blanked: list[RowProblem] = []
        missing_masks: list[npt.NDArray[np.bool_] | None] = []  # None: the field is absent
        if set(map(len, rows)) - {width}:
            blank_row = [""] * width
            fixed = []
            for offset, row in enumerate(rows):
                if len(row) != width:
                    self._reject(
                        problems,
                        offset,
                        first,
                        None,
                        f"has {len(row)} cells but the header has {width}",
                    )
                    row = blank_row
                fixed.append(row)
            rows = fixed
        # Columns by C-level maps (a Python loop indexing every row per field costs more).
        wanted = {self.bound.record_id_index} | {
            reader.column_index for reader in self.bound.fields if reader.column_index is not None
        }
        columns = {index: list(map(operator.itemgetter(index), rows)) for index in wanted}
        record_ids = list(map(str.strip, columns[self.bound.record_id_index]))
        if "" in record_ids or not all(map(str.isprintable, record_ids)):
            for offset, record_id in enumerate(record_ids):
                if not record_id or not record_id.isprintable():
                    self._reject(
                        problems,
                        offset,
                        first,
                        None,
                        "record id is empty or has control characters",
                    )
        clks = np.zeros((len(rows), self.encoder.input_layout.total_words), dtype=np.uint64)
        salt_values = {
            name: (
                self._salt_column(name, columns[column_index])
                if (column_index := self.bound.fields[index].column_index) is not None
                else [None] * len(rows)
            )
            for name, index in self._salt_fields.items()
        }
        for field_index, reader in enumerate(self.bound.fields):
            name, column_index = reader.name, reader.column_index
            normalise, normalise_many = reader.normalise, reader.normalise_many
            if column_index is None:
                missing_masks.append(None)
                continue
            table = self._tables[field_index]
            column: list[Any] = columns[column_index]
            salts = self.encoder.field_salts(field_index)
            if salts:  # the table remembers (raw value, salt values) pairs
                column = list(zip(column, *(salt_values[salt] for salt in salts), strict=True))
            codes = list(map(table.rows.get, column))
            if None in codes:
                # Work out each distinct new value once, then look the column up again in C.
                fresh = dict.fromkeys(
                    itertools.compress(column, map(operator.is_, codes, itertools.repeat(None)))
                )
                if table.make_room(len(fresh)):
                    fresh = dict.fromkeys(column)  # forgotten: the whole column is new
                    table.make_room(len(fresh))
                rejected: dict[Any, str] = {}
                raws = list(fresh)  # raw values, or (raw value, salt values) keys
                texts: list[str] = [key[0] for key in raws] if salts else raws
                try:  # normalised as a batch; a rejected value sends us the long way
                    values: list[str | None] = normalise_many(texts)
                except ValueRejectedError:
                    values = []
                    for raw, text in zip(raws, texts, strict=True):
                        try:
                            values.append(normalise(text))
                        except ValueRejectedError as error:
                            rejected[raw] = error.message
                            values.append(None)
                    kept = [raw for raw in raws if raw not in rejected]
                    values = [
                        value
                        for raw, value in zip(raws, values, strict=True)
                        if raw not in rejected
                    ]
                    raws = kept
                present = list(map(operator.is_not, values, itertools.repeat(None)))
                table.rows.update(
                    dict.fromkeys(itertools.compress(raws, map(operator.not_, present)), 0)
                )
                new_raws = list(itertools.compress(raws, present))
                new_values: list[str] = list(itertools.compress(values, present))  # type: ignore[arg-type]
                if new_values:
                    salt_columns = {
                        salt: [key[1 + place] for key in new_raws]
                        for place, salt in enumerate(salts)
                    }
                    table.add(
                        new_raws,
                        self.encoder.field_masks(field_index, new_values, salt_columns or None),
                    )
                codes = list(map(table.rows.get, column))
                if rejected:
                    blank_allowed = (
                        self.policy is BadRowPolicy.BLANK and name not in self.bound.required_fields
                    )
                    for offset in [i for i, code in enumerate(codes) if code is None]:
                        reason = rejected[column[offset]]
                        if blank_allowed:
                            blanked.append(
                                RowProblem(row=first + offset, field=name, reason=reason)
                            )
                        else:
                            self._reject(problems, offset, first, name, reason)
                        codes[offset] = 0
            code_array = np.asarray(codes, dtype=np.intp)
            missing_masks.append(code_array == 0)
            start, stop = self._ranges[field_index]
            clks[:, start:stop] |= table.masks[code_array]
        if problems:
            keep = [offset for offset in range(len(rows)) if offset not in problems]
            kept_rows = np.asarray(keep, dtype=np.intp)
            clks = clks[kept_rows]
            record_ids = [record_ids[offset] for offset in keep]
            row_numbers = [first + offset for offset in keep]
            blanked = [problem for problem in blanked if problem.row - first not in problems]
            missing_masks = [None if mask is None else mask[kept_rows] for mask in missing_masks]
        else:
            row_numbers = list(range(first, first + len(rows)))
        skipped = [
            RowProblem(row=first + offset, field=field, reason=reason)
            for offset, (field, reason) in sorted(problems.items())
        ]
        if self.policy is BadRowPolicy.FAIL and skipped:
            # Report the chunk's first bad row, whichever field or check found it.
            return _ChunkResult(b"", [], [], [], [], [], failure=skipped[0])
        missing = [
            len(record_ids) if mask is None else int(np.count_nonzero(mask))
            for mask in missing_masks
        ]
        return _ChunkResult(
            self.encoder.harden(clks).tobytes(),
            record_ids,
            row_numbers,
            skipped,
            blanked,
            missing,
        )

    def _reject(
        self,
        problems: dict[int, tuple[str | None, str]],
        offset: int,
        first: int,
        field_name: str | None,
        reason: str,
    ) -> None:
        problems.setdefault(offset, (field_name, reason))


_worker: _ChunkEncoder | None = None


def _start_worker(*args: object) -> None:
    global _worker
    _worker = _ChunkEncoder(*args)  # type: ignore[arg-type]


def _encode_in_worker(chunk: ExtractChunk) -> _ChunkResult:
    if _worker is None:
        raise InvariantError("the encoder worker was not started")
    return _worker.encode(chunk)


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _fresh_generator() -> np.random.Generator:
    # The shuffle only has to be unpredictable to the linkage unit, which never sees it; a
    # PCG64 stream seeded with 128 bits from the OS CSPRNG gives that at numpy speed.
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _first_repeated_id(digests: npt.NDArray[np.int64], ids_scratch: Path) -> tuple[int, int] | None:
    """The record indices (earlier, later) of the first record whose id repeats an earlier
    one, or None. Equal digests are only candidates: their ids are compared to confirm."""
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(same) == 0:
        return None
    candidates = set(order[same].tolist()) | set(order[same + 1].tolist())
    last = max(candidates)
    first_seen: dict[str, int] = {}
    best: tuple[int, int] | None = None
    with ids_scratch.open("r", encoding="utf-8", newline="\n") as ids:
        for index, line in enumerate(ids):
            if index > last:
                break
            if index in candidates:
                earlier = first_seen.setdefault(line, index)
                if earlier != index and (best is None or index < best[1]):
                    best = (earlier, index)
    return best


def _earlier_positions(
    path: Path, ids_scratch: Path, rows: npt.NDArray[np.int64], project_id: str
) -> npt.NDArray[np.int64]:
    """Each encoded record's position in an earlier positions file of the same extract and
    project (errors name rows and counts, never a record id)."""
    binding = read_binding(path)
    if binding is not None and binding.project_id != project_id:
        raise ExtractError(
            f"the earlier positions file is for project {binding.project_id!r}, not "
            f"{project_id!r}; give the positions file of this project's upload",
            path=str(path),
        )
    earlier: dict[str, int] = {}
    for _, record_id, position in read_positions(path):
        earlier[record_id] = position
    count = len(rows)
    if len(earlier) != count or sorted(earlier.values()) != list(range(count)):
        raise ExtractError(
            f"the earlier positions file holds {len(earlier)} records and this extract encodes "
            f"{count}: re-encode exactly the extract (and bad-row policy) that made it",
            path=str(path),
        )
    position_of = np.empty(count, dtype=np.int64)
    with ids_scratch.open("r", encoding="utf-8", newline="\n") as ids:
        for index, line in enumerate(ids):
            found = earlier.get(line[:-1])
            if found is None:
                raise RecordError(
                    "this record's id is not in the earlier positions file; re-encode exactly "
                    "the extract that made it",
                    row=int(rows[index]),
                )
            position_of[index] = found
    return position_of


_BUCKET_BYTES = 8 << 20  # CLKs per shuffle bucket: what the shuffle holds at once


def _write_shuffled(
    writer: ClkFileWriter,
    clk_scratch: Path,
    position_of: npt.NDArray[np.int64],
    clk_bytes: int,
    digest: hashlib._Hash,
) -> None:
    """Write the scratch CLKs (extract order) so that record i lands at ``position_of[i]``,
    holding one bucket of CLKs at a time however large the file.

    Random reads of the scratch file would map all of it (the kernel faults pages in around
    each read), so the shuffle goes through buckets of consecutive output positions: pass 1
    reads the scratch file in order and appends each record to its bucket's region of a
    second scratch file; pass 2 reads one region at a time and puts its records in order.
    """
    count = len(position_of)
    bucket_rows = max(1, _BUCKET_BYTES // clk_bytes)
    buckets = position_of // bucket_rows
    bucketed = clk_scratch.with_name("bucketed.bin")
    # Within a region, records are in extract order, so a stable sort names them.
    order = np.argsort(buckets, kind="stable")
    cursor = np.arange(0, count, bucket_rows, dtype=np.int64)  # next free row per bucket
    with clk_scratch.open("rb") as source, bucketed.open("w+b") as regions:
        descriptor = regions.fileno()
        for start in range(0, count, bucket_rows):
            block = np.fromfile(source, dtype=np.uint8, count=bucket_rows * clk_bytes)
            block = block.reshape(-1, clk_bytes)
            block_buckets = buckets[start : start + len(block)]
            within = np.argsort(block_buckets, kind="stable")
            grouped = block[within]
            present, first, sizes = np.unique(
                block_buckets[within], return_index=True, return_counts=True
            )
            for bucket, low, size in zip(
                present.tolist(), first.tolist(), sizes.tolist(), strict=True
            ):
                os.pwrite(
                    descriptor,
                    grouped[low : low + size].tobytes(),
                    int(cursor[bucket]) * clk_bytes,
                )
                cursor[bucket] += size
        for low in range(0, count, bucket_rows):
            high = min(count, low + bucket_rows)
            region = os.pread(descriptor, (high - low) * clk_bytes, low * clk_bytes)
            rows = np.frombuffer(region, dtype=np.uint8).reshape(-1, clk_bytes)
            shuffled = np.empty_like(rows)
            shuffled[position_of[order[low:high]] - low] = rows
            writer.write(shuffled)
            digest.update(shuffled.data)


def encode_extract(
    *,
    extract_path: Path | str,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    secret: LinkageSecret,
    project_id: str,
    encoded_path: Path | str,
    positions_path: Path | str,
    key_context: str | None = None,
    bad_rows: BadRowPolicy | str = BadRowPolicy.FAIL,
    max_bad_rows: BadRowLimit = DEFAULT_BAD_ROW_LIMIT,
    workers: int | None = None,
    chunk_rows: int = 20_000,
    progress: Progress | None = None,
    generator: np.random.Generator | None = None,
    observer: RowObserver | None = None,
    same_positions: Path | str | None = None,
) -> EncodeSummary:
    """Encode an extract into an encoded file and a private positions file.

    ``same_positions``: an earlier positions file of this extract for this project; each
    record goes to the position it had there instead of a fresh shuffle (a spine's key
    rotation: the linkage unit maps the re-encoding to its records by position). The extract
    must encode exactly the records that file holds.

    ``bad_rows``: ``fail`` stops at the first unusable row (nothing is written); ``skip``
    leaves such rows out and counts them; ``blank`` treats an unusable value as missing.
    Under ``skip`` and ``blank``, more unusable rows than ``max_bad_rows`` stop the run
    (nothing is written): a wrong date format must not quietly drop most of an extract.

    ``key_context``: what the field keys and the KCV are derived for, instead of the project
    id: a spine's context (:func:`protocol.keys.spine_key_context`), so that every project joining one
    spine encodes comparably (docs/spine.md).
    """
    started = time.perf_counter()
    check_label(project_id, what="project id")
    try:
        policy = BadRowPolicy(bad_rows)
    except ValueError:
        raise ConfigurationError(
            f"bad-row policy must be one of {', '.join(BadRowPolicy)}"
        ) from None
    if workers is not None and workers < 1:
        raise ConfigurationError("workers must be at least 1 (or left out to use every core)")
    encoded_path, positions_path = Path(encoded_path), Path(positions_path)
    if encoded_path.resolve() == positions_path.resolve():
        raise ConfigurationError("the encoded file and the positions file must be different paths")
    if Path(extract_path).resolve() in (encoded_path.resolve(), positions_path.resolve()):
        raise ConfigurationError("an output path is the extract itself; choose another --out")
    reader = open_extract(extract_path, chunk_rows=chunk_rows, dialect=mapping.dialect)
    source = str(extract_path)
    encoder_args = (
        schema,
        mapping,
        reader.header,
        secret.material(),
        key_context or project_id,
        policy,
        source,
        reader.date_columns,
    )
    try:  # the extract is closed on every path out, so a bad row does not leave it open
        local = _ChunkEncoder(*encoder_args)
        if observer is not None:
            observer.start(list(reader.header), reader.date_columns)
        encoded_path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".bloomlink-encode-", dir=encoded_path.parent))
    except BaseException:
        reader.close()
        raise
    clk_bytes = schema.encoded_bits // 8
    size = Path(extract_path).stat().st_size
    process_count = workers or _default_workers()
    if size < PARALLEL_FROM_BYTES:
        process_count = 1

    try:
        clk_scratch = scratch / "clks.bin"
        ids_scratch = scratch / "ids.txt"
        counts = {"read": 0, "encoded": 0}
        skipped_rows = 0
        blanked_values = 0
        blanked_rows = 0
        first_problem: RowProblem | None = None
        problems: collections.Counter[str] = collections.Counter()
        field_names = local.bound.field_names
        missing_by_field = [0] * len(field_names)
        blanked_by_field: collections.Counter[str] = collections.Counter()
        skipped_by_field: collections.Counter[str] = collections.Counter()
        row_numbers: list[npt.NDArray[np.int64]] = []
        # Python's string hash (SipHash, keyed per process) finds repeated record ids in 8
        # bytes a row; a repeat it reports is confirmed on the ids themselves before failing.
        id_digests: list[npt.NDArray[np.int64]] = []

        with (
            clk_scratch.open("wb") as clk_out,
            ids_scratch.open("w", encoding="utf-8", newline="\n") as ids_out,
        ):

            def collect(result: _ChunkResult, rows_in_chunk: int) -> None:
                nonlocal skipped_rows, blanked_values, blanked_rows, first_problem
                if result.failure is not None:
                    raise result.failure.error()
                clk_out.write(result.clks)
                if result.record_ids:
                    ids_out.write("\n".join(result.record_ids) + "\n")
                counts["read"] += rows_in_chunk
                counts["encoded"] += len(result.record_ids)
                skipped_rows += len(result.skipped)
                blanked_values += len(result.blanked)
                blanked_rows += len({problem.row for problem in result.blanked})
                for problem in result.skipped:
                    problems[problem.field or "(row)"] += 1
                    skipped_by_field[problem.field or "(row)"] += 1
                for problem in result.blanked:
                    problems[problem.field or "(row)"] += 1
                    blanked_by_field[problem.field or "(row)"] += 1
                for index, count in enumerate(result.missing):
                    missing_by_field[index] += count
                if first_problem is None and (result.skipped or result.blanked):
                    first_problem = min(result.skipped + result.blanked, key=lambda p: p.row)
                if max_bad_rows.rows is not None and not max_bad_rows.allows(
                    skipped_rows + blanked_rows, counts["read"]
                ):
                    # A count is known to be exceeded before the end: stop reading now.
                    raise _too_many_bad_rows()
                row_numbers.append(np.asarray(result.row_numbers, dtype=np.int64))
                id_digests.append(
                    np.fromiter(map(hash, result.record_ids), np.int64, len(result.record_ids))
                )
                if progress:
                    progress(EncodeProgress(rows_read=counts["read"], read=reader.progress()))

            def _too_many_bad_rows() -> ExtractError:
                bad = skipped_rows + blanked_rows
                by_field = ", ".join(f"{name} {count:,}" for name, count in problems.most_common())
                first = f"; the first: {first_problem.error().message}" if first_problem else ""
                return ExtractError(
                    f"{bad:,} of {counts['read']:,} rows read were unusable "
                    f"({'skipped' if policy is BadRowPolicy.SKIP else 'values blanked'}), more "
                    f"than --max-bad-rows {max_bad_rows} allows ({by_field}){first}. Nothing "
                    "was written: fix the mapping (a date format?) or the extract, or raise "
                    "--max-bad-rows",
                    path=source,
                )

            def read_chunks() -> Iterator[ExtractChunk]:
                for chunk in reader:
                    if observer is not None:
                        observer.observe(chunk)
                    yield chunk

            if process_count == 1:
                for chunk in read_chunks():
                    collect(local.encode(chunk), len(chunk.rows))
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(
                    max_workers=process_count,
                    mp_context=context,
                    initializer=_start_worker,
                    initargs=encoder_args,
                ) as pool:
                    pending: collections.deque[tuple[Future[_ChunkResult], int]] = (
                        collections.deque()
                    )
                    for chunk in read_chunks():
                        pending.append((pool.submit(_encode_in_worker, chunk), len(chunk.rows)))
                        if len(pending) >= 2 * process_count:
                            future, rows = pending.popleft()
                            collect(future.result(), rows)
                    while pending:
                        future, rows = pending.popleft()
                        collect(future.result(), rows)

        record_count = counts["encoded"]
        if not max_bad_rows.allows(skipped_rows + blanked_rows, counts["read"]):
            raise _too_many_bad_rows()
        if record_count == 0:
            raise ExtractError(
                f"none of the {counts['read']} rows could be encoded (all were skipped)",
                path=source,
            )
        repeat = _first_repeated_id(np.concatenate(id_digests), ids_scratch)
        id_digests.clear()  # what the shuffle needs per record is its 8-byte position only
        if repeat is not None:
            all_rows = np.concatenate(row_numbers)
            raise RecordError(
                f"record id repeats the id of row {int(all_rows[repeat[0]])}; record ids must "
                "be unique",
                row=int(all_rows[repeat[1]]),
            )

        if same_positions is not None:
            position_of = _earlier_positions(
                Path(same_positions), ids_scratch, np.concatenate(row_numbers), project_id
            )
        else:
            permutation = (generator or _fresh_generator()).permutation(record_count)
            position_of = np.empty(record_count, dtype=np.int64)
            position_of[permutation] = np.arange(record_count, dtype=np.int64)
            del permutation
        # Both files or neither: the positions file is committed inside the encoded file's
        # block (so a failure writing it leaves no encoded file), and removed again if the
        # encoded file then fails to commit. The payload digest it is bound to is taken
        # over the same bytes the writer hashes into the header (and checked against it).
        positions_committed = False
        payload_digest = hashlib.sha256()
        try:
            with ClkFileWriter(
                encoded_path,
                project_id=project_id,
                schema_fingerprint=schema.fingerprint,
                kcv=local.encoder.kcv,
                clk_bits=schema.encoded_bits,
                layout=schema.layout if schema.grouped else None,
            ) as writer:
                _write_shuffled(writer, clk_scratch, position_of, clk_bytes, payload_digest)
                binding = PositionsBinding(
                    project_id=project_id,
                    payload_sha256=payload_digest.hexdigest(),
                    record_count=record_count,
                )
                write_positions(positions_path, ids_scratch, position_of, binding)
                positions_committed = True
            if writer.header is None or writer.header.payload_sha256 != payload_digest.digest():
                raise ConfigurationError("the encoded file's payload digest is not the one bound")
        except BaseException:
            if positions_committed:
                positions_path.unlink(missing_ok=True)
            raise
        if observer is not None:
            observer.placed(np.concatenate(row_numbers), position_of)
        return EncodeSummary(
            rows_read=counts["read"],
            records_encoded=record_count,
            rows_skipped=skipped_rows,
            values_blanked=blanked_values,
            rows_blanked=blanked_rows,
            problems_by_field=dict(problems),
            fields=tuple(
                FieldCounts(
                    field=name,
                    missing=missing_by_field[index],
                    blanked=blanked_by_field[name],
                    skipped_rows=skipped_by_field[name],
                    records=record_count,
                )
                for index, name in enumerate(field_names)
            ),
            project_id=project_id,
            clk_bits=schema.encoded_bits,
            schema_fingerprint=schema.fingerprint.hex(),
            kcv=local.encoder.kcv.hex(),
            payload_sha256=payload_digest.hexdigest(),
            encoded_path=encoded_path,
            positions_path=positions_path,
            seconds=time.perf_counter() - started,
            workers=process_count,
        )
    finally:
        reader.close()
        shutil.rmtree(scratch, ignore_errors=True)

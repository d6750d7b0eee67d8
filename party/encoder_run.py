"""An encoder run: extract -> normalise -> tokenise -> encode -> shuffle -> encoded file.

Encodes the extract on every core (separate processes, spawned once this one has encoded its
first range; each range goes to whichever process is free). A UTF-8 CSV extract is cut into
byte ranges at line ends and each process reads its own ranges with Arrow's CSV parser
(party/extract.py), so only offsets go to a worker and only packed CLKs, id lines and problem
rows come back, in order; from the first range that holds a quote on (a quoted value may
span lines), and for Parquet or other encodings, the extract is read here with the csv
module and sent in chunks.
Columns are dictionary-encoded, so each distinct value is normalised and encoded once. At
most a few ranges or chunks are in flight, so memory stays flat however large the file. Each
record draws a random shuffle bucket as it is collected (its chunk goes to scratch grouped by
bucket); at the end each bucket is put in a random order and the run writes the CLKs bucket
by bucket with the encoded file's header, and a private positions file
(``record_id,position``, party/positions_file.py) that maps each shuffled position back to
the department's own record id and names the project and payload digest of its encoded file.
The positions file never leaves the department. Both files appear only if the whole run
succeeds.

This is a primitive: a department runs :func:`party.prepare.prepare_upload`, which also
leak-scans the output and signs its manifest in the same pass over the extract.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import multiprocessing
import operator
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from party.extract import (
    ByteRange,
    CsvRangeError,
    ExtractChunk,
    ReadProgress,
    csv_chunks_from,
    csv_data_ranges,
    csv_rows_at,
    open_extract,
    read_csv_range,
)
from party.id_digests import line_digests
from party.mapping import BoundMapping, DepartmentMapping
from party.mask_rows import or_mask_rows
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
    """Chooses rows of the extract as the encoder reads it (in the calling process), sees
    the rows it chose, and where each kept row's CLK landed: lets a caller sample rows in the
    same pass. The encoder reads the chosen rows again only where its workers read the file."""

    def start(self, header: list[str], date_columns: frozenset[str]) -> None: ...

    def choose(self, first_row: int, count: int) -> list[int]:
        """Of the next ``count`` rows (the first is data row ``first_row``), the offsets
        (ascending, distinct) of those it wants to see."""

    def take(self, rows: list[list[str]]) -> None:
        """The rows it chose in the last :meth:`choose`, in the same order."""

    def placed(self, row_numbers: npt.NDArray[np.int64], positions: npt.NDArray[np.int64]) -> None:
        """``row_numbers[i]`` (a 1-based data row) was encoded at shuffled ``positions[i]``."""


PARALLEL_FROM_BYTES = 4 << 20  # smaller extracts encode in-process: a worker takes ~1 s to start
_TABLE_ROWS = 1 << 17  # distinct raw values remembered per field (8 MiB at 512 bits)
_DIRECT_AFTER = 50_000  # values a table looks up before it may stop remembering
# (The default schema's birth group holds about 73,000 (sex, date of birth) pairs over a
# century of dates: they must fit, or the table would start again every chunk.)


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

    A field whose values are nearly all distinct (postcodes) gains nothing from remembering
    them and pays a lookup and an insertion per value: once the table has seen
    ``_DIRECT_AFTER`` values after its first chunk and found fewer than one in ten, it
    stops remembering (``remember`` False) and only holds each chunk's masks; the encoder
    then reads that column plain, not dictionary-encoded.
    """

    __slots__ = ("capacity", "chunks", "hits", "lookups", "masks", "remember", "rows", "used")

    def __init__(self, words: int) -> None:
        self.capacity = _TABLE_ROWS
        self.rows: dict[Any, int] = {}
        self.masks = np.zeros((min(1024, self.capacity), words), dtype=np.uint64)
        self.used = 1
        self.remember = True
        self.chunks = 0
        self.lookups = 0
        self.hits = 0

    def note(self, lookups: int, hits: int) -> None:
        """Count a chunk's lookups and how many found their value; stop remembering a field
        whose values rarely repeat. The first chunk is not counted: it finds nothing (a
        chunk's values are distinct), and at 100,000 rows it alone could hold more than
        ``_DIRECT_AFTER`` values that repeat in every later chunk ((sex, date) pairs)."""
        self.chunks += 1
        if self.chunks == 1:
            return
        self.lookups += lookups
        self.hits += hits
        if self.lookups >= _DIRECT_AFTER and self.hits * 10 < self.lookups:
            self.remember = False
            self.rows.clear()

    def start_chunk(self) -> None:
        """A table that does not remember starts every chunk empty (row 0: missing)."""
        if not self.remember:
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
        if self.remember:
            self.rows.update(zip(raws, range(start, start + len(raws)), strict=True))
        self.used += len(raws)


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    """What encoding one chunk or byte range gives back: array-sized buffers and the few
    problem rows, never a per-row Python object (these cross between processes). Problem
    rows are numbered as the chunk was (a byte range from 1: the caller shifts them)."""

    rows: int
    """Data rows read."""
    clks: bytes
    ids: bytes
    """Kept records' ids, one per line, UTF-8."""
    id_digests: bytes
    """An 8-byte digest of each kept record's id, to find repeats."""
    skipped: list[RowProblem]
    blanked: list[RowProblem]
    # Per schema field: kept records with no value for it (blanked ones included).
    missing: list[int]
    # Under the "fail" policy: the first unusable row. Carried as data, not raised in the
    # worker: our errors take keyword-only context and do not survive pickling back from a
    # worker process (the pool would report a broken process instead).
    failure: RowProblem | None = None
    quoted: bool = False
    """A byte range that holds a quote was not read: read on from its start with csv."""
    invalid_row: int | None = None
    """A row that is not valid CSV (numbered as the problems are)."""
    segment: _ScratchSegment | None = None
    """Under a fresh shuffle: where the process put the kept records' CLKs (``clks`` is
    then empty)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _ShuffleDraw:
    """What a process needs to send one chunk's records to random shuffle buckets: a seed
    derived from the run's entropy and where the chunk starts in the extract (so the buckets
    depend neither on which process encodes the chunk nor on how many chunks were queued
    ahead), the bucket count and the scratch directory."""

    seed: int
    buckets: int
    scratch_dir: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _ScratchSegment:
    """One chunk's CLKs on a process's scratch file, grouped by shuffle bucket: from row
    ``offset`` of ``path``, ``counts[b]`` records of bucket b after those of buckets before
    it; ``buckets`` holds each kept record's bucket (int32, extract order)."""

    path: str
    offset: int
    counts: bytes
    buckets: bytes


def _stable_order(buckets: npt.NDArray[np.int32], count: int) -> npt.NDArray[np.intp]:
    """``np.argsort(buckets, kind="stable")`` for bucket numbers below ``count``: as int16
    where they fit, which numpy sorts by radix (about 6x faster at a million)."""
    if count <= 1 << 15:
        return np.argsort(buckets.astype(np.int16), kind="stable")
    return np.argsort(buckets, kind="stable")


def _draw_buckets(draw: _ShuffleDraw, count: int) -> npt.NDArray[np.int32]:
    """The random shuffle bucket of each of a chunk's ``count`` kept records."""
    generator = np.random.Generator(np.random.PCG64(draw.seed))
    return generator.integers(0, draw.buckets, count, dtype=np.int32)


def _to_scratch(clks: npt.NDArray[np.uint64], draw: _ShuffleDraw) -> _ScratchSegment:
    """Append a chunk's hardened CLKs (extract order) to this process's scratch file, grouped
    by the random buckets they draw: the process that encoded them writes them, not the
    collecting one. (An encoder run builds its CLKs grouped already: :func:`_append_scratch`.)"""
    chosen = _draw_buckets(draw, len(clks))
    return _append_scratch(clks[_stable_order(chosen, draw.buckets)], chosen, draw)


def _append_scratch(
    grouped: npt.NDArray[np.uint64], chosen: npt.NDArray[np.int32], draw: _ShuffleDraw
) -> _ScratchSegment:
    """Append a chunk's hardened CLKs, already grouped by bucket (in the stable order of
    ``chosen``, each kept record's bucket in extract order), to this process's scratch file."""
    grouped = np.ascontiguousarray(grouped)
    path = Path(draw.scratch_dir) / f"clks-{os.getpid()}.bin"
    with path.open("ab") as out:
        offset = out.tell()
        out.write(grouped.data)
    return _ScratchSegment(
        path=str(path),
        offset=offset // max(1, grouped.shape[1] * 8),
        counts=np.bincount(chosen, minlength=draw.buckets).astype(np.int64).tobytes(),
        buckets=chosen.tobytes(),
    )


_STABLE_ID_BITS = 21  # a salted field's table key: its raw value's id, then each salt's
_STABLE_ID_LIMIT = 1 << 20  # ids in use before an id space starts again (so each < 2**21)


class _StableIds:
    """Small ids for values (raw values of a salted field, or normalised values of a salt
    field) that stay the same from chunk to chunk, so table keys can be packed from them.
    Bounded: when a chunk's new values would take the ids past ``_STABLE_ID_LIMIT``, the
    ids start again (:meth:`make_room` says so, and the caller forgets the keys made of
    them)."""

    __slots__ = ("ids", "values")

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.values: list[Any] = []

    def make_room(self, values: list[Any]) -> bool:
        """Give each of ``values`` an id; True if that meant forgetting every earlier one."""
        ids = self.ids
        fresh = [value for value in dict.fromkeys(values) if value not in ids]
        if not fresh:
            return False
        forget = len(self.values) + len(fresh) > _STABLE_ID_LIMIT and bool(self.values)
        if forget:
            ids.clear()
            self.values = []
            fresh = list(dict.fromkeys(values))
        ids.update(zip(fresh, range(len(self.values), len(self.values) + len(fresh)), strict=True))
        self.values.extend(fresh)
        return forget

    def ids_of(self, values: list[Any]) -> npt.NDArray[np.int64]:
        """The ids of ``values`` (given ids by :meth:`make_room` first)."""
        return np.fromiter(map(self.ids.__getitem__, values), np.int64, len(values))


def _unpack_keys(
    packed: list[int], raw_values: list[Any], salt_values: list[list[Any]]
) -> list[tuple[Any, ...]]:
    """The (raw value, salt values...) each packed table key of a salted field stands for:
    the raw value's stable id, then each salt's, ``_STABLE_ID_BITS`` apiece."""
    mask = (1 << _STABLE_ID_BITS) - 1
    last = len(salt_values)
    return [
        (
            raw_values[key >> (_STABLE_ID_BITS * last)],
            *(
                values[(key >> (_STABLE_ID_BITS * (last - 1 - place))) & mask]
                for place, values in enumerate(salt_values)
            ),
        )
        for key in packed
    ]


class _Column:
    """One extract column of a chunk, dictionary-encoded: row r holds
    ``distinct[codes[r]]`` (each value once, except in a column read plain, where
    ``distinct`` is every row's value: the tables treat a repeat as two values)."""

    __slots__ = ("codes", "distinct")

    def __init__(self, distinct: list[str], codes: npt.NDArray[np.intp]) -> None:
        self.distinct = distinct
        self.codes = codes

    @classmethod
    def of(cls, values: list[str]) -> _Column:
        index = {value: code for code, value in enumerate(dict.fromkeys(values))}
        codes = np.fromiter(map(index.__getitem__, values), dtype=np.intp, count=len(values))
        return cls(list(index), codes)


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
        self.source = source
        self.delimiter = mapping.dialect.delimiter
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
        # Per salt field: raw value -> stable id of its normalised value (None where
        # missing or rejected) in self._salt_ids.
        self._salt_cache: dict[str, dict[str, int]] = {name: {} for name in self._salt_fields}
        # Stable small ids, so that a salted field's table keys are ints packed in numpy
        # rather than (value, salts) tuples built and hashed per distinct pair: per salt
        # field, of its normalised values; per salted field, of its raw values.
        self._salt_ids: dict[str, _StableIds] = {name: _StableIds() for name in self._salt_fields}
        self._value_ids: dict[int, _StableIds] = {
            index: _StableIds()
            for index in range(len(schema.fields))
            if self.encoder.field_salts(index)
        }
        self._wanted = sorted(
            {reader.column_index for reader in self.bound.fields if reader.column_index is not None}
        )

    def _salt_ids_of(self, name: str, distinct: list[str]) -> tuple[npt.NDArray[np.int64], bool]:
        """The stable id (in ``self._salt_ids[name]``) of the normalised value of salt field
        ``name`` for each distinct raw value (None where missing or rejected: such a value
        salts nothing, and its own field reports it), and whether the ids started again
        (the tables keyed by them must forget)."""
        cache = self._salt_cache[name]
        stable = self._salt_ids[name]
        found: list[int | None] = list(map(cache.get, distinct))  # one lookup per value
        restarted = False
        if None in found:
            fresh_at: Iterable[int] = [at for at, hit in enumerate(found) if hit is None]
            fresh = list(map(distinct.__getitem__, fresh_at))
            if len(cache) + len(fresh) > _TABLE_ROWS:
                cache.clear()  # the stable ids stay: the ids found are still good
                fresh_at, fresh = range(len(distinct)), list(distinct)
            normalised = self._normalise_salts(name, fresh)
            if stable.make_room(normalised):  # every cached id is gone: give these new ones
                restarted = True
                cache.clear()
                fresh_at, fresh = range(len(distinct)), list(distinct)
                normalised = self._normalise_salts(name, fresh)
                stable.make_room(normalised)
            fresh_ids = stable.ids_of(normalised).tolist()
            cache.update(zip(fresh, fresh_ids, strict=True))
            for at, stable_id in zip(fresh_at, fresh_ids, strict=True):
                found[at] = stable_id
        return np.array(found, dtype=np.int64), restarted

    def _plain_columns(self) -> set[int]:
        """Extract columns not worth dictionary-encoding: each field that reads one has
        stopped remembering values (they rarely repeat: postcodes), and none salts a field."""
        salting = {self.bound.fields[index].column_index for index in self._salt_fields.values()}
        remembered = {
            reader.column_index
            for reader, table in zip(self.bound.fields, self._tables, strict=True)
            if table.remember
        }
        return set(self._wanted) - remembered - salting

    def _normalise_salts(self, name: str, raws: list[str]) -> list[str | None]:
        """Normalised values of salt field ``name`` (None where rejected)."""
        reader = self.bound.fields[self._salt_fields[name]]
        try:
            return reader.normalise_many(raws)
        except ValueRejectedError:
            values: list[str | None] = []
            for raw in raws:
                try:
                    values.append(reader.normalise(raw))
                except ValueRejectedError:
                    values.append(None)
            return values

    def encode(self, chunk: ExtractChunk, draw: _ShuffleDraw | None = None) -> _ChunkResult:
        """Encode a chunk of rows (the csv module's or Parquet's): its columns are
        dictionary-encoded here, then encoded as :meth:`encode_columns` does."""
        rows = chunk.rows
        first = chunk.first_row
        width = self.bound.width
        problems: dict[int, tuple[str | None, str]] = {}  # row offset -> (field, reason)
        if set(map(len, rows)) - {width}:
            blank_row = [""] * width
            fixed = []
            for offset, row in enumerate(rows):
                if len(row) != width:
                    problems.setdefault(
                        offset, (None, f"has {len(row)} cells but the header has {width}")
                    )
                    row = blank_row
                fixed.append(row)
            rows = fixed
        # Columns by C-level maps (a Python loop indexing every row per field costs more).
        columns = {
            index: _Column.of(list(map(operator.itemgetter(index), rows))) for index in self._wanted
        }
        record_ids = list(map(operator.itemgetter(self.bound.record_id_index), rows))
        return self.encode_columns(first, len(rows), record_ids, columns, problems, draw)

    def encode_range(
        self, path: str, byte_range: ByteRange, draw: _ShuffleDraw | None = None
    ) -> _ChunkResult:
        """Read one byte range of a CSV extract (Arrow's parser) and encode it; its problem
        rows are numbered from 1 within the range."""
        try:
            read = read_csv_range(
                path,
                byte_range,
                width=self.bound.width,
                delimiter=self.delimiter,
                wanted=self._wanted,
                record_id=self.bound.record_id_index,
                plain=self._plain_columns(),
            )
        except CsvRangeError as error:
            return _ChunkResult(0, b"", b"", b"", [], [], [], invalid_row=error.row)
        if read is None:
            return _ChunkResult(0, b"", b"", b"", [], [], [], quoted=True)
        if read.rows is not None:
            return self.encode(ExtractChunk(first_row=1, rows=read.rows), draw)
        columns = {
            index: _Column(distinct, codes.astype(np.intp, copy=False))
            for index, (distinct, codes) in read.columns.items()
        }
        return self.encode_columns(1, read.row_count, read.record_ids, columns, {}, draw)

    def encode_columns(
        self,
        first: int,
        row_count: int,
        raw_ids: list[str],
        columns: dict[int, _Column],
        problems: dict[int, tuple[str | None, str]],
        draw: _ShuffleDraw | None = None,
    ) -> _ChunkResult:
        """Encode a chunk column by column: per-row interpreter work is what limits a Python
        encoder, so each field's distinct raw values become rows of a mask table (each new
        one normalised once, all of them encoded in one column call) and the CLKs are the OR
        of the fields' table rows, gathered in numpy."""
        blanked: list[RowProblem] = []
        missing_masks: list[npt.NDArray[np.bool_] | None] = []  # None: the field is absent
        record_ids = list(map(str.strip, raw_ids))
        if "" in record_ids or not all(map(str.isprintable, record_ids)):
            for offset, record_id in enumerate(record_ids):
                if not record_id or not record_id.isprintable():
                    problems.setdefault(
                        offset, (None, "record id is empty or has control characters")
                    )
        # Per field: where its words start, its mask table and each row's table row. The
        # records' bits are ORed in at the end, once the kept rows and their order are known.
        field_rows: list[tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.intp]]] = []
        # Per salting field: an id per distinct normalised value, and that id for each row.
        salt_rows: dict[str, tuple[list[str | None], npt.NDArray[np.intp]]] = {}
        for name, index in self._salt_fields.items():
            column_index = self.bound.fields[index].column_index
            stable = self._salt_ids[name]
            if column_index is None:
                restarted = stable.make_room([None])
                salt_rows[name] = (stable.values, np.full(row_count, stable.ids[None], np.int64))
            else:
                column = columns[column_index]
                ids, restarted = self._salt_ids_of(name, column.distinct)
                salt_rows[name] = (stable.values, ids[column.codes])
            if restarted:  # ids start again: so do the tables keyed by them
                for salted in self._value_ids:
                    if name in self.encoder.field_salts(salted):
                        self._tables[salted].rows.clear()
        for field_index, reader in enumerate(self.bound.fields):
            name, column_index = reader.name, reader.column_index
            normalise, normalise_many = reader.normalise, reader.normalise_many
            if column_index is None:
                missing_masks.append(None)
                continue
            table = self._tables[field_index]
            column = columns[column_index]
            keys: list[Any] = column.distinct
            codes = column.codes
            salts = self.encoder.field_salts(field_index)
            details: list[Any] | None = None  # set where the keys are packed ints
            unpack: tuple[list[Any], list[list[Any]]] = ([], [])
            value_ids = self._value_ids.get(field_index)
            if value_ids is not None and value_ids.make_room(keys):
                table.rows.clear()  # raw ids start again: the keys made of them are gone
            if (
                value_ids is not None
                and len(salts) <= 2
                and max(len(value_ids.values), *(len(salt_rows[salt][0]) for salt in salts))
                <= _STABLE_ID_LIMIT
            ):  # the table remembers (raw value, salt values) as one int of stable ids
                combined = value_ids.ids_of(keys).astype(np.int64)[codes]
                for salt in salts:
                    combined = (combined << _STABLE_ID_BITS) | salt_rows[salt][1]
                distinct_keys, codes = np.unique(combined, return_inverse=True)
                codes = codes.reshape(-1)
                keys = distinct_keys.tolist()
                unpack = (value_ids.values, [salt_rows[salt][0] for salt in salts])
                details = keys  # unpacked below for the fresh keys only
            elif salts:  # the table remembers (raw value, salt values) pairs
                # Each salt's ids compacted to this chunk's, so the mixed radix stays small.
                compact = {}
                for salt in salts:
                    present_ids, salt_ids = np.unique(salt_rows[salt][1], return_inverse=True)
                    compact[salt] = (
                        [salt_rows[salt][0][item] for item in present_ids.tolist()],
                        salt_ids.reshape(-1),
                    )
                combined = codes.astype(np.int64)
                for salt in salts:
                    salt_values, salt_ids = compact[salt]
                    combined = combined * len(salt_values) + salt_ids
                distinct_pairs, codes = np.unique(combined, return_inverse=True)
                codes = codes.reshape(-1)
                parts = []
                rest = distinct_pairs
                for salt in reversed(salts):
                    salt_values = compact[salt][0]
                    rest, place = np.divmod(rest, len(salt_values))
                    parts.append([salt_values[item] for item in place.tolist()])
                keys = list(
                    zip([keys[item] for item in rest.tolist()], *reversed(parts), strict=True)
                )
            # Each key's table row; -1: not in the table (new, or rejected).
            table.start_chunk()
            if table.remember:
                key_rows = np.array(
                    list(map(table.rows.get, keys, itertools.repeat(-1))), dtype=np.intp
                )
                fresh_at = np.flatnonzero(key_rows < 0)
                table.note(len(keys), len(keys) - len(fresh_at))
            else:
                key_rows = np.full(len(keys), -1, dtype=np.intp)
                fresh_at = np.arange(len(keys))
            rejected: dict[Any, str] = {}
            if len(fresh_at):
                # Work out each distinct new value once.
                if table.make_room(len(fresh_at)):
                    fresh_at = np.arange(len(keys))  # forgotten: every value is new
                    table.make_room(len(fresh_at))
                # Values or (value, salts): all of them where the table does not remember.
                raws = (
                    keys
                    if len(fresh_at) == len(keys)
                    else list(map(keys.__getitem__, fresh_at.tolist()))
                )
                if details is not None:  # packed ints: their (value, salts) for the fresh ones
                    details = _unpack_keys(raws, *unpack)
                else:
                    details = raws
                texts: list[str] = [key[0] for key in details] if salts else raws
                try:  # normalised as a batch; a rejected value sends us the long way
                    if salts:  # many (value, salt) keys share a value: normalise each once
                        unique = list(dict.fromkeys(texts))
                        normal = dict(zip(unique, normalise_many(unique), strict=True))
                        values: list[str | None] = list(map(normal.__getitem__, texts))
                    else:
                        values = normalise_many(texts)
                except ValueRejectedError:
                    values = []
                    for raw, text in zip(raws, texts, strict=True):
                        try:
                            values.append(normalise(text))
                        except ValueRejectedError as error:
                            rejected[raw] = error.message
                            values.append(None)
                fresh_rows = np.zeros(len(raws), dtype=np.intp)  # missing: row 0
                present: npt.NDArray[np.bool_] | slice
                new_values: list[str]
                if None in values:  # some missing or rejected
                    present = np.fromiter(
                        map(operator.is_not, values, itertools.repeat(None)), bool, len(values)
                    )
                    if rejected:
                        fresh_rows[[raw in rejected for raw in raws]] = -1  # never remembered
                    missing_raws = [
                        raw
                        for raw, value in zip(raws, values, strict=True)
                        if value is None and raw not in rejected
                    ]
                    if table.remember:
                        table.rows.update(dict.fromkeys(missing_raws, 0))
                    kept = present.tolist()
                    new_raws = list(itertools.compress(raws, kept))
                    new_details = list(itertools.compress(details, kept))
                    new_values = list(itertools.compress(values, kept))  # type: ignore[arg-type]
                else:  # every value present: no copies
                    present = slice(None)
                    new_raws, new_details, new_values = raws, details, values  # type: ignore[assignment]
                if new_values:
                    salt_columns = {
                        salt: [key[1 + place] for key in new_details]
                        for place, salt in enumerate(salts)
                    }
                    first_new = table.used
                    table.add(
                        new_raws,
                        self.encoder.field_masks(field_index, new_values, salt_columns or None),
                    )
                    fresh_rows[present] = np.arange(first_new, first_new + len(new_raws))
                key_rows[fresh_at] = fresh_rows
            is_rejected = key_rows < 0
            code_array = np.where(is_rejected, 0, key_rows)[codes]
            if rejected:
                blank_allowed = (
                    self.policy is BadRowPolicy.BLANK and name not in self.bound.required_fields
                )
                for offset in np.flatnonzero(is_rejected[codes]).tolist():
                    reason = rejected[keys[codes[offset]]]
                    if blank_allowed:
                        blanked.append(RowProblem(row=first + offset, field=name, reason=reason))
                    else:
                        problems.setdefault(offset, (name, reason))
            missing_masks.append(code_array == 0)
            field_rows.append((self._ranges[field_index][0], table.masks, code_array))
        keep: npt.NDArray[np.intp] | None = None
        if problems:
            keep = np.setdiff1d(np.arange(row_count), np.fromiter(problems, np.intp))
            record_ids = [record_ids[offset] for offset in keep.tolist()]
            blanked = [problem for problem in blanked if problem.row - first not in problems]
            missing_masks = [None if mask is None else mask[keep] for mask in missing_masks]
        skipped = [
            RowProblem(row=first + offset, field=field, reason=reason)
            for offset, (field, reason) in sorted(problems.items())
        ]
        if self.policy is BadRowPolicy.FAIL and skipped:
            # Report the chunk's first bad row, whichever field or check found it.
            return _ChunkResult(row_count, b"", b"", b"", [], [], [], failure=skipped[0])
        missing = [
            len(record_ids) if mask is None else int(np.count_nonzero(mask))
            for mask in missing_masks
        ]
        # Kept ids are printable, so no line break or surrogate is inside one.
        id_lines = ("\n".join(record_ids) + "\n").encode() if record_ids else b""
        # Under a fresh shuffle the records are built in the order of their buckets (each
        # field's row numbers are put in that order, not the finished CLKs).
        order = keep
        chosen = None
        if draw is not None:
            chosen = _draw_buckets(draw, len(record_ids))
            grouped = _stable_order(chosen, draw.buckets)
            order = grouped if keep is None else keep[grouped]
        clks = np.zeros((len(record_ids), self.encoder.input_layout.total_words), dtype=np.uint64)
        for start, masks, code_array in field_rows:
            or_mask_rows(clks, start, masks, code_array if order is None else code_array[order])
        hardened = self.encoder.harden(clks)
        return _ChunkResult(
            row_count,
            b"" if draw else hardened.tobytes(),
            id_lines,
            line_digests(id_lines).tobytes(),
            skipped,
            blanked,
            missing,
            segment=(
                _append_scratch(hardened, chosen, draw)
                if draw is not None and chosen is not None
                else None
            ),
        )


_worker: _ChunkEncoder | None = None


def _start_worker(*args: object) -> None:
    global _worker
    _worker = _ChunkEncoder(*args)  # type: ignore[arg-type]


def _worker_pool(encoder_args: tuple[object, ...], workers: int) -> ProcessPoolExecutor:
    """``workers`` encoder processes, each a fresh interpreter (spawned) that builds its own
    encoder from ``encoder_args``, on every platform. Not forked: by the time they start,
    this process runs threads (Arrow's CSV reader, OpenBLAS, the scratch writer), and a
    forked child inherits whatever lock one of them held (Python 3.12 warns of it; 3.14 no
    longer forks by default). A worker spends about a second importing and loading its
    kernels; this process encodes ranges itself meanwhile. Each worker draws its own random
    bytes (BLIP), as the workers share no state."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=encoder_args,
    )


def _encode_in_worker(chunk: ExtractChunk, draw: _ShuffleDraw | None) -> _ChunkResult:
    if _worker is None:
        raise InvariantError("the encoder worker was not started")
    return _worker.encode(chunk, draw)


def _encode_range_in_worker(
    path: str, byte_range: ByteRange, draw: _ShuffleDraw | None
) -> _ChunkResult:
    if _worker is None:
        raise InvariantError("the encoder worker was not started")
    return _worker.encode_range(path, byte_range, draw)


def _shifted(problem: RowProblem, base: int) -> RowProblem:
    return dataclasses.replace(problem, row=problem.row + base) if base else problem


def _range_bytes(path: Path | str, chunk_rows: int) -> int:
    """Bytes per range: about ``chunk_rows`` rows, at the average length of the first lines."""
    with Path(path).open("rb") as handle:
        head = handle.read(1 << 16)
    lines = max(1, head.count(b"\n"))
    return max(1, chunk_rows * len(head) // lines)


def _shuffle_buckets(path: Path | str, clk_bytes: int) -> int:
    """Buckets for a fresh shuffle of about ``_BUCKET_BYTES`` of CLKs each, from the rows the
    extract is likely to hold (a Parquet file's metadata; a CSV file's size over the average
    length of its first lines). A poor guess only makes buckets larger or smaller."""
    source = Path(path)
    if source.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as parquet  # type: ignore[import-untyped]

        rows = parquet.ParquetFile(source).metadata.num_rows
    else:
        rows = source.stat().st_size // _range_bytes(source, 1)
    return int(min(1 << 16, max(1, -(-rows * clk_bytes // _BUCKET_BYTES))))


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _fresh_generator() -> np.random.Generator:
    # The shuffle only has to be unpredictable to the linkage unit, which never sees it; a
    # PCG64 stream seeded with 128 bits from the OS CSPRNG gives that at numpy speed.
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _first_repeated_id(digests: npt.NDArray[np.int64], ids_scratch: Path) -> tuple[int, int] | None:
    """The record indices (earlier, later) of the first record whose id repeats an earlier
    one, or None. Equal digests are only candidates: their ids are compared to confirm."""
    ordered = np.sort(digests)  # no equal digests (nearly always): no order needed
    if not np.any(ordered[1:] == ordered[:-1]):
        return None
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


def _refuse_repeated_id(
    repeat: tuple[int, int] | None, row_numbers: list[npt.NDArray[np.int64]]
) -> None:
    """Raise for the first repeated record id (:func:`_first_repeated_id`), if any, naming
    the rows (``row_numbers``: each encoded record's data row, per chunk), never the id."""
    if repeat is not None:
        all_rows = np.concatenate(row_numbers)
        raise RecordError(
            f"record id repeats the id of row {int(all_rows[repeat[0]])}; record ids must be "
            "unique",
            row=int(all_rows[repeat[1]]),
        )


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

# Where a chunk starts, as a SeedSequence spawn key: a byte range by its first byte, a csv
# module or Parquet chunk by its first data row (the kinds differ, so the keys never clash).
_ChunkStart = tuple[int, int]
_RANGE_START = 0
_CHUNK_START = 1


class _BucketedScratch:
    """The encoded records of a fresh shuffle, each in a random bucket, on the scratch files
    of the processes that encoded them.

    The shuffle is the order of independent random keys ``(bucket, u)``: each record draws
    its bucket (uniform) where its chunk is encoded, from a seed derived from the run's
    entropy and the chunk's start in the extract (:meth:`draw`), and each bucket's records
    are put in a uniformly random order at the end, which together give a uniformly random
    permutation.
    A chunk is written grouped by bucket (:func:`_to_scratch`), so at the end each bucket is
    a run of segments (one per chunk) to read back, and one bucket of CLKs is held at a
    time: the records are read and written once more, not twice (the two passes of
    :func:`_write_shuffled`, which an order fixed in advance still takes), and the process
    collecting results never copies a CLK until the end.
    """

    __slots__ = ("_buckets", "_clk_bytes", "_entropy", "_generator", "_scratch_dir", "_segments")

    def __init__(
        self, scratch_dir: Path, *, clk_bytes: int, buckets: int, generator: np.random.Generator
    ) -> None:
        self._scratch_dir = scratch_dir
        self._clk_bytes = clk_bytes
        self._buckets = buckets
        self._generator = generator
        self._entropy = int.from_bytes(generator.bytes(16), "little")
        self._segments: list[_ScratchSegment] = []

    def draw(self, start: _ChunkStart) -> _ShuffleDraw:
        """The seed of the chunk that starts at ``start``.

        Not the generator's next draw: ranges are queued (and seeded) ahead of the one being
        taken, how far ahead depends on the process count, and those after a range holding a
        quote are dropped and read again as chunks. Distinct starts give independent streams
        (numpy's SeedSequence spawn keys), so the buckets stay uniform and independent.
        """
        sequence = np.random.SeedSequence(self._entropy, spawn_key=start)
        return _ShuffleDraw(
            seed=int.from_bytes(sequence.generate_state(4, np.uint32).tobytes(), "little"),
            buckets=self._buckets,
            scratch_dir=str(self._scratch_dir),
        )

    def add(self, segment: _ScratchSegment) -> None:
        """Take one chunk's segment, in extract order."""
        self._segments.append(segment)

    def _counts(self) -> npt.NDArray[np.int64]:
        return np.stack(
            [np.frombuffer(segment.counts, dtype=np.int64) for segment in self._segments]
        )

    def positions(self) -> tuple[npt.NDArray[np.int64], list[npt.NDArray[np.int64]]]:
        """Each record's shuffled position (extract order), and per bucket the order its
        records (in extract order) take within it."""
        sizes: npt.NDArray[np.int64] = self._counts().sum(axis=0)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        orders = [self._generator.permutation(size) for size in map(int, sizes)]
        buckets = np.concatenate(
            [np.frombuffer(segment.buckets, dtype=np.int32) for segment in self._segments]
        )
        position_of = np.empty(len(buckets), dtype=np.int64)
        within = [order + start for order, start in zip(orders, starts.tolist(), strict=False)]
        position_of[_stable_order(buckets, self._buckets)] = np.concatenate(within)
        return position_of, orders

    def write(self, writer: ClkFileWriter, orders: list[npt.NDArray[np.int64]]) -> None:
        """Write the records to ``writer`` in shuffled order, bucket by bucket. A background
        thread hashes and writes one bucket while the next is read and put in order (both
        release the GIL), from two buffers used in turn."""
        counts = self._counts()
        # Row of each chunk's segment of each bucket in its scratch file.
        offsets = np.array([segment.offset for segment in self._segments], dtype=np.int64)
        segment_starts = offsets[:, None] + np.cumsum(counts, axis=1) - counts
        largest = max((len(order) for order in orders), default=0)
        width = self._clk_bytes
        buffers = [np.empty((largest, width), dtype=np.uint8) for _ in range(2)]
        gathered = np.empty((largest, width), dtype=np.uint8)
        view = memoryview(gathered.reshape(-1).data)
        paths = sorted({segment.path for segment in self._segments})
        with contextlib.ExitStack() as files:
            handles = {path: files.enter_context(open(path, "rb", buffering=0)) for path in paths}
            sources = [handles[segment.path] for segment in self._segments]
            background = files.enter_context(ThreadPoolExecutor(max_workers=1))
            writing: list[Future[None]] = [Future(), Future()]
            for future in writing:
                future.set_result(None)
            for bucket, order in enumerate(orders):
                size = len(order)
                filled = 0
                for chunk in np.flatnonzero(counts[:, bucket]).tolist():
                    length = int(counts[chunk, bucket]) * width
                    source = sources[chunk]
                    source.seek(int(segment_starts[chunk, bucket]) * width)
                    if source.readinto(view[filled : filled + length]) != length:
                        raise InvariantError("the encoder's scratch file is shorter than written")
                    filled += length
                turn = bucket % 2
                writing[turn].result()  # that buffer's last write is done
                shuffled = buffers[turn][:size]
                # Whole records as one opaque item each: numpy copies a record per index
                # instead of stepping through its bytes (about half the time).
                record = np.dtype((np.void, width))
                shuffled.view(record).reshape(-1)[order] = gathered[:size].view(record).reshape(-1)
                writing[turn] = background.submit(writer.write, shuffled)
            for future in writing:
                future.result()


def _write_shuffled(
    writer: ClkFileWriter,
    clk_scratch: Path,
    position_of: npt.NDArray[np.int64],
    clk_bytes: int,
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
    chunk_rows: int = 100_000,
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

    ``workers``: encoder processes (default: one a core), spawned for an extract of
    ``PARALLEL_FROM_BYTES`` or more; a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard, as each worker imports the script's main module.

    ``chunk_rows``: about how many rows a process reads and encodes at once. The work per
    chunk is per distinct value of each field (a date of birth, a (sex, date of birth) pair),
    so larger chunks look each up fewer times: at 100,000 rows a 1M-row default-schema encode
    took about three quarters of the CPU time of 20,000-row chunks, for about 70 MiB more
    peak memory (docs/benchmarks.md); memory stays flat as the extract grows either way.
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
    ranges = (
        None
        if reader.date_columns or Path(extract_path).suffix.lower() in (".parquet", ".pq")
        else csv_data_ranges(
            extract_path, mapping.dialect, range_bytes=_range_bytes(extract_path, chunk_rows)
        )
    )
    if not ranges:
        ranges = None

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
        # An 8-byte digest a row finds repeated record ids; a repeat it reports is confirmed
        # on the ids themselves before failing.
        id_digests: list[npt.NDArray[np.int64]] = []

        with (
            clk_scratch.open("wb") as clk_out,
            ids_scratch.open("wb") as ids_out,
        ):
            bucketed = (
                None
                if same_positions is not None
                else _BucketedScratch(
                    scratch,
                    clk_bytes=clk_bytes,
                    buckets=_shuffle_buckets(extract_path, clk_bytes),
                    generator=generator or _fresh_generator(),
                )
            )

            def collect(result: _ChunkResult, base: int) -> None:
                """Take one chunk's or range's result, in extract order; ``base`` is added to
                its row numbers (a range numbers its rows from 1)."""
                nonlocal skipped_rows, blanked_values, blanked_rows, first_problem
                if result.invalid_row is not None:
                    raise ExtractError(
                        f"row {base + result.invalid_row} is not valid CSV (an unclosed quote "
                        "or a stray NUL byte)",
                        path=source,
                    )
                if result.failure is not None:
                    raise _shifted(result.failure, base).error()
                skipped = [_shifted(problem, base) for problem in result.skipped]
                blanked = [_shifted(problem, base) for problem in result.blanked]
                first_row = counts["read"] + 1
                if result.segment is not None and bucketed is not None:
                    bucketed.add(result.segment)
                else:
                    clk_out.write(result.clks)
                ids_out.write(result.ids)
                digests = np.frombuffer(result.id_digests, dtype=np.int64)
                counts["read"] += result.rows
                counts["encoded"] += len(digests)
                skipped_rows += len(skipped)
                blanked_values += len(blanked)
                blanked_rows += len({problem.row for problem in blanked})
                for problem in skipped:
                    problems[problem.field or "(row)"] += 1
                    skipped_by_field[problem.field or "(row)"] += 1
                for problem in blanked:
                    problems[problem.field or "(row)"] += 1
                    blanked_by_field[problem.field or "(row)"] += 1
                for index, count in enumerate(result.missing):
                    missing_by_field[index] += count
                if first_problem is None and (skipped or blanked):
                    first_problem = min(skipped + blanked, key=lambda p: p.row)
                if max_bad_rows.rows is not None and not max_bad_rows.allows(
                    skipped_rows + blanked_rows, counts["read"]
                ):
                    # A count is known to be exceeded before the end: stop reading now.
                    raise _too_many_bad_rows()
                kept = np.arange(first_row, first_row + result.rows, dtype=np.int64)
                if skipped:
                    kept = np.setdiff1d(kept, [problem.row for problem in skipped])
                row_numbers.append(kept)
                id_digests.append(digests)

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

            def report(read: ReadProgress | None) -> None:
                if progress:
                    progress(EncodeProgress(rows_read=counts["read"], read=read))

            # Workers are spawned (_worker_pool) once this process has encoded its first range
            # or chunk (a file of one range needs none); while they start (imports, about a
            # second) this process goes on encoding. Spawned at the start instead, they took
            # more CPU and the run was no shorter, side by side (docs/benchmarks.md).
            pools = contextlib.ExitStack()
            started_pool: list[ProcessPoolExecutor] = []

            def pool() -> ProcessPoolExecutor | None:
                if process_count == 1:
                    return None
                if not started_pool:
                    started_pool.append(
                        pools.enter_context(_worker_pool(encoder_args, process_count - 1))
                    )
                return started_pool[0]

            def encode_chunks(
                chunks: Iterator[ExtractChunk],
                read: Callable[[], ReadProgress | None],
            ) -> None:
                """The csv module's (or Parquet's) rows, chunk by chunk, in this process (the
                first, or with one process) or pickled to the pool."""
                pending: collections.deque[Future[_ChunkResult]] = collections.deque()
                for chunk in chunks:
                    if observer is not None:
                        wanted = observer.choose(chunk.first_row, len(chunk.rows))
                        observer.take([chunk.rows[offset] for offset in wanted])
                    workers_pool = pool() if counts["read"] or pending else None
                    draw = (
                        bucketed.draw((_CHUNK_START, chunk.first_row))
                        if bucketed is not None
                        else None
                    )
                    if workers_pool is None:
                        collect(local.encode(chunk, draw), 0)
                        report(read())
                        continue
                    pending.append(workers_pool.submit(_encode_in_worker, chunk, draw))
                    if len(pending) >= 2 * process_count:
                        collect(pending.popleft().result(), 0)
                        report(read())
                while pending:
                    collect(pending.popleft().result(), 0)
                    report(read())

            def encode_ranges() -> int | None:
                """Byte ranges of the CSV extract, each read and encoded by one process (this
                one or the pool's); returns where a range holding a quote starts (the rest is
                read with the csv module), or None when every range was encoded."""
                if ranges is None:
                    raise InvariantError("encode_ranges needs the extract's byte ranges")
                # In extract order: a worker's future, or a result this process worked out.
                pending: collections.deque[
                    tuple[Future[_ChunkResult] | _ChunkResult, ByteRange]
                ] = collections.deque()
                queued = collections.deque(ranges)
                window = 2 * process_count + 2  # results held at once: memory stays flat

                def take(result: _ChunkResult, byte_range: ByteRange) -> bool:
                    if result.quoted:
                        return False
                    base = counts["read"]
                    collect(result, base)
                    if observer is not None:
                        wanted = observer.choose(base + 1, result.rows)
                        observer.take(
                            csv_rows_at(extract_path, byte_range, wanted, delimiter=local.delimiter)
                        )
                    report(ReadProgress(done=byte_range.stop, total=size, unit="B"))
                    return True

                def ready(item: Future[_ChunkResult] | _ChunkResult) -> bool:
                    return isinstance(item, _ChunkResult) or item.done()

                # Load balancing: the workers always have a range queued behind the one they
                # encode; this process takes the results in order as they are ready and, while
                # the next one is not, encodes the next range itself.
                while queued or pending:
                    if pending and ready(pending[0][0]):
                        item, done = pending.popleft()
                    elif queued and len(pending) < window:
                        byte_range = queued.popleft()
                        draw = (
                            bucketed.draw((_RANGE_START, byte_range.start))
                            if bucketed is not None
                            else None
                        )
                        workers_pool = pool() if counts["read"] or pending else None
                        busy = sum(not ready(item) for item, _ in pending)
                        if workers_pool is not None and busy < 2 * (process_count - 1):
                            pending.append(
                                (
                                    workers_pool.submit(
                                        _encode_range_in_worker, source, byte_range, draw
                                    ),
                                    byte_range,
                                )
                            )
                        else:
                            pending.append(
                                (local.encode_range(source, byte_range, draw), byte_range)
                            )
                        continue
                    else:
                        item, done = pending.popleft()
                    result = item if isinstance(item, _ChunkResult) else item.result()
                    if not take(result, done):
                        for other, _ in pending:
                            if isinstance(other, Future):
                                other.cancel()
                        return done.start
                return None

            with pools:
                if ranges is None:
                    encode_chunks(iter(reader), reader.progress)
                else:
                    quoted_from = encode_ranges()
                    if quoted_from is not None:
                        with csv_chunks_from(
                            extract_path,
                            mapping.dialect,
                            start=quoted_from,
                            first_row=counts["read"] + 1,
                            chunk_rows=chunk_rows,
                        ) as rest:
                            encode_chunks(iter(rest), rest.progress)
                    if counts["read"] == 0:
                        raise ExtractError("file has a header but no data rows", path=source)

        record_count = counts["encoded"]
        if not max_bad_rows.allows(skipped_rows + blanked_rows, counts["read"]):
            raise _too_many_bad_rows()
        if record_count == 0:
            raise ExtractError(
                f"none of the {counts['read']} rows could be encoded (all were skipped)",
                path=source,
            )
        all_digests = np.concatenate(id_digests)
        id_digests.clear()  # what the shuffle needs per record is its 8-byte position only
        repeat_check: Future[tuple[int, int] | None] | None = None
        if bucketed is None:
            _refuse_repeated_id(_first_repeated_id(all_digests, ids_scratch), row_numbers)
        else:
            # A fresh shuffle needs no id until the positions file: the check (a sort of every
            # digest, which lets go of the GIL) runs in a thread while the encoded file is
            # written, and its answer is taken before either file is committed.
            checker = ThreadPoolExecutor(max_workers=1)
            repeat_check = checker.submit(_first_repeated_id, all_digests, ids_scratch)
            checker.shutdown(wait=False)
        del all_digests

        orders: list[npt.NDArray[np.int64]] = []
        if bucketed is None:
            if same_positions is None:
                raise InvariantError("a run without a fresh shuffle keeps earlier positions")
            position_of = _earlier_positions(
                Path(same_positions), ids_scratch, np.concatenate(row_numbers), project_id
            )
        else:
            position_of, orders = bucketed.positions()
        # Both files or neither: the positions file is committed inside the encoded file's
        # block (so a failure writing it leaves no encoded file), and removed again if the
        # encoded file then fails to commit. The payload digest it is bound to is the
        # writer's own over the bytes it wrote (checked against the header it commits).
        positions_committed = False
        payload_digest = b""
        try:
            with ClkFileWriter(
                encoded_path,
                project_id=project_id,
                schema_fingerprint=schema.fingerprint,
                kcv=local.encoder.kcv,
                clk_bits=schema.encoded_bits,
                layout=schema.layout if schema.grouped else None,
                key_context=key_context,
            ) as writer:
                if bucketed is None:
                    _write_shuffled(writer, clk_scratch, position_of, clk_bytes)
                else:
                    bucketed.write(writer, orders)
                if repeat_check is not None:  # raised here, the encoded file is not committed
                    _refuse_repeated_id(repeat_check.result(), row_numbers)
                payload_digest = writer.payload_sha256()
                binding = PositionsBinding(
                    project_id=project_id,
                    payload_sha256=payload_digest.hex(),
                    record_count=record_count,
                )
                write_positions(positions_path, ids_scratch, position_of, binding)
                positions_committed = True
            if writer.header is None or writer.header.payload_sha256 != payload_digest:
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
            payload_sha256=payload_digest.hex(),
            encoded_path=encoded_path,
            positions_path=positions_path,
            seconds=time.perf_counter() - started,
            workers=process_count,
        )
    finally:
        reader.close()
        shutil.rmtree(scratch, ignore_errors=True)

"""Reading a department's extract (CSV or Parquet) in bounded chunks of rows.

Rows come out as lists of strings with their 1-based data row numbers, never the whole file
at once, so a file larger than memory encodes in constant memory. Undecodable bytes are kept
as surrogate escapes and rejected by the normaliser with the row and field named, instead of
failing the whole file with a decoder message that could quote the bytes.

A CSV file's delimiter and encoding come from the department mapping (:class:`CsvDialect`).
Typed Parquet/Arrow date and timestamp columns are written as ISO dates (``YYYY-MM-DD``) and
listed in ``ExtractReader.date_columns``, so they need no date format in the mapping.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.errors import ExtractError, MappingError

__all__ = [
    "ByteRange",
    "CsvDialect",
    "ExtractChunk",
    "ExtractReader",
    "CsvRangeError",
    "RangeColumns",
    "ReadProgress",
    "csv_chunks_from",
    "csv_rows_at",
    "csv_data_ranges",
    "open_extract",
    "read_csv_range",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CsvDialect:
    """How a CSV extract is spelled: its delimiter and text encoding (from the mapping)."""

    delimiter: str = ","
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if len(self.delimiter) != 1 or self.delimiter in '"\r\n':
            raise MappingError(["delimiter must be one character (not a quote or a newline)"])
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise MappingError(
                [f"encoding {self.encoding!r} is not a known text encoding"]
            ) from None

    @property
    def python_encoding(self) -> str:
        """The codec to read with: UTF-8 also drops a byte-order mark."""
        return "utf-8-sig" if codecs.lookup(self.encoding).name == "utf-8" else self.encoding


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadProgress:
    """How far through the extract a reader is: bytes of a CSV file, rows of a Parquet one."""

    done: int
    total: int
    unit: str


# A field longer than this is an extract fault; the normaliser rejects anything over 1,000.
csv.field_size_limit(1 << 20)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractChunk:
    """Consecutive rows of the extract: ``rows[i]`` is data row ``first_row + i``.

    Data rows are numbered from 1 after the header, counting CSV records (a quoted value may
    span lines) and not counting blank lines.
    """

    first_row: int
    rows: list[list[str]]


class ExtractReader:
    """Iterate an extract in chunks; ``header`` is available before the first chunk.

    Close it (or use it as a context manager) when done: a run that stops early, on a bad
    row, must not leave the extract open.
    """

    def __init__(
        self,
        path: Path,
        header: list[str],
        chunks: Iterator[ExtractChunk],
        close: Callable[[], None] = lambda: None,
        *,
        progress: Callable[[], ReadProgress] | None = None,
        date_columns: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path
        self.header = header
        self.date_columns = date_columns
        """Typed date/timestamp columns, written as ISO dates (``DepartmentMapping.bind``)."""
        self._chunks = chunks
        self._close = close
        self._progress = progress

    def progress(self) -> ReadProgress | None:
        """How much of the file has been read so far (None if the reader cannot tell)."""
        return self._progress() if self._progress else None

    def __iter__(self) -> Iterator[ExtractChunk]:
        return self._chunks

    def close(self) -> None:
        self._close()

    def __enter__(self) -> ExtractReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _csv_chunks(
    reader: Any, chunk_rows: int, path: Path, *, first_row: int, whole_file: bool = True
) -> Iterator[ExtractChunk]:
    """Rows of a ``csv.reader`` in chunks, numbered from ``first_row``. ``whole_file``: a
    reader with no rows at all is an extract with a header but no data."""
    row_number = first_row - 1
    seen_rows = not whole_file
    while True:
        rows: list[list[str]] = []
        first = row_number + 1
        try:
            for row in reader:
                if not row:
                    continue  # a blank line (often a trailing one) is not a record
                row_number += 1
                rows.append(row)
                if len(rows) >= chunk_rows:
                    break
        except csv.Error:
            raise ExtractError(
                f"row {row_number + 1} is not valid CSV (an unclosed quote or a stray NUL byte)",
                path=str(path),
            ) from None
        if not rows:
            if not seen_rows:
                raise ExtractError("file has a header but no data rows", path=str(path))
            return
        seen_rows = True
        yield ExtractChunk(first_row=first, rows=rows)
        if len(rows) < chunk_rows:
            return


def _csv_reader(path: Path, chunk_rows: int, dialect: CsvDialect) -> ExtractReader:
    try:
        handle = path.open("rb")
        total = path.stat().st_size
    except OSError as error:
        raise ExtractError(f"cannot open extract: {error.strerror}", path=str(path)) from None
    text = io.TextIOWrapper(
        handle, encoding=dialect.python_encoding, errors="surrogateescape", newline=""
    )
    reader = csv.reader(text, strict=True, delimiter=dialect.delimiter)
    try:
        header = next(reader)
    except StopIteration:
        text.close()
        raise ExtractError(
            "file is empty (expected a header row and data rows)", path=str(path)
        ) from None
    except csv.Error:
        text.close()
        raise ExtractError("the header row is not valid CSV", path=str(path)) from None
    header = [name.strip() for name in header]
    if any("\udc80" <= char <= "\udcff" for name in header for char in name):
        text.close()
        raise ExtractError(
            f"the header row is not valid {dialect.encoding} (set encoding in the mapping)",
            path=str(path),
        )

    def chunks() -> Iterator[ExtractChunk]:
        try:
            yield from _csv_chunks(reader, chunk_rows, path, first_row=1)
        finally:
            text.close()

    def progress() -> ReadProgress:
        done = total if handle.closed else handle.tell()
        return ReadProgress(done=done, total=total, unit="B")

    return ExtractReader(path, header, chunks(), close=text.close, progress=progress)


def _parquet_reader(path: Path, chunk_rows: int) -> ExtractReader:
    try:
        import pyarrow.parquet as parquet  # type: ignore[import-untyped]  # bloomlink[parquet]
    except ImportError:
        raise ExtractError(
            "reading Parquet needs pyarrow: pip install 'bloomlink[parquet]'", path=str(path)
        ) from None
    try:
        parquet_file = parquet.ParquetFile(path)
    except Exception:  # pyarrow raises several types for a bad file; none carry row data
        raise ExtractError("not a readable Parquet file", path=str(path)) from None
    import pyarrow.types as arrow_types  # type: ignore[import-untyped]

    schema = parquet_file.schema_arrow
    header = list(schema.names)
    total_rows = int(parquet_file.metadata.num_rows)
    if total_rows == 0:
        parquet_file.close()
        raise ExtractError("file has columns but no data rows", path=str(path))
    date_columns = frozenset(
        item.name
        for item in schema
        if arrow_types.is_date(item.type) or arrow_types.is_timestamp(item.type)
    )

    def to_text(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, bytes):
            # Like the CSV reader: undecodable bytes become surrogate escapes, which the
            # normaliser rejects naming the row and field.
            return value.decode("utf-8", "surrogateescape")
        if hasattr(value, "isoformat"):
            return value.isoformat()  # type: ignore[no-any-return]
        return str(value)

    def date_text(value: object) -> str:
        # A timestamp is a date of birth at some time of day: only the date is encoded.
        if value is None:
            return ""
        day: Any = value.date() if isinstance(value, dt.datetime) else value
        return str(day.isoformat())

    converters = [date_text if name in date_columns else to_text for name in header]
    read = 0

    def chunks() -> Iterator[ExtractChunk]:
        nonlocal read
        for batch in parquet_file.iter_batches(batch_size=chunk_rows):
            columns = [
                list(map(convert, column.to_pylist()))
                for convert, column in zip(converters, batch.columns, strict=True)
            ]
            rows = [list(values) for values in zip(*columns, strict=True)]
            yield ExtractChunk(first_row=read + 1, rows=rows)
            read += len(rows)

    return ExtractReader(
        path,
        header,
        chunks(),
        close=parquet_file.close,
        progress=lambda: ReadProgress(done=read, total=total_rows, unit="rows"),
        date_columns=date_columns,
    )


def open_extract(
    path: Path | str, *, chunk_rows: int = 20_000, dialect: CsvDialect | None = None
) -> ExtractReader:
    """Open a CSV (``.csv``, header row; delimiter and encoding from ``dialect``, by default
    comma and UTF-8) or Parquet (``.parquet``) extract."""
    source = Path(path)
    if not source.is_file():
        raise ExtractError("extract does not exist or is not a file", path=str(source))
    if source.suffix.lower() in (".parquet", ".pq"):
        return _parquet_reader(source, chunk_rows)
    return _csv_reader(source, chunk_rows, dialect or CsvDialect())


# Reading a CSV extract in byte ranges, one per task, so that encoder processes each read their
# own part of the file and nothing row-level crosses between processes. A range starts and ends
# at a line end. Splitting there is only safe while no quote has been seen (a quoted value may
# hold a line end), so a range that holds a quote is not read here: the caller reads the file
# from that range's start on with the csv module, as :func:`open_extract` would.


@dataclass(frozen=True, slots=True, kw_only=True)
class ByteRange:
    """Bytes ``start`` to ``stop`` of an extract: whole lines of data rows."""

    start: int
    stop: int


def csv_data_ranges(
    path: Path | str, dialect: CsvDialect, *, range_bytes: int
) -> list[ByteRange] | None:
    """The data rows of a CSV extract cut into ranges of about ``range_bytes`` at line ends,
    or None if the file cannot be read in ranges (not UTF-8, or a header row holding a quote
    or a lone carriage return, which the csv module might read differently)."""
    if codecs.lookup(dialect.encoding).name != "utf-8":
        return None
    source = Path(path)
    size = source.stat().st_size
    with source.open("rb") as handle:
        header = handle.readline()
        if not header.endswith(b"\n") or b'"' in header or b"\r" in header[:-2]:
            return None
        ranges = []
        start = len(header)
        while start < size:
            stop = start + max(range_bytes, 1)
            if stop >= size:
                stop = size
            else:
                handle.seek(stop)
                while True:
                    block = handle.read(1 << 16)
                    if not block:
                        stop = size
                        break
                    end = block.find(b"\n")
                    if end >= 0:
                        stop += end + 1
                        break
                    stop += len(block)
            ranges.append(ByteRange(start=start, stop=stop))
            start = stop
    return ranges


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeColumns:
    """The rows of one byte range: ``row_count`` data rows, and per wanted column index its
    values dictionary-encoded: ``columns[i] = (distinct values, codes)``, row r holding
    ``distinct[codes[r]]``, and the record id column as it is. ``rows`` instead holds the rows themselves when the range had to
    be read with the csv module (a row of the wrong width, invalid UTF-8, a NUL byte)."""

    row_count: int
    columns: dict[int, tuple[list[str], Any]]
    record_ids: list[str]
    rows: list[list[str]] | None = None


class CsvRangeError(Exception):
    """Row ``row`` (1-based within the range) of a range is not valid CSV."""

    def __init__(self, row: int) -> None:
        super().__init__(row)
        self.row = row


def read_csv_range(
    path: Path | str,
    byte_range: ByteRange,
    *,
    width: int,
    delimiter: str,
    wanted: list[int],
    record_id: int,
    plain: Collection[int] = (),
) -> RangeColumns | None:
    """Read one range of data rows with Arrow's CSV parser, or None if the range holds a quote
    (the caller reads from here on with the csv module). A range Arrow refuses (a row of the
    wrong width, invalid UTF-8) or that holds a NUL byte is read with the csv module instead,
    so its problems are reported exactly as :func:`open_extract` would report them.

    ``plain``: wanted columns whose values are nearly all distinct (postcodes), returned
    as every row's value with codes ``0 .. rows - 1`` instead of dictionary-encoded (the
    hashing would find next to no repeats; a repeat is then simply listed twice)."""
    import pyarrow as pa
    import pyarrow.csv as arrow_csv  # type: ignore[import-untyped]

    with Path(path).open("rb") as handle:
        handle.seek(byte_range.start)
        data = handle.read(byte_range.stop - byte_range.start)
    if b'"' in data:
        return None
    if b"\0" not in data:
        names = [f"c{index}" for index in range(width)]
        try:
            table = arrow_csv.read_csv(
                pa.py_buffer(data),
                read_options=arrow_csv.ReadOptions(
                    column_names=names, use_threads=False, block_size=max(len(data), 1 << 20)
                ),
                parse_options=arrow_csv.ParseOptions(
                    delimiter=delimiter, quote_char=False, ignore_empty_lines=True
                ),
                convert_options=arrow_csv.ConvertOptions(
                    column_types={names[index]: pa.string() for index in [*wanted, record_id]},
                    include_columns=[names[index] for index in dict.fromkeys([*wanted, record_id])],
                    strings_can_be_null=False,
                    check_utf8=True,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # the csv module reads it below and names the row
        else:
            columns = {}
            for index in dict.fromkeys(wanted):
                if index in plain:
                    columns[index] = (
                        table.column(names[index]).to_pylist(),
                        np.arange(table.num_rows),
                    )
                    continue
                encoded = table.column(names[index]).combine_chunks().dictionary_encode()
                columns[index] = (
                    encoded.dictionary.to_pylist(),
                    encoded.indices.to_numpy(zero_copy_only=False),
                )
            return RangeColumns(
                row_count=table.num_rows,
                columns=columns,
                record_ids=table.column(names[record_id]).to_pylist(),
            )
    text = io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")
    rows: list[list[str]] = []
    reader = csv.reader(text, strict=True, delimiter=delimiter)
    try:
        rows.extend(row for row in reader if row)
    except csv.Error:
        raise CsvRangeError(len(rows) + 1) from None
    return RangeColumns(row_count=len(rows), columns={}, record_ids=[], rows=rows)


def csv_rows_at(
    path: Path | str, byte_range: ByteRange, offsets: list[int], *, delimiter: str
) -> list[list[str]]:
    """Rows ``offsets`` (0-based, ascending) of a range that holds no quote: its non-blank
    lines split at the delimiter, which is what the csv module makes of them."""
    with Path(path).open("rb") as handle:
        handle.seek(byte_range.start)
        data = handle.read(byte_range.stop - byte_range.start)
    wanted = iter(offsets)
    target = next(wanted, None)
    rows: list[list[str]] = []
    for index, line in enumerate(_LINES.finditer(data)):
        if target is None:
            break
        while target == index:
            rows.append(line.group().decode("utf-8", "surrogateescape").split(delimiter))
            target = next(wanted, None)
    return rows


_LINES = re.compile(rb"[^\r\n]+")


def csv_chunks_from(
    path: Path | str, dialect: CsvDialect, *, start: int, first_row: int, chunk_rows: int
) -> ExtractReader:
    """Data rows from byte ``start`` (a line start) to the end, read with the csv module, in
    chunks numbered from ``first_row`` (the reader's header is empty: it was read before)."""
    source = Path(path)
    handle = source.open("rb")
    total = source.stat().st_size
    handle.seek(start)
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=True, delimiter=dialect.delimiter)
    chunks = _csv_chunks(reader, chunk_rows, source, first_row=first_row, whole_file=False)

    def progress() -> ReadProgress:
        done = total if handle.closed else handle.tell()
        return ReadProgress(done=done, total=total, unit="B")

    return ExtractReader(source, [], chunks, close=text.close, progress=progress)

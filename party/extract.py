"""Reading a department's extract (CSV or Parquet) in bounded chunks of rows.

Rows come out as lists of strings with their 1-based data row numbers, never the whole file
at once, so a file larger than memory encodes in constant memory. Undecodable bytes are kept
as surrogate escapes and rejected by the normaliser with the row and field named, instead of
failing the whole file with a decoder message that could quote the bytes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ExtractError

__all__ = ["ExtractChunk", "ExtractReader", "open_extract"]

# A field longer than this is an extract fault; the normaliser rejects anything over 1,000.
csv.field_size_limit(1 << 20)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractChunk:
    """Consecutive rows of the extract: ``rows[i]`` is data row ``first_row + i``."""

    first_row: int
    rows: list[list[str]]


class ExtractReader:
    """Iterate an extract in chunks; ``header`` is available before the first chunk."""

    def __init__(self, path: Path, header: list[str], chunks: Iterator[ExtractChunk]) -> None:
        self.path = path
        self.header = header
        self._chunks = chunks

    def __iter__(self) -> Iterator[ExtractChunk]:
        return self._chunks

    def close(self) -> None:
        """Release the file now, also when encoding stopped part-way (e.g. a bad row)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _csv_reader(path: Path, chunk_rows: int) -> ExtractReader:
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ExtractError(f"cannot open extract: {error.strerror}", path=str(path)) from None
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=True)
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
        raise ExtractError("the header row is not valid UTF-8", path=str(path))

    def chunks() -> Iterator[ExtractChunk]:
        row_number = 0
        try:
            while True:
                rows: list[list[str]] = []
                first = row_number + 1
                try:
                    for row in reader:
                        row_number += 1
                        rows.append(row)
                        if len(rows) >= chunk_rows:
                            break
                except csv.Error:
                    raise ExtractError(
                        f"row {row_number + 1} is not valid CSV (an unclosed quote or a stray "
                        "NUL byte)",
                        path=str(path),
                    ) from None
                if not rows:
                    if row_number == 0:
                        raise ExtractError("file has a header but no data rows", path=str(path))
                    return
                yield ExtractChunk(first_row=first, rows=rows)
                if len(rows) < chunk_rows:
                    return
        finally:
            text.close()

    return ExtractReader(path, header, chunks())


def _parquet_reader(path: Path, chunk_rows: int) -> ExtractReader:
    try:
        import pyarrow.parquet as parquet  # optional extra: bloomlink[parquet]
    except ImportError:
        raise ExtractError(
            "reading Parquet needs pyarrow: pip install 'bloomlink[parquet]'", path=str(path)
        ) from None
    try:
        parquet_file = parquet.ParquetFile(path)
    except Exception:  # pyarrow raises several types for a bad file; none carry row data
        raise ExtractError("not a readable Parquet file", path=str(path)) from None
    header = list(parquet_file.schema_arrow.names)
    if parquet_file.metadata.num_rows == 0:
        raise ExtractError("file has columns but no data rows", path=str(path))

    def to_text(value: object) -> str:
        if value is None:
            return ""
        if hasattr(value, "isoformat"):
            return value.isoformat()  # type: ignore[no-any-return]
        return str(value)

    def chunks() -> Iterator[ExtractChunk]:
        row_number = 0
        for batch in parquet_file.iter_batches(batch_size=chunk_rows):
            columns = [[to_text(value) for value in column.to_pylist()] for column in batch.columns]
            rows = [list(values) for values in zip(*columns, strict=True)]
            yield ExtractChunk(first_row=row_number + 1, rows=rows)
            row_number += len(rows)

    return ExtractReader(path, header, chunks())


def open_extract(path: Path | str, *, chunk_rows: int = 20_000) -> ExtractReader:
    """Open a CSV (``.csv``, UTF-8, header row) or Parquet (``.parquet``) extract."""
    source = Path(path)
    if not source.is_file():
        raise ExtractError("extract does not exist or is not a file", path=str(source))
    if source.suffix.lower() in (".parquet", ".pq"):
        return _parquet_reader(source, chunk_rows)
    return _csv_reader(source, chunk_rows)

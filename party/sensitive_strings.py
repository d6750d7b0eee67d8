"""The strings a leak scan looks for, drawn from the party's own extract.

Stage: audit, department side (feeds ``party/leak_scan.py``). Only the party holds the
extract, the mapping and the normaliser, so only it can say what must never appear in an
encoded file: for a sample of rows, every raw value of a used column (the record id too),
every normalised value, and the tokens each field makes from it.

**Sampling.** Scanning every string of a million-row extract would cost more than encoding
it (patterns are ~150 bytes each). A leak is systematic in practice - an encoder that
writes one raw value writes them all - so a uniform sample of rows finds it: with
``max_rows`` rows sampled, a leak affecting a share ``p`` of rows is missed with probability
about ``(1 - p) ** max_rows`` (2e-9 for p = 0.2%, 10k rows). Tokens are many per row and
mostly too short to tell from chance, so they come from the first ``token_rows`` sampled rows
only. The sample is a reservoir over the whole extract, drawn from a fresh random generator
(injectable for tests), so a reader of the code cannot predict which rows are checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from party.extract import CsvDialect, ExtractChunk, open_extract
from party.mapping import DepartmentMapping
from protocol.errors import ConfigurationError, ValueRejectedError
from protocol.schema import LinkageSchema
from protocol.tokens import tokenise

__all__ = [
    "RowSample",
    "SensitiveStrings",
    "sample_rows",
    "sensitive_strings",
    "strings_from_sample",
]

DEFAULT_MAX_ROWS = 10_000
DEFAULT_TOKEN_ROWS = 1_000


@dataclass(frozen=True, slots=True, kw_only=True)
class SensitiveStrings:
    """Distinct sensitive strings from ``rows_sampled`` of ``rows_read`` rows.

    Its repr shows counts only: the strings are personal data.
    """

    strings: tuple[str, ...]
    rows_sampled: int
    rows_read: int
    seconds: float

    def __post_init__(self) -> None:
        if not 0 <= self.rows_sampled <= self.rows_read:
            raise ConfigurationError("rows sampled must be between 0 and the rows read")

    def __repr__(self) -> str:
        return (
            f"SensitiveStrings(strings={len(self.strings)}, rows_sampled={self.rows_sampled}, "
            f"rows_read={self.rows_read})"
        )


class RowSample:
    """A uniform reservoir sample of an extract's rows (Vitter's algorithm R, vectorised per
    chunk), fed chunk by chunk: a :class:`party.encoder_run.RowObserver`, so the encoder run
    draws it in the same pass over the extract. ``positions`` then gives the shuffled
    position of each sampled row that was encoded (rows skipped as bad have none)."""

    def __init__(self, max_rows: int, generator: np.random.Generator) -> None:
        if max_rows < 1:
            raise ConfigurationError("max_rows must be positive")
        self.max_rows = max_rows
        self.generator = generator
        self.header: list[str] = []
        self.date_columns: frozenset[str] = frozenset()
        self.rows: list[list[str]] = []
        self.row_numbers: list[int] = []
        self.rows_read = 0
        self.positions: dict[int, int] = {}
        """Sampled row number -> shuffled position of its CLK."""
        self._plan: tuple[int, list[tuple[int | None, int]], list[int]] = (0, [], [])

    def __repr__(self) -> str:  # the rows are personal data
        return f"RowSample(rows={len(self.rows)}, rows_read={self.rows_read})"

    def start(self, header: list[str], date_columns: frozenset[str]) -> None:
        self.header, self.date_columns = list(header), date_columns

    def observe(self, chunk: ExtractChunk) -> None:
        """Sample from a chunk of rows (:meth:`choose` then :meth:`take`)."""
        wanted = self.choose(chunk.first_row, len(chunk.rows))
        self.take([chunk.rows[offset] for offset in wanted])

    def choose(self, first_row: int, count: int) -> list[int]:
        """Draw which of the next ``count`` rows enter the sample (their offsets); the rows
        themselves come in :meth:`take`."""
        fill = min(self.max_rows - len(self.rows), count)
        plan: list[tuple[int | None, int]] = [(None, offset) for offset in range(fill)]
        rest = count - fill
        if rest > 0:
            # Row number n (0-based over the extract) replaces a random slot with chance
            # max_rows / (n + 1).
            numbers = np.arange(self.rows_read + fill, self.rows_read + count, dtype=np.int64)
            slots = self.generator.integers(0, numbers + 1)
            for offset in np.flatnonzero(slots < self.max_rows).tolist():
                plan.append((int(slots[offset]), fill + offset))
        self.rows_read += count
        wanted = sorted({offset for _, offset in plan})
        self._plan = (first_row, plan, wanted)
        return wanted

    def take(self, rows: list[list[str]]) -> None:
        first_row, plan, wanted = self._plan
        by_offset = dict(zip(wanted, rows, strict=True))
        for slot, offset in plan:  # in draw order: a later row may replace an earlier one
            row, number = list(by_offset[offset]), first_row + offset
            if slot is None:
                self.rows.append(row)
                self.row_numbers.append(number)
            else:
                self.rows[slot] = row
                self.row_numbers[slot] = number
        self._plan = (0, [], [])

    def placed(self, row_numbers: npt.NDArray[np.int64], positions: npt.NDArray[np.int64]) -> None:
        # The encoder keeps rows in extract order, so row numbers are sorted.
        wanted = np.asarray(self.row_numbers, dtype=np.int64)
        places = np.minimum(np.searchsorted(row_numbers, wanted), max(len(row_numbers) - 1, 0))
        found = row_numbers[places] == wanted if len(row_numbers) else np.zeros(0, dtype=bool)
        self.positions = {
            int(number): int(positions[place])
            for number, place, hit in zip(wanted, places, found, strict=True)
            if hit
        }


def sample_rows(
    path: Path | str,
    dialect: CsvDialect,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    generator: np.random.Generator | None = None,
) -> RowSample:
    """Read the extract once and sample its rows (for a scan after the encode)."""
    sample = RowSample(max_rows, generator or np.random.default_rng())
    with open_extract(path, dialect=dialect) as reader:
        sample.start(list(reader.header), reader.date_columns)
        for chunk in reader:
            sample.observe(chunk)
    return sample


def strings_from_sample(
    sample: RowSample,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    *,
    source: str | None = None,
    token_rows: int = DEFAULT_TOKEN_ROWS,
    started: float | None = None,
) -> SensitiveStrings:
    """Raw values, normalised values and tokens of the sampled rows."""
    if token_rows < 0:
        raise ConfigurationError("token_rows must not be negative")
    begun = time.perf_counter() if started is None else started
    header = sample.header
    bound = mapping.bind(schema, header, source=source, date_columns=sample.date_columns)
    used = sorted(header.index(column) for column in mapping.used_columns())
    specs = {spec.name: spec for spec in schema.fields}
    found: set[str] = set()
    for number, row in enumerate(sample.rows):
        if len(row) != bound.width:
            continue  # the encoder rejected or skipped such a row; it sent nothing from it
        found.update(row[index].strip() for index in used)
        for reader in bound.fields:
            if reader.column_index is None:
                continue
            try:
                value = reader.normalise(row[reader.column_index])
            except ValueRejectedError:
                continue
            if not value:
                continue
            found.add(value)
            if number < token_rows:
                for token_spec in specs[reader.name].tokens:
                    found.update(tokenise(value, token_spec))
    found.discard("")
    return SensitiveStrings(
        strings=tuple(sorted(found)),
        rows_sampled=len(sample.rows),
        rows_read=sample.rows_read,
        seconds=time.perf_counter() - begun,
    )


def sensitive_strings(
    extract_path: Path | str,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    token_rows: int = DEFAULT_TOKEN_ROWS,
    generator: np.random.Generator | None = None,
) -> SensitiveStrings:
    """Raw values, normalised values and tokens of a random sample of the extract's rows
    (reads the extract; an encode draws the same sample in its own pass instead)."""
    if max_rows < 1 or token_rows < 0:
        raise ConfigurationError("max_rows must be positive and token_rows not negative")
    started = time.perf_counter()
    sample = sample_rows(extract_path, mapping.dialect, max_rows=max_rows, generator=generator)
    return strings_from_sample(
        sample,
        mapping,
        schema,
        source=str(extract_path),
        token_rows=token_rows,
        started=started,
    )

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

from party.extract import open_extract
from party.mapping import DepartmentMapping
from protocol.errors import ConfigurationError, ValueRejectedError
from protocol.schema import LinkageSchema
from protocol.tokens import tokenise

__all__ = ["SensitiveStrings", "sensitive_strings"]

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


def _sample_rows(
    path: Path, max_rows: int, generator: np.random.Generator
) -> tuple[list[str], list[list[str]], int]:
    """A uniform reservoir sample of rows (Vitter's algorithm R, vectorised per chunk)."""
    reader = open_extract(path)
    reservoir: list[list[str]] = []
    seen = 0
    for chunk in reader:
        rows = chunk.rows
        fill = min(max_rows - len(reservoir), len(rows))
        reservoir.extend(list(row) for row in rows[:fill])
        rest = len(rows) - fill
        if rest > 0:
            # Row number n (0-based over the extract) replaces a random slot with chance
            # max_rows / (n + 1).
            numbers = np.arange(seen + fill, seen + len(rows), dtype=np.int64)
            slots = generator.integers(0, numbers + 1)
            for offset in np.flatnonzero(slots < max_rows):
                reservoir[int(slots[offset])] = list(rows[fill + int(offset)])
        seen += len(rows)
    return list(reader.header), reservoir, seen


def sensitive_strings(
    extract_path: Path | str,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    token_rows: int = DEFAULT_TOKEN_ROWS,
    generator: np.random.Generator | None = None,
) -> SensitiveStrings:
    """Raw values, normalised values and tokens of a random sample of the extract's rows."""
    if max_rows < 1 or token_rows < 0:
        raise ConfigurationError("max_rows must be positive and token_rows not negative")
    started = time.perf_counter()
    path = Path(extract_path)
    rng = generator or np.random.default_rng()
    header, rows, rows_read = _sample_rows(path, max_rows, rng)
    bound = mapping.bind(schema, header, source=str(path))
    used = sorted(header.index(column) for column in mapping.used_columns())
    specs = {spec.name: spec for spec in schema.fields}
    found: set[str] = set()
    for number, row in enumerate(rows):
        if len(row) != bound.width:
            continue  # the encoder rejected or skipped such a row; it sent nothing from it
        found.update(row[index].strip() for index in used)
        for name, index, normalise in bound.readers:
            if index is None:
                continue
            try:
                value = normalise(row[index])
            except ValueRejectedError:
                continue
            if not value:
                continue
            found.add(value)
            if number < token_rows:
                for token_spec in specs[name].tokens:
                    found.update(tokenise(value, token_spec))
    found.discard("")
    return SensitiveStrings(
        strings=tuple(sorted(found)),
        rows_sampled=len(rows),
        rows_read=rows_read,
        seconds=time.perf_counter() - started,
    )

"""The department mapping: which of a department's columns feeds which schema field, and how
to read its values (date formats, sex codes, null markers). It is the only department-
specific input to encoding, so MoJ's ``forename, surname, date_of_birth (DD/MM/YYYY), gender
(Male/Female)`` and DfE's ``legal_forename, legal_surname, dob (YYYY-MM-DD), sex (M/F)``
normalise to identical values for the same person.

A mapping is a TOML file (docs/schema.md, "Department mapping"); problems are all listed at
once. :meth:`DepartmentMapping.bind` checks it against an extract's header and returns a
:class:`BoundMapping` that normalises rows.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from party.extract import CsvDialect
from protocol import normalisation
from protocol.errors import ExtractError, MappingError, RecordError, ValueRejectedError
from protocol.labels import LABEL_PATTERN
from protocol.schema import FieldSpec, LinkageSchema

__all__ = [
    "BoundMapping",
    "CsvDialect",
    "DepartmentMapping",
    "FieldReader",
    "FieldSource",
    "load_mapping",
    "shipped_mapping",
]

MAPPING_VERSION = 1
ISO_DATE_FORMAT = "%Y-%m-%d"
"""How the extract reader writes typed (Parquet/Arrow) date and timestamp values."""
_DELIMITERS = (",", ";", "\t", "|")
Normaliser = Callable[[str], "str | None"]
BatchNormaliser = Callable[[list[str]], "list[str | None]"]
"""Normalises many values at once: the same results as the field's Normaliser on each, and
ValueRejectedError if any is rejected (the Normaliser then says which and why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSource:
    """Where one schema field comes from in this department's extract."""

    field_name: str
    column: str | None  # None: the department does not hold this field
    date_formats: tuple[str, ...] = ()
    codes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentMapping:
    """A validated mapping. ``bind`` it to a schema and an extract header before use."""

    department: str
    record_id_column: str
    sources: tuple[FieldSource, ...]
    null_markers: frozenset[str] = frozenset()
    extra_columns: str = "error"
    dialect: CsvDialect = field(default_factory=CsvDialect)
    two_digit_year_pivot: int | None = None
    """Dates with ``%y``: a two-digit year is the year from the pivot to pivot + 99 ending in
    those digits (protocol.normalisation.normalise_date)."""

    def used_columns(self) -> set[str]:
        return {self.record_id_column} | {s.column for s in self.sources if s.column}

    def bind(
        self,
        schema: LinkageSchema,
        header: Sequence[str],
        *,
        source: str | None = None,
        date_columns: frozenset[str] = frozenset(),
    ) -> BoundMapping:
        """Check this mapping against the schema and the extract's header; list all problems.

        ``date_columns`` are typed date columns (Parquet/Arrow ``date32``, timestamps): the
        reader writes them as ISO dates, so they need no ``date_formats``.
        """
        problems: list[str] = []
        by_field = {s.field_name: s for s in self.sources}
        for spec in schema.fields:
            if spec.name not in by_field:
                problems.append(
                    f"schema field {spec.name!r} is not mapped (give its column, or absent = true)"
                )
        for name in sorted(set(by_field) - {spec.name for spec in schema.fields}):
            problems.append(f"field {name!r} is not in schema {schema.name!r}")
        for spec in schema.fields:
            source_spec = by_field.get(spec.name)
            if (
                source_spec
                and spec.kind == "date"
                and source_spec.column
                and not source_spec.date_formats
                and source_spec.column not in date_columns
            ):
                problems.append(f"field {spec.name!r} is a date: give date_formats")
            if source_spec and spec.kind == "sex" and source_spec.column and not source_spec.codes:
                problems.append(
                    f'field {spec.name!r} is sex: give codes, e.g. {{ M = "m", F = "f" }}'
                )
            if source_spec and source_spec.column is None and spec.missing == "required":
                problems.append(
                    f"field {spec.name!r} is required by the schema, so it cannot be absent"
                )
        if problems:
            raise MappingError(problems, source=source)

        columns = list(header)
        duplicates = sorted({name for name in columns if columns.count(name) > 1})
        missing = sorted(self.used_columns() - set(columns))
        extra = sorted(set(columns) - self.used_columns())
        column_problems = []
        if duplicates:
            column_problems.append(f"columns appear more than once: {', '.join(duplicates)}")
        hint = _delimiter_hint(columns, missing, self.dialect.delimiter) if missing else ""
        if missing:
            column_problems.append(f"missing columns the mapping needs: {', '.join(missing)}{hint}")
        if extra and self.extra_columns == "error" and not hint:
            column_problems.append(
                f"columns the mapping does not mention: {', '.join(extra)} (map them, remove "
                'them, or set extra_columns = "ignore")'
            )
        if column_problems:
            raise ExtractError("; ".join(column_problems), path=source)

        readers: list[FieldReader] = []
        for spec in schema.fields:
            source_spec = by_field[spec.name]
            if source_spec.column in date_columns and spec.kind == "date":
                # Typed dates arrive as ISO text whatever the mapping says for text extracts.
                source_spec = replace(source_spec, date_formats=(ISO_DATE_FORMAT,))
            index = columns.index(source_spec.column) if source_spec.column else None
            readers.append(
                FieldReader(
                    name=spec.name,
                    column_index=index,
                    normalise=self._normaliser(spec, source_spec),
                    normalise_many=self._batch_normaliser(spec, source_spec),
                )
            )
        return BoundMapping(
            record_id_index=columns.index(self.record_id_column),
            fields=tuple(readers),
            width=len(columns),
            required_fields=frozenset(
                spec.name for spec in schema.fields if spec.missing == "required"
            ),
        )

    def _normaliser(self, spec: FieldSpec, source: FieldSource) -> Normaliser:
        normalise = self._kind_normaliser(spec, source)
        if spec.missing != "required":
            return normalise
        return partial(_require_value, normalise)

    def _batch_normaliser(self, spec: FieldSpec, source: FieldSource) -> BatchNormaliser:
        batch = self._kind_batch_normaliser(spec, source)
        if spec.missing != "required":
            return batch
        return partial(_require_values, batch)

    def _kind_batch_normaliser(self, spec: FieldSpec, source: FieldSource) -> BatchNormaliser:
        markers = self.null_markers
        if spec.kind == "postcode":
            return partial(
                normalisation.normalise_postcodes, max_length=spec.max_length, null_markers=markers
            )
        if spec.kind == "person_name":
            return partial(
                normalisation.normalise_names,
                max_length=spec.max_length,
                nicknames=normalisation.nickname_table() if spec.nicknames else None,
                null_markers=markers,
            )
        if spec.kind == "free_text":
            return partial(
                normalisation.normalise_texts, max_length=spec.max_length, null_markers=markers
            )
        if spec.kind == "identifier":
            return partial(
                normalisation.normalise_identifiers,
                max_length=spec.max_length,
                null_markers=markers,
            )
        if spec.kind == "date":
            return partial(
                normalisation.normalise_dates,
                formats=source.date_formats,
                null_markers=markers,
                two_digit_year_pivot=self.two_digit_year_pivot,
            )
        # No fast path for this kind (few distinct values, or rare): one value at a time.
        return partial(_each, self._kind_normaliser(spec, source))

    def _kind_normaliser(self, spec: FieldSpec, source: FieldSource) -> Normaliser:
        markers = self.null_markers
        if spec.kind == "person_name":
            table = normalisation.nickname_table() if spec.nicknames else None
            return partial(
                normalisation.normalise_name,
                max_length=spec.max_length,
                nicknames=table,
                null_markers=markers,
            )
        if spec.kind == "free_text":
            return partial(
                normalisation.normalise_text, max_length=spec.max_length, null_markers=markers
            )
        if spec.kind == "identifier":
            return partial(
                normalisation.normalise_identifier, max_length=spec.max_length, null_markers=markers
            )
        if spec.kind == "postcode":
            # The schema's limit, not the normaliser's UK-sized default: a value that is not
            # UK-shaped is kept (as letters and digits), not rejected.
            return partial(
                normalisation.normalise_postcode, max_length=spec.max_length, null_markers=markers
            )
        if spec.kind == "sex":
            return partial(normalisation.normalise_sex, codes=source.codes, null_markers=markers)
        if spec.kind == "date":
            return partial(
                normalisation.normalise_date,
                formats=source.date_formats,
                null_markers=markers,
                two_digit_year_pivot=self.two_digit_year_pivot,
            )
        raise AssertionError(f"unhandled field kind {spec.kind}")


def _require_value(normalise: Normaliser, raw: str) -> str | None:
    value = normalise(raw)
    if value is None:
        raise ValueRejectedError('a value is required (the schema says missing = "required")')
    return value


def _each(normalise: Normaliser, raws: list[str]) -> list[str | None]:
    return list(map(normalise, raws))


def _require_values(batch: BatchNormaliser, raws: list[str]) -> list[str | None]:
    values = batch(raws)
    if None in values:
        raise ValueRejectedError('a value is required (the schema says missing = "required")')
    return values


def _delimiter_hint(header: Sequence[str], missing: Sequence[str], delimiter: str) -> str:
    """A hint when the header splits into the missing columns on another delimiter."""
    for candidate in _DELIMITERS:
        if candidate == delimiter:
            continue
        names = {part.strip() for cell in header for part in cell.split(candidate)}
        if len(names) > len(header) and set(missing) <= names:
            if candidate == "\t":
                return '; the file looks tab-separated: set delimiter = "\\t" in the mapping'
            return (
                f"; the file looks '{candidate}'-separated: set delimiter = '{candidate}' in the "
                "mapping"
            )
    return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldReader:
    """How one schema field is read from a row: its column and its normalisers."""

    name: str
    column_index: int | None
    """None: the department does not hold this field (it is always missing)."""
    normalise: Normaliser
    normalise_many: BatchNormaliser
    """The same normalisation over many values at once (the encoder's fast path)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundMapping:
    """A mapping fitted to one extract's columns: turns a row into normalised field values."""

    record_id_index: int
    fields: tuple[FieldReader, ...]
    """One per schema field, in schema order."""
    width: int
    required_fields: frozenset[str] = frozenset()
    """Fields the schema marks ``missing = "required"``: never blanked, the row is skipped."""

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(reader.name for reader in self.fields)

    def normalise(
        self, row: Sequence[str], *, row_number: int, blanked: list[RecordError] | None = None
    ) -> list[str | None]:
        """Normalised values in schema order.

        A value that cannot be normalised raises RecordError(row, field); if ``blanked`` is
        given, the value is treated as missing instead and the error appended there.
        """
        if len(row) != self.width:
            raise RecordError(
                f"has {len(row)} cells but the header has {self.width}", row=row_number
            )
        values: list[str | None] = []
        for reader in self.fields:
            if reader.column_index is None:
                values.append(None)
                continue
            try:
                values.append(reader.normalise(row[reader.column_index]))
            except ValueRejectedError as error:
                problem = RecordError(error.message, row=row_number, field=reader.name)
                if blanked is None:
                    raise problem from None
                if reader.name in self.required_fields:
                    raise problem from None
                blanked.append(problem)
                values.append(None)
        return values


def _date_format_problems(date_format: str, *, pivot: int | None) -> list[str]:
    """Why a strptime format cannot give a full, unambiguous date (empty if it can)."""
    directives = set(re.findall(r"%.", date_format.replace("%%", "")))
    problems = []
    if "%y" in directives and pivot is None:
        problems.append(
            f"{date_format!r} has a two-digit year (%y), which is ambiguous for dates of birth; "
            "set two_digit_year_pivot (e.g. 1925: 00-24 are 2000-2024, 25-99 are 1925-1999) "
            "or convert years to four digits before encoding"
        )
    elif "%Y" not in directives and "%y" not in directives:
        problems.append(f"{date_format!r} has no year (%Y)")
    if "%j" not in directives:
        if not directives & {"%m", "%b", "%B"}:
            problems.append(f"{date_format!r} has no month (%m, %b or %B)")
        if "%d" not in directives:
            problems.append(f"{date_format!r} has no day (%d)")
    if not problems:
        # An unknown directive makes strptime fail on every row; catch it here instead.
        sample = dt.datetime(1987, 11, 23)
        try:
            round_trip = dt.datetime.strptime(sample.strftime(date_format), date_format)
        except ValueError:
            round_trip = None
        if round_trip is None or round_trip.date() != sample.date():
            problems.append(f"{date_format!r} is not a strptime format that reads back a date")
    return problems


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def parse_mapping(data: Any, *, source: str | None = None) -> DepartmentMapping:
    """Validate a mapping document (parsed TOML); list every problem at once."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise MappingError(["the document must be a table of keys"], source=source)
    allowed = {
        "mapping_version",
        "department",
        "record_id",
        "null_markers",
        "extra_columns",
        "delimiter",
        "encoding",
        "two_digit_year_pivot",
        "fields",
    }
    for key in sorted(set(data) - allowed):
        problems.append(f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    if data.get("mapping_version") != MAPPING_VERSION:
        problems.append(f"mapping_version must be {MAPPING_VERSION}")
    department = data.get("department")
    if not isinstance(department, str) or not LABEL_PATTERN.fullmatch(department):
        problems.append("department must be a lower-case label (a-z, 0-9, '-')")
    record_id = data.get("record_id")
    if not isinstance(record_id, str) or not record_id:
        problems.append("record_id must name the column holding the department's own record id")
    markers = data.get("null_markers", [])
    if not _strings(markers):
        problems.append("null_markers must be a list of strings")
        markers = []
    extra_columns = data.get("extra_columns", "error")
    if extra_columns not in ("error", "ignore"):
        problems.append("extra_columns must be 'error' or 'ignore'")
    dialect = CsvDialect()
    delimiter, encoding = data.get("delimiter", ","), data.get("encoding", "utf-8")
    if not isinstance(delimiter, str) or not isinstance(encoding, str):
        problems.append('delimiter and encoding must be strings, e.g. delimiter = ";"')
    else:
        try:
            dialect = CsvDialect(delimiter=delimiter, encoding=encoding)
        except MappingError as error:
            problems.extend(error.problems)
    pivot = data.get("two_digit_year_pivot")
    if pivot is not None and (
        isinstance(pivot, bool) or not isinstance(pivot, int) or not 1800 <= pivot <= 2100
    ):
        problems.append("two_digit_year_pivot must be a four-digit year, e.g. 1925")
        pivot = None
    fields_table = data.get("fields")
    sources: list[FieldSource] = []
    if not isinstance(fields_table, Mapping) or not fields_table:
        problems.append("fields must be a table with one entry per schema field")
    else:
        for name, entry in fields_table.items():
            where = f"fields.{name}"
            if not isinstance(entry, Mapping):
                problems.append(f"{where} must be a table")
                continue
            allowed_field = {"column", "absent", "date_formats", "codes"}
            for key in sorted(set(entry) - allowed_field):
                problems.append(f"{where}: unknown key {key!r}")
            absent = entry.get("absent", False)
            column = entry.get("column")
            if not isinstance(absent, bool):
                problems.append(f"{where}.absent must be true or false")
                continue
            if absent and column is not None:
                problems.append(f"{where}: give column or absent = true, not both")
                continue
            if absent:
                column = None
            elif not isinstance(column, str) or not column:
                problems.append(f'{where}: give column = "..." (or absent = true)')
                continue
            formats = entry.get("date_formats", [])
            if not _strings(formats):
                problems.append(f"{where}.date_formats must be a list of strptime formats")
                formats = []
            for date_format in formats:
                problems.extend(
                    f"{where}.date_formats: {p}"
                    for p in _date_format_problems(date_format, pivot=pivot)
                )
            codes = entry.get("codes", {})
            if not isinstance(codes, Mapping) or not all(
                isinstance(v, str) and v in ("m", "f", "") for v in codes.values()
            ):
                problems.append(f'{where}.codes must map each code to "m", "f" or "" (not known)')
                codes = {}
            folded_codes = [str(code).casefold() for code in codes]
            clashes = sorted({code for code in folded_codes if folded_codes.count(code) > 1})
            if clashes:
                problems.append(
                    f"{where}.codes: codes are matched ignoring case, so these clash: "
                    + ", ".join(clashes)
                )
            sources.append(
                FieldSource(
                    field_name=str(name),
                    column=column,
                    date_formats=tuple(formats),
                    codes=dict(codes),
                )
            )
    if problems:
        raise MappingError(problems, source=source)
    cleaned_markers = frozenset(
        normalisation.strip_invisible(marker).casefold() for marker in markers
    )
    return DepartmentMapping(
        department=str(department),
        record_id_column=str(record_id),
        sources=tuple(sources),
        null_markers=cleaned_markers,
        extra_columns=str(extra_columns),
        dialect=dialect,
        two_digit_year_pivot=pivot,
    )


def load_mapping(path: Path | str) -> DepartmentMapping:
    """Read and validate a mapping file (TOML)."""
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text("utf-8"))
    except FileNotFoundError:
        raise MappingError(["file does not exist"], source=str(source)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise MappingError([f"cannot read TOML: {error}"], source=str(source)) from None
    return parse_mapping(data, source=str(source))


def shipped_mapping(layout: str) -> DepartmentMapping:
    """A mapping shipped for one of the ``synth`` department layouts (moj, dfe, hmpps)."""
    resource = resources.files("party").joinpath(f"data/mappings/{layout}.toml")
    if not resource.is_file():
        raise MappingError([f"no shipped mapping for layout {layout!r}"], source=layout)
    return parse_mapping(tomllib.loads(resource.read_text("utf-8")), source=f"{layout}.toml")

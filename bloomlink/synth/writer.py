"""Write a generated set to a directory: one extract per department, the truth, the settings.

Stage: test-data generation, last step. Files:

    <department>.csv | <department>.parquet   the department's extract (UTF-8, header row)
    truth.csv                                  department,record_id,person_id
    synth.json                                 settings, seed and counts (no values)

Every file is written atomically (``protocol.atomic_file``), so an interrupted run leaves no
half-written extract that a later step could mistake for a whole one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bloomlink.synth.generation import DepartmentExtract, SynthResult
from protocol.atomic_file import atomic_output
from protocol.errors import ConfigurationError

__all__ = ["OutputFormat", "SynthFiles", "write"]

OutputFormat = Literal["csv", "parquet"]
TRUTH_COLUMNS = ("department", "record_id", "person_id")
# Synthetic data holds no one's details: readable by the group, like any test fixture.
FILE_MODE = 0o644


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthFiles:
    """Where ``write`` put each file."""

    extracts: tuple[Path, ...]
    truth: Path
    settings: Path

    def __post_init__(self) -> None:
        if not self.extracts:
            raise ValueError("a written set has at least one extract")


def _write_csv(path: Path, header: Iterable[str], rows: Iterable[tuple[str, ...]]) -> None:
    with atomic_output(path, mode=FILE_MODE) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=False)
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        text.flush()
        text.detach()


def _write_parquet(path: Path, extract: DepartmentExtract) -> None:
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as error:
        raise ConfigurationError(
            "parquet output needs pyarrow: install bloomlink[parquet] or use --format csv"
        ) from error
    columns = extract.columns.items()
    table = pa.table(
        {name: pa.array(values.tolist(), type=pa.string()) for name, values in columns}
    )
    with atomic_output(path, mode=FILE_MODE) as handle:
        pq.write_table(table, handle)


def write(result: SynthResult, out_dir: Path | str, *, format: OutputFormat = "csv") -> SynthFiles:
    """Write ``result`` into ``out_dir`` (created if needed) and say where each file went."""
    if format not in ("csv", "parquet"):
        raise ConfigurationError("output format must be csv or parquet")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    extracts = []
    for extract in result.departments:
        path = directory / f"{extract.name}.{format}"
        if format == "csv":
            _write_csv(path, extract.layout.columns, extract.rows())
        else:
            _write_parquet(path, extract)
        extracts.append(path)
    truth = directory / "truth.csv"
    _write_csv(truth, TRUTH_COLUMNS, result.truth())
    settings = directory / "synth.json"
    summary = result.summary() | {
        "format": format,
        "files": {"extracts": [path.name for path in extracts], "truth": truth.name},
    }
    with atomic_output(settings, mode=FILE_MODE) as handle:
        handle.write((json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return SynthFiles(extracts=tuple(extracts), truth=truth, settings=settings)

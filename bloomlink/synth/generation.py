"""Generate department extracts of the same synthetic people, with the truth of who is who.

Stage: test-data generation (the demo, the tests and the quality benchmarks start here).
``generate(SynthConfig(...))`` draws one population, gives each department its people
(``overlap`` of them shared with the first department, plus repeat records for
de-duplication), corrupts each record at the chosen difficulty and formats it in the
department's layout. ``bloomlink.synth.writer.write`` puts the result on disk.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from bloomlink.synth.corruption import (
    DIFFICULTIES,
    CorruptionLog,
    Difficulty,
    RecordValues,
    corrupt,
)
from bloomlink.synth.layouts import LAYOUTS, Layout
from bloomlink.synth.population import LATEST_BIRTH, Population, draw_population
from bloomlink.synth.tables import load_tables
from protocol.errors import ConfigurationError

__all__ = ["DepartmentExtract", "SynthConfig", "SynthResult", "extract_people", "generate"]

MAX_RECORDS = 20_000_000
# Records are extracted a few years after the last birth; typos may not go past it.
EXTRACT_YEAR = int(str(LATEST_BIRTH)[:4]) + 5


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthConfig:
    """What to generate.

    ``records`` is per department. ``overlap`` is the fraction of each later department's
    distinct people who are also in the first department. ``repeat_rate`` is the fraction of
    each department's records that repeat a person already in it; ``repeat_departments``
    limits repeats to the departments named (None: all), and a department not named holds
    only its distinct people (a duplicate-free extract). ``seed`` None draws one
    from ``secrets`` (the result records it, so any run can be reproduced).
    """

    departments: tuple[str, ...] = ("moj", "dfe")
    records: int = 1000
    overlap: float = 0.5
    difficulty: Difficulty = "medium"
    repeat_rate: float = 0.0
    repeat_departments: tuple[str, ...] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.departments:
            problems.append("name at least one department")
        unknown = [name for name in self.departments if name not in LAYOUTS]
        if unknown:
            problems.append(
                f"unknown department layout(s) {', '.join(unknown)}; "
                f"choose from {', '.join(LAYOUTS)}"
            )
        if len(set(self.departments)) != len(self.departments):
            problems.append("each department may appear once")
        if not 1 <= self.records <= MAX_RECORDS:
            problems.append(f"records per department must be between 1 and {MAX_RECORDS:,}")
        if not 0.0 <= self.overlap <= 1.0:
            problems.append("overlap must be a fraction between 0 and 1")
        if self.difficulty not in DIFFICULTIES:
            problems.append(f"difficulty must be one of {', '.join(DIFFICULTIES)}")
        if not 0.0 <= self.repeat_rate <= 0.5:
            problems.append("repeat rate must be a fraction between 0 and 0.5")
        strangers = sorted(set(self.repeat_departments or ()) - set(self.departments))
        if strangers:
            problems.append(f"repeat departments {', '.join(strangers)} are not generated")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            problems.append("seed must be a non-negative integer below 2**63")
        if problems:
            raise ConfigurationError("synthetic data settings: " + "; ".join(problems))

    @property
    def repeat_records(self) -> int:
        """Records per department that repeat a person already in that department."""
        return min(round(self.records * self.repeat_rate), self.records - 1)

    @property
    def distinct_people(self) -> int:
        """Distinct people per department."""
        return self.records - self.repeat_records

    @property
    def shared_people(self) -> int:
        """People each later department shares with the first one."""
        return round(self.distinct_people * self.overlap)


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentExtract:
    """One department's records, as strings in its layout's columns, with their truth.

    ``people[i]`` is the population index of record ``i`` (same index, same person).
    """

    layout: Layout
    columns: Mapping[str, npt.NDArray[np.object_]]
    people: npt.NDArray[np.int64]
    corruption: CorruptionLog

    def __post_init__(self) -> None:
        if tuple(self.columns) != self.layout.columns:
            raise ValueError(f"extract columns must be the {self.layout.name} layout's columns")
        if any(len(values) != len(self.people) for values in self.columns.values()):
            raise ValueError("every extract column needs one value per record")

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def record_ids(self) -> npt.NDArray[np.object_]:
        return self.columns[self.layout.id_column]

    def __len__(self) -> int:
        return len(self.people)

    def rows(self) -> Iterator[tuple[str, ...]]:
        """Records as tuples in column order (for writers)."""
        return zip(*(values.tolist() for values in self.columns.values()), strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthResult:
    """A generated set: the config, the seed actually used, the people and the extracts."""

    config: SynthConfig
    seed: int
    population: Population
    departments: tuple[DepartmentExtract, ...]

    def __post_init__(self) -> None:
        if tuple(extract.name for extract in self.departments) != self.config.departments:
            raise ValueError("extracts must follow the configured department order")

    def department(self, name: str) -> DepartmentExtract:
        for extract in self.departments:
            if extract.name == name:
                return extract
        raise KeyError(name)

    def truth(self) -> Iterator[tuple[str, str, str]]:
        """``(department, record_id, person_id)`` for every record of every department."""
        for extract in self.departments:
            person_ids = self.population.person_ids[extract.people].tolist()
            for record_id, person_id in zip(extract.record_ids.tolist(), person_ids, strict=True):
                yield extract.name, record_id, person_id

    def summary(self) -> dict[str, Any]:
        """Counts and settings for ``synth.json``: what was generated, never any value."""
        first = self.departments[0]
        first_people = np.unique(first.people)
        departments = {}
        for extract in self.departments:
            distinct = np.unique(extract.people)
            departments[extract.name] = {
                "layout": extract.layout.description,
                "records": len(extract),
                "distinct_people": len(distinct),
                "repeat_records": len(extract) - len(distinct),
                "people_shared_with_first": int(np.isin(distinct, first_people).sum()),
                "corrupted_records": extract.corruption.corrupted_records,
                "corruption_applied": dict(extract.corruption.applied),
                "corruption_eligible": dict(extract.corruption.eligible),
            }
        return {
            "generator": "bloomlink synth",
            "format_version": 1,
            "seed": self.seed,
            "departments": list(self.config.departments),
            "records_per_department": self.config.records,
            "overlap": self.config.overlap,
            "difficulty": self.config.difficulty,
            "repeat_rate": self.config.repeat_rate,
            "repeat_departments": list(self.config.repeat_departments or self.config.departments),
            "people": len(self.population),
            "per_department": departments,
        }


def _assign_people(
    config: SynthConfig, rng: np.random.Generator
) -> tuple[int, list[npt.NDArray[np.int64]]]:
    """How many people to draw, and each department's population indices (records order)."""
    distinct, shared = config.distinct_people, config.shared_people
    fresh_per_later = distinct - shared
    total = distinct + fresh_per_later * (len(config.departments) - 1)
    assigned = []
    next_fresh = distinct
    for position in range(len(config.departments)):
        if position == 0:
            members = np.arange(distinct, dtype=np.int64)
        else:
            from_first = rng.choice(distinct, size=shared, replace=False).astype(np.int64)
            fresh = np.arange(next_fresh, next_fresh + fresh_per_later, dtype=np.int64)
            next_fresh += fresh_per_later
            members = np.concatenate([from_first, fresh])
        name = config.departments[position]
        repeating = config.repeat_departments is None or name in config.repeat_departments
        count = config.repeat_records if repeating else 0
        repeats = members[rng.integers(0, len(members), size=count)]
        assigned.append(rng.permutation(np.concatenate([members, repeats])))
    return total, assigned


def _date_template(layout: Layout) -> str:
    fields = {"%d": "{2:02d}", "%m": "{1:02d}", "%Y": "{0:04d}"}
    template = layout.date_format
    for directive, replacement in fields.items():
        template = template.replace(directive, replacement)
    return template


def _format(
    layout: Layout, values: RecordValues, rng: np.random.Generator
) -> dict[str, npt.NDArray[np.object_]]:
    count = len(values.people)
    template = _date_template(layout)
    dates = np.array(
        [
            template.format(year, month, day) if text is None else text
            for year, month, day, text in zip(
                values.birth_years.tolist(),
                values.birth_months.tolist(),
                values.birth_days.tolist(),
                values.birth_date_text.tolist(),
                strict=True,
            )
        ],
        dtype=object,
    )
    unknown_codes = np.asarray(layout.unknown_sex_codes, dtype=object)
    sex = np.where(
        values.sex == "F",
        layout.sex_codes["F"],
        np.where(
            values.sex == "M",
            layout.sex_codes["M"],
            unknown_codes[rng.integers(0, len(unknown_codes), size=count)],
        ),
    ).astype(object)
    return {
        layout.id_column: layout.make_ids(rng, count),
        layout.forename_column: values.forenames,
        layout.surname_column: values.surnames,
        layout.birth_date_column: dates,
        layout.sex_column: sex,
        layout.postcode_column: values.postcodes,
    }


def extract_people(
    population: Population,
    people: npt.NDArray[np.int64],
    *,
    department: str,
    difficulty: Difficulty,
    rng: np.random.Generator,
) -> DepartmentExtract:
    """One department's extract of ``people`` (population indices, in record order): each
    record corrupted afresh from the person's true values, in the department's layout with
    new record ids. ``generate`` makes every extract this way; called again on a
    population it drew, it makes a later release of the same people with new errors."""
    if department not in LAYOUTS:
        raise ConfigurationError(f"unknown department layout {department}")
    if difficulty not in DIFFICULTIES:
        raise ConfigurationError(f"difficulty must be one of {', '.join(DIFFICULTIES)}")
    layout = LAYOUTS[department]
    values = RecordValues.from_population(population, people)
    log = corrupt(
        values,
        population=population,
        layout=layout,
        difficulty=difficulty,
        tables=load_tables(),
        rng=rng,
        latest_year=EXTRACT_YEAR,
    )
    return DepartmentExtract(
        layout=layout,
        columns=MappingProxyType(_format(layout, values, rng)),
        people=people,
        corruption=log,
    )


def generate(config: SynthConfig) -> SynthResult:
    """Draw the people and every department's extract described by ``config``."""
    seed = config.seed if config.seed is not None else secrets.randbits(63)
    rng = np.random.default_rng(seed)
    tables = load_tables()
    total, assigned = _assign_people(config, rng)
    population = draw_population(rng, total, tables)
    extracts = tuple(
        extract_people(population, people, department=name, difficulty=config.difficulty, rng=rng)
        for name, people in zip(config.departments, assigned, strict=True)
    )
    return SynthResult(config=config, seed=seed, population=population, departments=extracts)

"""Realistic errors in department records: what makes linking admin data hard.

Stage: test-data generation, between drawing people and writing department extracts. Each
record of a person is corrupted independently (a repeat record of one person within a
department gets its own errors), from the person's true values. Difficulty ``none`` changes
nothing: only the department's layout (case, formats, codes) differs.

Rates are per record among the eligible records (column "of"), drawn from the record-linkage
literature (FEBRL/GeCo corruptors; Christen, *Data Matching*, 2012, ch. 12) and what UK
administrative extracts look like (nicknames, married names, moves, placeholder dates, null
markers). Kinds apply in this order, so later ones act on earlier results; missing values
apply last and replace whatever was there.

    kind                  of (eligible records)                               low  medium    hard
    forename_nickname     forename has a known nickname                     2.00%   5.00%  10.00%
    forename_variant      forename has another spelling, no nickname        2.00%   5.00%  10.00%
    surname_change        female                                            2.00%   5.00%  10.00%
    surname_variant       surname has another spelling                      2.00%   5.00%  10.00%
    surname_part_dropped  surname has two or more parts                    10.00%  25.00%  40.00%
    forename_middle_name  person has a middle name                          3.00%   8.00%  15.00%
    forename_typo         all records                                       1.00%   3.00%   7.00%
    surname_typo          all records                                       1.00%   3.00%   7.00%
    forename_initial      forename longer than one letter                   0.00%   0.30%   1.00%
    name_unicode          a name has accents, apostrophe, hyphen or space  10.00%  25.00%  40.00%
    name_whitespace       all records                                       0.50%   2.00%   5.00%
    name_case             all records                                       1.00%   3.00%   6.00%
    name_swap             all records                                       0.20%   0.50%   1.50%
    forename_missing      all records                                       0.10%   0.50%   2.00%
    surname_missing       all records                                       0.05%   0.30%   1.00%
    dob_day_month_swap    day <= 12 and day != month                        0.50%   1.50%   3.00%
    dob_digit_typo        all records                                       0.30%   1.00%   2.50%
    dob_year_off          all records                                       0.20%   0.60%   1.50%
    dob_placeholder       all records                                       0.00%   0.10%   0.40%
    dob_missing           all records                                       0.10%   0.50%   1.50%
    sex_wrong             all records                                       0.10%   0.30%   0.80%
    sex_missing           all records                                       0.20%   1.00%   3.00%
    postcode_moved        all records                                       3.00%  10.00%  20.00%
    postcode_typo         all records                                       0.30%   1.00%   3.00%
    postcode_format       all records                                       2.00%   6.00%  12.00%
    postcode_missing      all records                                       0.50%   2.00%   5.00%
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

from bloomlink.synth.layouts import Layout
from bloomlink.synth.population import Population
from bloomlink.synth.tables import NameTables
from bloomlink.synth.typos import date_digit_typo, name_typo, postcode_typo, strip_accents

__all__ = [
    "CORRUPTION_KINDS",
    "DIFFICULTIES",
    "CorruptionKind",
    "CorruptionLog",
    "Difficulty",
    "RecordValues",
    "corrupt",
    "rate_table_markdown",
    "rate_table_text",
    "rates_for",
]

Difficulty = Literal["none", "low", "medium", "hard"]
DIFFICULTIES: tuple[Difficulty, ...] = ("none", "low", "medium", "hard")

# Null markers as they appear in real extracts, with how often each is the one used.
NULL_MARKERS = ("", "NULL", "N/A", "UNKNOWN", "-")
NULL_MARKER_WEIGHTS = (0.6, 0.15, 0.1, 0.1, 0.05)
DATE_NULL_MARKERS = ("", "NULL", "N/A")
DATE_NULL_MARKER_WEIGHTS = (0.7, 0.2, 0.1)
ZERO_WIDTH_SPACE = "\u200b"
NO_BREAK_SPACE = "\u00a0"
PLACEHOLDER_DATE = (1900, 1, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CorruptionKind:
    """One kind of error: the field it hits, which records can have it, and its rates."""

    name: str
    field: str
    of: str
    description: str
    low: float
    medium: float
    hard: float

    def __post_init__(self) -> None:
        for rate in (self.low, self.medium, self.hard):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"corruption rate for {self.name} must be in [0, 1]")

    def rate(self, difficulty: Difficulty) -> float:
        return 0.0 if difficulty == "none" else float(getattr(self, difficulty))


def _kind(
    name: str, field_: str, of: str, description: str, low: float, medium: float, hard: float
) -> CorruptionKind:
    return CorruptionKind(
        name=name, field=field_, of=of, description=description, low=low, medium=medium, hard=hard
    )


CORRUPTION_KINDS: tuple[CorruptionKind, ...] = (
    _kind(
        "forename_nickname",
        "forename",
        "forename has a known nickname",
        "nickname from the shared list or a variant not in it (William -> Bill, Billie)",
        0.02,
        0.05,
        0.10,
    ),
    _kind(
        "forename_variant",
        "forename",
        "forename has another spelling, no nickname",
        "phonetic respelling (Catherine -> Katherine, Mohammed -> Muhammad, Stephen -> Steven)",
        0.02,
        0.05,
        0.10,
    ),
    _kind(
        "surname_change",
        "surname",
        "female",
        "the person's other surname (marriage or maiden name), the same one in every record",
        0.02,
        0.05,
        0.10,
    ),
    _kind(
        "surname_variant",
        "surname",
        "surname has another spelling",
        "respelling (Smith -> Smyth, MacDonald -> McDonald, O'Neill -> O'Neil, Nguyễn -> Nguyen)",
        0.02,
        0.05,
        0.10,
    ),
    _kind(
        "surname_part_dropped",
        "surname",
        "surname has two or more parts",
        "double-barrelled or particle name shortened or re-joined (Smith-Jones -> Jones, "
        "Smith Jones, SmithJones)",
        0.10,
        0.25,
        0.40,
    ),
    _kind(
        "forename_middle_name",
        "forename",
        "person has a middle name",
        "middle name(s) recorded in the forename field (John -> John Paul)",
        0.03,
        0.08,
        0.15,
    ),
    _kind(
        "forename_typo",
        "forename",
        "all records",
        "one keyboard, OCR, deletion, insertion or transposition error",
        0.01,
        0.03,
        0.07,
    ),
    _kind(
        "surname_typo",
        "surname",
        "all records",
        "one keyboard, OCR, deletion, insertion or transposition error",
        0.01,
        0.03,
        0.07,
    ),
    _kind(
        "forename_initial",
        "forename",
        "forename longer than one letter",
        "initial only (John -> J or J.)",
        0.0,
        0.003,
        0.01,
    ),
    _kind(
        "name_unicode",
        "forename or surname",
        "a name has accents, apostrophe, hyphen or space",
        "NFD accents, accents stripped, curly or missing apostrophe, en dash or space for "
        "hyphen, space dropped",
        0.10,
        0.25,
        0.40,
    ),
    _kind(
        "name_whitespace",
        "forename or surname",
        "all records",
        "trailing or leading space, double space, no-break space, zero-width space",
        0.005,
        0.02,
        0.05,
    ),
    _kind(
        "name_case",
        "forename or surname",
        "all records",
        "case other than the department's usual (UPPER, lower, Title)",
        0.01,
        0.03,
        0.06,
    ),
    _kind(
        "name_swap",
        "forename and surname",
        "all records",
        "forename and surname swapped",
        0.002,
        0.005,
        0.015,
    ),
    _kind(
        "forename_missing",
        "forename",
        "all records",
        "empty or a null marker (NULL, N/A, UNKNOWN, -)",
        0.001,
        0.005,
        0.02,
    ),
    _kind(
        "surname_missing",
        "surname",
        "all records",
        "empty or a null marker (NULL, N/A, UNKNOWN, -)",
        0.0005,
        0.003,
        0.01,
    ),
    _kind(
        "dob_day_month_swap",
        "date of birth",
        "day <= 12 and day != month",
        "day and month transposed (US-style entry)",
        0.005,
        0.015,
        0.03,
    ),
    _kind(
        "dob_digit_typo",
        "date of birth",
        "all records",
        "one digit mistyped, still a valid date",
        0.003,
        0.01,
        0.025,
    ),
    _kind(
        "dob_year_off",
        "date of birth",
        "all records",
        "year one too high or low",
        0.002,
        0.006,
        0.015,
    ),
    _kind(
        "dob_placeholder",
        "date of birth",
        "all records",
        "placeholder: 01/01/1900 or 1 January of the true year",
        0.0,
        0.001,
        0.004,
    ),
    _kind(
        "dob_missing", "date of birth", "all records", "empty or a null marker", 0.001, 0.005, 0.015
    ),
    _kind("sex_wrong", "sex", "all records", "the other sex recorded", 0.001, 0.003, 0.008),
    _kind("sex_missing", "sex", "all records", "recorded as not known", 0.002, 0.01, 0.03),
    _kind(
        "postcode_moved",
        "postcode",
        "all records",
        "the person's other address (half in the same district), the same in every record",
        0.03,
        0.10,
        0.20,
    ),
    _kind(
        "postcode_typo",
        "postcode",
        "all records",
        "one character wrong (O/0, I/1, S/5, B/8, neighbouring key or digit)",
        0.003,
        0.01,
        0.03,
    ),
    _kind(
        "postcode_format",
        "postcode",
        "all records",
        "space missing, lower case, double or stray spaces",
        0.02,
        0.06,
        0.12,
    ),
    _kind(
        "postcode_missing", "postcode", "all records", "empty or a null marker", 0.005, 0.02, 0.05
    ),
)
_KIND_BY_NAME = {kind.name: kind for kind in CORRUPTION_KINDS}


def rates_for(difficulty: Difficulty) -> Mapping[str, float]:
    """Rate of each corruption kind at ``difficulty`` (all zero for ``none``)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}")
    return MappingProxyType({kind.name: kind.rate(difficulty) for kind in CORRUPTION_KINDS})


def rate_table_text() -> str:
    """The rates as a fixed-width table (this module's docstring carries it verbatim)."""
    lines = [f"    {'kind':<21} {'of (eligible records)':<47} {'low':>7} {'medium':>7} {'hard':>7}"]
    for kind in CORRUPTION_KINDS:
        lines.append(
            f"    {kind.name:<21} {kind.of:<47} {kind.low:>7.2%} {kind.medium:>7.2%} "
            f"{kind.hard:>7.2%}"
        )
    return "\n".join(lines)


def rate_table_markdown() -> str:
    """The corruption table as Markdown (docs/synth.md and this docstring carry it verbatim)."""
    lines = [
        "| kind | field | of | low | medium | hard | what |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for kind in CORRUPTION_KINDS:
        lines.append(
            f"| {kind.name} | {kind.field} | {kind.of} | {kind.low:.2%} | {kind.medium:.2%} "
            f"| {kind.hard:.2%} | {kind.description} |"
        )
    return "\n".join(lines)


@dataclass(slots=True, kw_only=True)
class RecordValues:
    """One department's records as the corruption step rewrites them in place.

    Mutable on purpose: a working buffer of millions of values, not a value object. Names
    and postcodes are object arrays of ``str``; ``sex`` holds ``F``, ``M`` or ``U``;
    ``birth_date_text`` is ``None`` where the date is written from the year, month and day
    columns, or the text that replaces it (a null marker).
    """

    people: npt.NDArray[np.int64]
    forenames: npt.NDArray[np.object_]
    surnames: npt.NDArray[np.object_]
    birth_years: npt.NDArray[np.int64]
    birth_months: npt.NDArray[np.int64]
    birth_days: npt.NDArray[np.int64]
    birth_date_text: npt.NDArray[np.object_]
    sex: npt.NDArray[np.str_]
    postcodes: npt.NDArray[np.object_]

    @classmethod
    def from_population(cls, population: Population, people: npt.NDArray[np.int64]) -> RecordValues:
        return cls(
            people=people,
            forenames=population.forenames[people],
            surnames=population.surnames[people],
            birth_years=population.birth_years[people].astype(np.int64),
            birth_months=population.birth_months[people].astype(np.int64),
            birth_days=population.birth_days[people].astype(np.int64),
            birth_date_text=np.full(len(people), None, dtype=object),
            sex=population.sex[people].astype("<U1"),
            postcodes=population.postcodes[people],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CorruptionLog:
    """What corruption did to one department's records: counts per kind, never values."""

    records: int
    eligible: Mapping[str, int]
    applied: Mapping[str, int]
    corrupted_records: int

    def __post_init__(self) -> None:
        for name, count in self.applied.items():
            if count > self.eligible.get(name, 0):
                raise ValueError(f"corruption {name} applied to more records than were eligible")


@dataclass(slots=True)
class _Run:
    rng: np.random.Generator
    rates: Mapping[str, float]
    count: int
    eligible: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    touched: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def select(
        self, kind: str, eligible: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.intp]:
        """Positions of the eligible records this kind hits, drawn at its rate."""
        candidates = np.arange(self.count) if eligible is None else np.flatnonzero(eligible)
        self.eligible[kind] = self.eligible.get(kind, 0) + len(candidates)
        rate = self.rates[kind]
        if rate == 0.0 or len(candidates) == 0:
            chosen = candidates[:0]
        else:
            chosen = candidates[self.rng.random(len(candidates)) < rate]
        self.applied[kind] = self.applied.get(kind, 0) + len(chosen)
        self.touched[chosen] = True
        return chosen

    def draws(self, count: int) -> list[list[float]]:
        """Four uniforms per chosen record for the per-record primitives."""
        draws: list[list[float]] = self.rng.random((count, 4)).tolist()
        return draws

    def markers(
        self, count: int, markers: Sequence[str], weights: Sequence[float]
    ) -> npt.NDArray[np.object_]:
        index = self.rng.choice(len(markers), size=count, p=np.asarray(weights))
        return np.asarray(markers, dtype=object)[index]


def _rewrite(
    values: npt.NDArray[np.object_],
    chosen: npt.NDArray[np.intp],
    function: Callable[[str, Sequence[float]], str],
    draws: list[list[float]],
) -> None:
    values[chosen] = [
        function(value, draw) for value, draw in zip(values[chosen].tolist(), draws, strict=True)
    ]


def _contains(
    values: npt.NDArray[np.object_], lookup: Mapping[str, object] | set[str]
) -> npt.NDArray[np.bool_]:
    members = (value in lookup for value in values.tolist())
    return np.fromiter(members, dtype=bool, count=len(values))


def _has_parts(values: npt.NDArray[np.object_]) -> npt.NDArray[np.bool_]:
    return np.fromiter(
        ("-" in value or " " in value for value in values.tolist()), dtype=bool, count=len(values)
    )


def _special(value: str) -> bool:
    return not value.isascii() or "'" in value or "-" in value or " " in value


def _capitalise(nickname: str) -> str:
    return "-".join(part.capitalize() for part in nickname.split("-"))


def _pick(options: Sequence[str], draw: float) -> str:
    return options[min(int(draw * len(options)), len(options) - 1)]


def _drop_part(value: str, draws: Sequence[float]) -> str:
    separator = "-" if "-" in value else " "
    parts = value.split(separator)
    options = [
        parts[0],
        parts[-1],
        " ".join(parts) if separator == "-" else "-".join(parts),
        "".join(parts),
    ]
    options = [option for option in options if option != value and option.strip()]
    return _pick(options, draws[0]) if options else value


def _unicode_variant(value: str, draws: Sequence[float]) -> str:
    options: list[Callable[[str], str]] = []
    if not value.isascii():
        options += [_nfd, strip_accents]
    if "'" in value:
        options += [
            lambda text: text.replace("'", "\u2019"),
            lambda text: text.replace("'", ""),
            lambda text: text.replace("'", " "),
            lambda text: text.replace("'", "`"),
        ]
    if "-" in value:
        options += [
            lambda text: text.replace("-", "\u2013"),
            lambda text: text.replace("-", " "),
            lambda text: text.replace("-", ""),
        ]
    if " " in value:
        options += [lambda text: text.replace(" ", ""), lambda text: text.replace(" ", "-")]
    start = min(int(draws[0] * len(options)), len(options) - 1)
    for offset in range(len(options)):
        result = options[(start + offset) % len(options)](value)
        if result != value:
            return result
    return value


def _nfd(value: str) -> str:
    return unicodedata.normalize("NFD", value)


def _whitespace(value: str, draws: Sequence[float]) -> str:
    kind = draws[0]
    if kind < 0.35:
        return value + (" " if draws[1] < 0.7 else "  ")
    if kind < 0.5:
        return " " + value
    if kind < 0.65 and " " in value:
        return value.replace(" ", "  ", 1)
    if kind < 0.75 and " " in value:
        return value.replace(" ", NO_BREAK_SPACE, 1)
    position = 1 + min(int(draws[1] * max(len(value) - 1, 1)), max(len(value) - 1, 0))
    return value[:position] + ZERO_WIDTH_SPACE + value[position:]


def _case_variant(upper_layout: bool) -> Callable[[str, Sequence[float]], str]:
    def change(value: str, draws: Sequence[float]) -> str:
        options = (str.title, str.lower) if upper_layout else (str.upper, str.lower)
        first, second = options if draws[0] < 0.7 else options[::-1]
        result = first(value)
        return result if result != value else second(value)

    return change


def _initial(value: str, draws: Sequence[float]) -> str:
    return value[0] + ("." if draws[0] < 0.3 else "")


def _postcode_format(value: str, draws: Sequence[float]) -> str:
    kind = draws[0]
    if kind < 0.5 and " " in value:
        return value.replace(" ", "")
    if kind < 0.7:
        lowered = value.lower()
        if lowered != value:
            return lowered
    if kind < 0.8 and " " in value:
        return value.replace(" ", "  ")
    return value + " " if draws[1] < 0.5 else " " + value


def _names(
    run: _Run,
    records: RecordValues,
    population: Population,
    layout: Layout,
    tables: NameTables,
) -> None:
    people = records.people
    forenames, surnames = records.forenames, records.surnames

    lowered = np.array([name.lower() for name in forenames.tolist()], dtype=object)
    chosen = run.select("forename_nickname", _contains(lowered, tables.nicknames))
    nicknamed = np.zeros(run.count, dtype=bool)
    nicknamed[chosen] = True
    forenames[chosen] = [
        _capitalise(_pick(tables.nicknames[name], draw[0]))
        for name, draw in zip(lowered[chosen].tolist(), run.draws(len(chosen)), strict=True)
    ]
    variants = _contains(forenames, tables.forename_variants) & ~nicknamed
    chosen = run.select("forename_variant", variants)
    forenames[chosen] = [
        _pick(tables.forename_variants[name], draw[0])
        for name, draw in zip(forenames[chosen].tolist(), run.draws(len(chosen)), strict=True)
    ]

    chosen = run.select("surname_change", population.sex[people] == "F")
    surnames[chosen] = population.other_surnames[people[chosen]]
    chosen = run.select("surname_variant", _contains(surnames, tables.surname_variants))
    surnames[chosen] = [
        _pick(tables.surname_variants[name], draw[0])
        for name, draw in zip(surnames[chosen].tolist(), run.draws(len(chosen)), strict=True)
    ]
    chosen = run.select("surname_part_dropped", _has_parts(surnames))
    _rewrite(surnames, chosen, _drop_part, run.draws(len(chosen)))

    middle = population.middle_names[people]
    chosen = run.select("forename_middle_name", middle != "")
    forenames[chosen] = [
        f"{first} {second}"
        for first, second in zip(forenames[chosen].tolist(), middle[chosen].tolist(), strict=True)
    ]

    # From here on the values are in the department's own case, as its system holds them.
    if layout.name_case == "upper":
        records.forenames = forenames = np.array(
            [name.upper() for name in forenames.tolist()], dtype=object
        )
        records.surnames = surnames = np.array(
            [name.upper() for name in surnames.tolist()], dtype=object
        )

    chosen = run.select("forename_typo")
    _rewrite(forenames, chosen, name_typo, run.draws(len(chosen)))
    chosen = run.select("surname_typo")
    _rewrite(surnames, chosen, name_typo, run.draws(len(chosen)))
    long_enough = np.fromiter(
        (len(name) > 1 and name[0].isalpha() for name in forenames.tolist()),
        dtype=bool,
        count=run.count,
    )
    chosen = run.select("forename_initial", long_enough)
    _rewrite(forenames, chosen, _initial, run.draws(len(chosen)))

    special_forename = np.fromiter(map(_special, forenames.tolist()), dtype=bool, count=run.count)
    special_surname = np.fromiter(map(_special, surnames.tolist()), dtype=bool, count=run.count)
    chosen = run.select("name_unicode", special_forename | special_surname)
    _either_name(run, records, chosen, _unicode_variant, special_forename, special_surname)
    everyone = np.ones(run.count, dtype=bool)
    chosen = run.select("name_whitespace")
    _either_name(run, records, chosen, _whitespace, everyone, everyone)
    chosen = run.select("name_case")
    _either_name(
        run, records, chosen, _case_variant(layout.name_case == "upper"), everyone, everyone
    )

    chosen = run.select("name_swap")
    forenames[chosen], surnames[chosen] = surnames[chosen], forenames[chosen].copy()

    chosen = run.select("forename_missing")
    forenames[chosen] = run.markers(len(chosen), NULL_MARKERS, NULL_MARKER_WEIGHTS)
    chosen = run.select("surname_missing")
    surnames[chosen] = run.markers(len(chosen), NULL_MARKERS, NULL_MARKER_WEIGHTS)


def _either_name(
    run: _Run,
    records: RecordValues,
    chosen: npt.NDArray[np.intp],
    function: Callable[[str, Sequence[float]], str],
    forename_ok: npt.NDArray[np.bool_],
    surname_ok: npt.NDArray[np.bool_],
) -> None:
    """Apply ``function`` to one name of each chosen record: either if both may take it."""
    coin = run.rng.random(len(chosen)) < 0.5
    pick_forename = forename_ok[chosen] & (~surname_ok[chosen] | coin)
    for values, where in (
        (records.forenames, chosen[pick_forename]),
        (records.surnames, chosen[~pick_forename]),
    ):
        _rewrite(values, where, function, run.draws(len(where)))


def _birth_dates(run: _Run, records: RecordValues, latest_year: int) -> None:
    years, months, days = records.birth_years, records.birth_months, records.birth_days
    chosen = run.select("dob_day_month_swap", (days <= 12) & (days != months))
    months[chosen], days[chosen] = days[chosen], months[chosen].copy()

    chosen = run.select("dob_digit_typo")
    for position, draw in zip(chosen.tolist(), run.draws(len(chosen)), strict=True):
        years[position], months[position], days[position] = date_digit_typo(
            int(years[position]),
            int(months[position]),
            int(days[position]),
            draw,
            latest_year=latest_year,
        )

    chosen = run.select("dob_year_off")
    step = np.where(run.rng.random(len(chosen)) < 0.5, -1, 1)
    step[years[chosen] + step > latest_year] = -1
    years[chosen] += step
    leap_day = chosen[(months[chosen] == 2) & (days[chosen] == 29)]
    days[leap_day] = 28

    chosen = run.select("dob_placeholder")
    whole = (run.rng.random(len(chosen)) < 0.7) | ((months[chosen] == 1) & (days[chosen] == 1))
    years[chosen[whole]] = PLACEHOLDER_DATE[0]
    months[chosen] = 1
    days[chosen] = 1

    chosen = run.select("dob_missing")
    records.birth_date_text[chosen] = run.markers(
        len(chosen), DATE_NULL_MARKERS, DATE_NULL_MARKER_WEIGHTS
    )


def _sex(run: _Run, records: RecordValues) -> None:
    chosen = run.select("sex_wrong")
    records.sex[chosen] = np.where(records.sex[chosen] == "F", "M", "F")
    chosen = run.select("sex_missing")
    records.sex[chosen] = "U"


def _postcodes(run: _Run, records: RecordValues, population: Population) -> None:
    postcodes = records.postcodes
    chosen = run.select("postcode_moved")
    postcodes[chosen] = population.other_postcodes[records.people[chosen]]
    chosen = run.select("postcode_typo")
    _rewrite(postcodes, chosen, postcode_typo, run.draws(len(chosen)))
    chosen = run.select("postcode_format")
    _rewrite(postcodes, chosen, _postcode_format, run.draws(len(chosen)))
    chosen = run.select("postcode_missing")
    postcodes[chosen] = run.markers(len(chosen), NULL_MARKERS, NULL_MARKER_WEIGHTS)


def corrupt(
    records: RecordValues,
    *,
    population: Population,
    layout: Layout,
    difficulty: Difficulty,
    tables: NameTables,
    rng: np.random.Generator,
    latest_year: int,
) -> CorruptionLog:
    """Corrupt ``records`` in place at ``difficulty`` and put names in the layout's case.

    ``latest_year`` bounds the dates a typo may produce (no one is born after the extract).
    """
    count = len(records.people)
    run = _Run(rng=rng, rates=rates_for(difficulty), count=count)
    run.touched = np.zeros(count, dtype=bool)
    _names(run, records, population, layout, tables)
    _birth_dates(run, records, latest_year)
    _sex(run, records)
    _postcodes(run, records, population)
    missing = set(_KIND_BY_NAME) - set(run.applied)
    if missing:
        raise AssertionError(f"corruption kinds never considered: {sorted(missing)}")
    return CorruptionLog(
        records=count,
        eligible=MappingProxyType(dict(run.eligible)),
        applied=MappingProxyType(dict(run.applied)),
        corrupted_records=int(run.touched.sum()),
    )

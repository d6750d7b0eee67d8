"""bloomlink.synth corruption: rates as documented, effects visible in the output, primitives."""

from __future__ import annotations

import csv
import datetime
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bloomlink.synth.corruption as corruption
from bloomlink.synth import CORRUPTION_KINDS, SynthConfig, SynthResult, generate, rates_for
from bloomlink.synth.tables import load_tables
from bloomlink.synth.typos import date_digit_typo, name_typo, postcode_typo, strip_accents

ROOT = Path(__file__).resolve().parents[3]
RECORDS = 20_000
NULLS = {"", "NULL", "N/A", "UNKNOWN", "-"}


@pytest.fixture(scope="module", params=["low", "medium", "hard"])
def corrupted(request: pytest.FixtureRequest) -> SynthResult:
    return generate(
        SynthConfig(
            departments=("moj", "hmpps"), records=RECORDS, difficulty=request.param, seed=2024
        )
    )


def _within(observed: int, trials: int, rate: float) -> bool:
    """Observed count within 5 binomial standard deviations (plus one) of the rate."""
    expected = trials * rate
    return abs(observed - expected) <= 5 * math.sqrt(trials * rate * (1 - rate)) + 1


def test_each_kind_hits_its_documented_rate(corrupted: SynthResult) -> None:
    rates = rates_for(corrupted.config.difficulty)
    for extract in corrupted.departments:
        log = extract.corruption
        assert set(log.applied) == {kind.name for kind in CORRUPTION_KINDS}
        for name, rate in rates.items():
            eligible = log.eligible[name]
            assert eligible > 100, f"{name}: too few eligible records to judge"
            assert _within(log.applied[name], eligible, rate), (
                f"{extract.name} {name}: {log.applied[name]} of {eligible}, rate {rate}"
            )


def test_observed_errors_match_the_rates(corrupted: SynthResult) -> None:
    rates = rates_for(corrupted.config.difficulty)
    population = corrupted.population
    extract = corrupted.department("moj")
    layout = extract.layout
    people = extract.people
    columns = extract.columns
    records = len(extract)

    # Sex: wrong and missing are the only ways it differs (missing applies last).
    parsed = [layout.parse_sex(code) for code in columns["gender"].tolist()]
    unknown = sum(value is None for value in parsed)
    assert _within(unknown, records, rates["sex_missing"])
    wrong = sum(
        value is not None and value != truth
        for value, truth in zip(parsed, population.sex[people].tolist(), strict=True)
    )
    assert _within(wrong, records, rates["sex_wrong"] * (1 - rates["sex_missing"]))

    # Postcode: a null marker only from postcode_missing.
    missing = sum(value in NULLS for value in columns["postcode"].tolist())
    assert _within(missing, records, rates["postcode_missing"])
    moved_rate = rates["postcode_moved"] * (1 - rates["postcode_missing"])
    moved = sum(
        value == other
        for value, other in zip(
            columns["postcode"].tolist(), population.other_postcodes[people].tolist(), strict=True
        )
    )
    # Typos and format changes can hide a move; never invent one.
    assert moved <= records * moved_rate + 5 * math.sqrt(records * moved_rate)
    assert moved >= records * moved_rate * (1 - rates["postcode_typo"] - rates["postcode_format"])
    assert moved >= records * moved_rate * 0.8 - 5 * math.sqrt(records * moved_rate)

    # Date of birth: differs from the truth about as often as the date kinds fire.
    truth = [
        datetime.date(int(y), int(m), int(d)).strftime(layout.date_format)
        for y, m, d in zip(
            population.birth_years[people],
            population.birth_months[people],
            population.birth_days[people],
            strict=True,
        )
    ]
    differs = sum(
        value != true for value, true in zip(columns["date_of_birth"], truth, strict=True)
    )
    applied = extract.corruption.applied
    date_kinds = ["dob_day_month_swap", "dob_digit_typo", "dob_year_off", "dob_placeholder",
                  "dob_missing"]  # fmt: skip
    touched = sum(applied[kind] for kind in date_kinds)
    assert differs <= touched
    assert differs >= 0.9 * touched - 10


def test_difficulty_levels_get_harder(tmp_path: Path) -> None:
    changed = {}
    for difficulty in ("none", "low", "medium", "hard"):
        result = generate(SynthConfig(records=4000, difficulty=difficulty, seed=8))
        changed[difficulty] = sum(
            extract.corruption.corrupted_records for extract in result.departments
        )
    assert changed["none"] == 0 < changed["low"] < changed["medium"] < changed["hard"]
    # Hard is hard but not hopeless: most records keep at least most fields.
    assert changed["hard"] < 2 * 4000 * 0.8


def test_surname_changes_and_moves_agree_across_a_person_records() -> None:
    result = generate(
        SynthConfig(
            departments=("moj", "dfe"), records=5000, difficulty="hard", repeat_rate=0.2, seed=4
        )
    )
    population = result.population
    for extract in result.departments:
        surnames = extract.columns[extract.layout.surname_column].tolist()
        others = population.other_surnames[extract.people].tolist()
        changed = [
            i for i, (now, other) in enumerate(zip(surnames, others, strict=True)) if now == other
        ]
        assert changed, "some records should show the person's other surname"
        assert all(population.sex[extract.people[i]] == "F" for i in changed)


def test_nicknames_come_from_the_shared_list_and_beyond_it() -> None:
    tables = load_tables()
    result = generate(SynthConfig(departments=("moj",), records=20_000, difficulty="hard", seed=6))
    extract = result.departments[0]
    true_forenames = result.population.forenames[extract.people].tolist()
    shown = extract.columns["forename"].tolist()
    in_list = outside = 0
    for value, truth in zip(shown, true_forenames, strict=True):
        nickname = value.lower()
        if nickname in tables.nicknames.get(truth.lower(), ()):
            if tables.protocol_nicknames.get(nickname) == truth.lower():
                in_list += 1
            else:
                outside += 1
    assert in_list > 50 and outside > 5


def test_docs_and_docstring_carry_the_rate_table() -> None:
    docs = (ROOT / "docs" / "synth.md").read_text(encoding="utf-8")
    assert corruption.rate_table_markdown() in docs
    assert corruption.rate_table_text() in (corruption.__doc__ or "")


def test_none_has_all_rates_zero() -> None:
    assert not any(rates_for("none").values())
    with pytest.raises(ValueError):
        rates_for("brutal")  # type: ignore[arg-type]


# --- primitives -----------------------------------------------------------------------------

names = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'- ëáØ"),
    min_size=1,
    max_size=20,
)
draws = st.lists(st.floats(min_value=0, max_value=0.999999), min_size=4, max_size=4)


@given(names, draws)
def test_a_name_typo_always_changes_the_name_by_one_or_two_characters(
    value: str, draw: list[float]
) -> None:
    result = name_typo(value, draw)
    assert result != value
    assert abs(len(result) - len(value)) <= 1


@given(st.dates(min_value=datetime.date(1935, 1, 1), max_value=datetime.date(2019, 12, 31)), draws)
def test_a_date_typo_gives_another_valid_date(born: datetime.date, draw: list[float]) -> None:
    year, month, day = date_digit_typo(born.year, born.month, born.day, draw, latest_year=2024)
    assert datetime.date(year, month, day) != born
    assert 1900 <= year <= 2024


@given(st.sampled_from(["SW1A 1AA", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT"]), draws)
def test_a_postcode_typo_changes_one_character(postcode: str, draw: list[float]) -> None:
    result = postcode_typo(postcode, draw)
    assert len(result) == len(postcode)
    assert sum(a != b for a, b in zip(result, postcode, strict=True)) == 1


def test_strip_accents_flattens_letters_ascii_systems_cannot_hold() -> None:
    assert strip_accents("Zoë Łukasz Nguyễn Siobhán") == "Zoe Lukasz Nguyen Siobhan"


def test_tables_keep_names_through_the_departments_case() -> None:
    tables = load_tables()
    every = [
        *tables.female_forenames.tolist(),
        *tables.male_forenames.tolist(),
        *tables.surnames.tolist(),
    ]
    assert all(name.upper().lower() == name.lower() for name in every)
    assert all(name == name.strip() and "  " not in name for name in every)
    assert len(tables.female_forenames) >= 300 and len(tables.male_forenames) >= 300
    assert len(tables.surnames) >= 1000
    assert any("'" in name for name in every) and any("-" in name for name in every)
    assert any(not name.isascii() for name in every)
    weights = tables.surname_weights
    assert weights[0] > 10 * np.median(weights)  # Zipf-like, not uniform


def test_shared_nickname_list_is_clean() -> None:
    path = ROOT / "protocol" / "data" / "nicknames.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["nickname", "canonical"]
    pairs = rows[1:]
    assert len(pairs) >= 300
    assert all(len(row) == 2 and all(v.isascii() and v == v.lower() and v for v in row)
               for row in pairs)  # fmt: skip
    nicknames = [row[0] for row in pairs]
    assert len(nicknames) == len(set(nicknames)), "a nickname must map to one formal name"
    assert ("bill", "william") in {tuple(row) for row in pairs}


def test_extra_nicknames_are_not_in_the_shared_list() -> None:
    shared = set(load_tables().protocol_nicknames.items())
    extra_path = ROOT / "bloomlink" / "synth" / "data" / "nicknames_extra.csv"
    with extra_path.open(encoding="utf-8", newline="") as handle:
        extra = {(row["nickname"], row["canonical"]) for row in csv.DictReader(handle)}
    assert extra and not extra & shared


def test_data_files_stay_small() -> None:
    folder = ROOT / "bloomlink" / "synth" / "data"
    assert sum(path.stat().st_size for path in folder.iterdir()) < 500_000

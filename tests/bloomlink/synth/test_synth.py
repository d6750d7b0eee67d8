"""bloomlink.synth: counts, truth, determinism, difficulty none, layouts, ids, files, CLI."""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bloomlink.cli import main
from bloomlink.synth import LAYOUTS, DepartmentExtract, SynthConfig, SynthResult, generate, write
from bloomlink.synth.generation import extract_people
from bloomlink.synth.layouts import upn_check_letters
from protocol.errors import ConfigurationError

ALL = ("moj", "dfe", "hmpps")
ID_PATTERNS = {
    "moj": re.compile(r"^P\d{8}$"),
    "dfe": re.compile(r"^[A-Z]\d{12}$"),
    "hmpps": re.compile(r"^[A-G]\d{4}[A-Z]{2}$"),
}


@pytest.fixture(scope="module")
def hard_set() -> SynthResult:
    return generate(
        SynthConfig(departments=ALL, records=3000, difficulty="hard", repeat_rate=0.1, seed=11)
    )


@pytest.fixture(scope="module")
def clean_set() -> SynthResult:
    return generate(
        SynthConfig(departments=ALL, records=2000, difficulty="none", repeat_rate=0.1, seed=5)
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_same_data_other_seed_other_data() -> None:
    config = SynthConfig(departments=ALL, records=500, difficulty="medium", seed=42)
    first, second = generate(config), generate(config)
    other = generate(SynthConfig(departments=ALL, records=500, difficulty="medium", seed=43))
    assert list(first.truth()) == list(second.truth())
    for one, two, three in zip(
        first.departments, second.departments, other.departments, strict=True
    ):
        assert list(one.rows()) == list(two.rows())
        assert list(one.rows()) != list(three.rows())


def test_no_seed_draws_one_and_records_it() -> None:
    result = generate(SynthConfig(records=50, seed=None))
    again = generate(SynthConfig(records=50, seed=result.seed))
    assert list(result.departments[0].rows()) == list(again.departments[0].rows())


@pytest.mark.parametrize(
    ("records", "overlap", "repeat_rate"), [(1000, 0.5, 0.0), (999, 0.25, 0.1), (400, 1.0, 0.3)]
)
def test_counts_overlap_and_repeats_are_as_configured(
    records: int, overlap: float, repeat_rate: float
) -> None:
    config = SynthConfig(
        departments=ALL, records=records, overlap=overlap, repeat_rate=repeat_rate, seed=3
    )
    result = generate(config)
    first = set(result.departments[0].people.tolist())
    assert len(first) == config.distinct_people
    for extract in result.departments:
        people = extract.people.tolist()
        assert len(extract) == records
        assert len(set(people)) == config.distinct_people
        assert len(people) - len(set(people)) == round(records * repeat_rate)
    for extract in result.departments[1:]:
        shared = first & set(extract.people.tolist())
        assert len(shared) == round(config.distinct_people * overlap)
    fresh = config.distinct_people - config.shared_people
    assert len(result.population) == config.distinct_people + 2 * fresh


def test_only_the_named_departments_repeat_people() -> None:
    config = SynthConfig(
        departments=ALL, records=600, repeat_rate=0.3, repeat_departments=("moj",), seed=4
    )
    result = generate(config)
    moj, *others = result.departments
    assert len(moj) == 600 and len(set(moj.people.tolist())) == config.distinct_people
    for extract in others:
        assert len(extract) == len(set(extract.people.tolist())) == config.distinct_people
    assert result.summary()["repeat_departments"] == ["moj"]
    with pytest.raises(ConfigurationError, match="repeat departments hmrc are not generated"):
        SynthConfig(repeat_rate=0.1, repeat_departments=("hmrc",))


def test_truth_covers_every_record_once_with_unique_ids(
    hard_set: SynthResult, tmp_path: Path
) -> None:
    files = write(hard_set, tmp_path)
    truth = read_csv(files.truth)
    assert list(truth[0]) == ["department", "record_id", "person_id"]
    keys = [(row["department"], row["record_id"]) for row in truth]
    assert len(keys) == len(set(keys)) == sum(len(extract) for extract in hard_set.departments)
    by_key = {(row["department"], row["record_id"]): row["person_id"] for row in truth}
    for name in ALL:
        layout = LAYOUTS[name]
        rows = read_csv(tmp_path / f"{name}.csv")
        ids = [row[layout.id_column] for row in rows]
        assert len(ids) == len(set(ids)) == len(hard_set.department(name))
        assert all((name, record_id) in by_key for record_id in ids)
    # The truth agrees with the population: same person id, same person.
    population_ids = set(hard_set.population.person_ids.tolist())
    assert set(by_key.values()) <= population_ids
    settings = json.loads(files.settings.read_text(encoding="utf-8"))
    assert settings["seed"] == 11 and settings["difficulty"] == "hard"
    assert settings["per_department"]["moj"]["records"] == 3000


def _canonical(layout_name: str, row: dict[str, str]) -> tuple[str, ...]:
    layout = LAYOUTS[layout_name]
    born = layout.parse_date(row[layout.birth_date_column])
    assert born is not None
    return (
        row[layout.forename_column].casefold(),
        row[layout.surname_column].casefold(),
        born.isoformat(),
        str(layout.parse_sex(row[layout.sex_column])),
        row[layout.postcode_column],
    )


def test_difficulty_none_gives_each_person_identical_values_everywhere(
    clean_set: SynthResult, tmp_path: Path
) -> None:
    write(clean_set, tmp_path)
    person_of = {
        (row["department"], row["record_id"]): row["person_id"]
        for row in read_csv(tmp_path / "truth.csv")
    }
    seen: defaultdict[str, set[tuple[str, ...]]] = defaultdict(set)
    departments_of: defaultdict[str, set[str]] = defaultdict(set)
    for name in ALL:
        layout = LAYOUTS[name]
        for row in read_csv(tmp_path / f"{name}.csv"):
            person = person_of[(name, row[layout.id_column])]
            seen[person].add(_canonical(name, row))
            departments_of[person].add(name)
    assert all(len(values) == 1 for values in seen.values())
    assert sum(len(names) == 3 for names in departments_of.values()) > 100
    for extract in clean_set.departments:
        assert extract.corruption.corrupted_records == 0
        assert not any(extract.corruption.applied.values())


def test_difficulty_none_values_are_the_people_true_values(clean_set: SynthResult) -> None:
    population = clean_set.population
    extract = clean_set.department("moj")
    layout = extract.layout
    for row, person in zip(extract.rows(), extract.people.tolist(), strict=True):
        record = dict(zip(layout.columns, row, strict=True))
        assert record["forename"] == population.forenames[person]
        assert record["surname"] == population.surnames[person]
        assert record["postcode"] == population.postcodes[person]
        assert layout.parse_sex(record["gender"]) == population.sex[person]


@pytest.mark.parametrize("name", ALL)
def test_every_layout_value_parses_or_is_a_known_missing_marker(
    hard_set: SynthResult, name: str
) -> None:
    extract = hard_set.department(name)
    layout = extract.layout
    markers = {"", "NULL", "N/A"}
    codes = set(layout.sex_codes.values()) | set(layout.unknown_sex_codes)
    for row in extract.rows():
        record = dict(zip(layout.columns, row, strict=True))
        assert ID_PATTERNS[name].match(record[layout.id_column])
        date = record[layout.birth_date_column]
        assert date in markers or layout.parse_date(date) is not None
        assert record[layout.sex_column] in codes
    if name == "dfe":
        numbers = np.array([int(value[1:]) for value in extract.record_ids.tolist()])
        letters = upn_check_letters(numbers).tolist()
        assert [value[0] for value in extract.record_ids.tolist()] == letters


def test_layouts_format_dates_and_sex_as_documented(clean_set: SynthResult) -> None:
    samples = {name: next(clean_set.department(name).rows()) for name in ALL}
    assert re.match(r"^\d{2}/\d{2}/\d{4}$", samples["moj"][3])
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", samples["dfe"][3])
    assert re.match(r"^\d{8}$", samples["hmpps"][3])
    assert samples["moj"][4] in {"Male", "Female"}
    assert samples["dfe"][4] in {"M", "F"}
    assert samples["hmpps"][4] in {"1", "2"}
    hmpps = clean_set.department("hmpps")
    names = hmpps.columns["first_names"].tolist() + hmpps.columns["family_name"].tolist()
    assert all(value == value.upper() for value in names)


@pytest.mark.parametrize("name", ALL)
def test_record_ids_are_random_looking_not_row_numbers(hard_set: SynthResult, name: str) -> None:
    ids = hard_set.department(name).record_ids.tolist()
    digits = [int(re.sub(r"\D", "", value)) for value in ids]
    assert ids != sorted(ids)
    steps = Counter(np.diff(digits).tolist())
    assert steps.most_common(1)[0][1] < len(ids) // 100
    assert digits[:10] != list(range(digits[0], digits[0] + 10))


def test_person_ids_are_not_shared_by_two_people(hard_set: SynthResult) -> None:
    ids = hard_set.population.person_ids.tolist()
    assert len(set(ids)) == len(ids)


def test_hard_names_include_realistic_unicode_and_nicknames(hard_set: SynthResult) -> None:
    names = [
        value
        for extract in hard_set.departments
        for column in (extract.layout.forename_column, extract.layout.surname_column)
        for value in extract.columns[column].tolist()
    ]
    assert any(not value.isascii() for value in names)
    assert any(unicodedata.is_normalized("NFC", value) is False for value in names)
    assert any("\u2019" in value or "\u200b" in value for value in names)
    assert any(value in {"NULL", "N/A", "UNKNOWN", "-"} for value in names)


def test_written_csv_round_trips_and_parquet_matches_it(tmp_path: Path) -> None:
    result = generate(SynthConfig(departments=ALL, records=300, difficulty="hard", seed=9))
    write(result, tmp_path / "csv")
    files = write(result, tmp_path / "parquet", format="parquet")
    assert [path.name for path in files.extracts] == [f"{name}.parquet" for name in ALL]
    for name in ALL:
        rows = read_csv(tmp_path / "csv" / f"{name}.csv")
        table = pq.read_table(tmp_path / "parquet" / f"{name}.parquet").to_pylist()
        assert rows == table
        assert [tuple(row.values()) for row in rows] == list(result.department(name).rows())
    assert (tmp_path / "parquet" / "truth.csv").exists()
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize(
    "settings",
    [
        {"departments": ()},
        {"departments": ("moj", "nhs")},
        {"departments": ("moj", "moj")},
        {"records": 0},
        {"overlap": 1.5},
        {"difficulty": "brutal"},
        {"repeat_rate": 0.9},
        {"seed": -1},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        SynthConfig(**settings)  # type: ignore[arg-type]


def test_cli_writes_the_set_and_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "set"
    code = main(
        [
            "synth", "--out", str(out), "--records", "200", "--departments", "moj,hmpps",
            "--overlap", "0.4", "--difficulty", "low", "--repeat-rate", "0.05", "--seed", "7",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and str(out) in printed[0] and "seed 7" in printed[0]
    assert sorted(path.name for path in out.iterdir()) == [
        "hmpps.csv", "moj.csv", "synth.json", "truth.csv"
    ]  # fmt: skip
    assert len(read_csv(out / "moj.csv")) == 200
    settings = json.loads((out / "synth.json").read_text(encoding="utf-8"))
    assert settings["per_department"]["hmpps"]["people_shared_with_first"] == round(190 * 0.4)
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), "--records", "200", "--departments",
                 "moj,hmpps", "--overlap", "0.4", "--difficulty", "low", "--repeat-rate",
                 "0.05", "--seed", "7", "--format", "parquet"]) == 0  # fmt: skip
    assert (again / "truth.csv").read_bytes() == (out / "truth.csv").read_bytes()


def test_cli_refuses_bad_settings_with_the_configuration_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--out", str(tmp_path), "--overlap", "2"]) == 3
    assert capsys.readouterr().err.startswith("error: ConfigurationError:")
    assert main(["synth", "--out", str(tmp_path), "--departments", "moj,nhs"]) == 2


def test_a_later_extract_of_the_same_people_has_new_errors_and_new_ids() -> None:
    first = generate(SynthConfig(departments=("moj",), records=400, difficulty="hard", seed=21))
    (moj,) = first.departments
    rng = np.random.default_rng(22)
    people = rng.permutation(moj.people[:300])
    again = extract_people(first.population, people, department="moj", difficulty="hard", rng=rng)
    assert again.name == "moj" and again.people.tolist() == people.tolist()
    assert not set(again.record_ids.tolist()) & set(moj.record_ids.tolist())

    # The same people, corrupted afresh: most values agree, some do not.
    def values(department: DepartmentExtract) -> dict[int, tuple[str, ...]]:
        layout = department.layout
        columns = [c for c in layout.columns if c != layout.id_column]
        rows = zip(*(department.columns[c].tolist() for c in columns), strict=True)
        return dict(zip(department.people.tolist(), rows, strict=True))

    before, after = values(moj), values(again)
    same = sum(before[person] == after[person] for person in after)
    assert len(after) // 10 < same < len(after) * 9 // 10
    with pytest.raises(ConfigurationError, match="layout"):
        extract_people(first.population, people, department="nope", difficulty="hard", rng=rng)

"""Department mappings: every problem listed at once, and the same person written the MoJ,
DfE and HMPPS ways normalises identically."""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from party.mapping import load_mapping, parse_mapping, shipped_mapping
from protocol.errors import ExtractError, MappingError, RecordError
from protocol.schema import default_schema, parse_schema

MOJ_HEADER = ["person_id", "forename", "surname", "date_of_birth", "gender", "postcode"]
DFE_HEADER = ["pupil_id", "legal_forename", "legal_surname", "dob", "sex", "home_postcode"]
HMPPS_HEADER = ["prison_number", "first_names", "family_name", "birth_date", "sex_code", "postcode"]


def moj_document() -> dict[str, Any]:
    text = resources.files("party").joinpath("data/mappings/moj.toml").read_text("utf-8")
    return tomllib.loads(text)


def test_same_person_normalises_identically_in_every_layout() -> None:
    schema = default_schema()
    moj = shipped_mapping("moj").bind(schema, MOJ_HEADER)
    dfe = shipped_mapping("dfe").bind(schema, DFE_HEADER)
    hmpps = shipped_mapping("hmpps").bind(schema, HMPPS_HEADER)
    written = {
        "moj": ["M1", "Zoë", "O’Brien", "29/02/2000", "Female", "sw1a 1aa"],
        "dfe": ["D1", "ZOE", "O'BRIEN", "2000-02-29", "F", "SW1A1AA"],
        "hmpps": ["H1", " zoe\u200b ", "o`brien", "20000229", "2", " Sw1A  1aA "],
    }
    values = [
        moj.normalise(written["moj"], row_number=1),
        dfe.normalise(written["dfe"], row_number=1),
        hmpps.normalise(written["hmpps"], row_number=1),
    ]
    assert (
        values[0]
        == values[1]
        == values[2]
        == [
            "zoe",
            "obrien",
            "2000-02-29",
            "f",
            "SW1A 1AA",
        ]
    )


def test_nicknames_apply_to_the_forename_only() -> None:
    bound = shipped_mapping("dfe").bind(default_schema(), DFE_HEADER)
    values = bound.normalise(["D1", "Bill", "Bill", "1990-01-01", "M", "M1 1AE"], row_number=1)
    assert values[:2] == ["william", "bill"]


def test_every_mapping_problem_is_listed_at_once() -> None:
    document = {
        "mapping_version": 2,
        "department": "Bad Dept",
        "record_id": "",
        "null_markers": "NULL",
        "extra_columns": "maybe",
        "surprise": 1,
        "fields": {
            "forename": {"column": "first", "colour": "red"},
            "surname": {},
            "date_of_birth": {"column": "dob", "date_formats": ["%d/%m/%y", "%m/%Y", "%Q"]},
            "sex": {"column": "sex", "codes": {"M": "male"}},
            "postcode": {"column": "pc", "absent": True},
            "nhs": {"column": "nhs", "absent": "yes"},
            "other": {"column": "s2", "codes": {"M": "m", "m": "f"}},
        },
    }
    with pytest.raises(MappingError) as raised:
        parse_mapping(document, source="bad.toml")
    text = " | ".join(raised.value.problems)
    expected = [
        "unknown key 'surprise'",
        "mapping_version must be 1",
        "department must be a lower-case label",
        "record_id must name the column",
        "null_markers must be a list of strings",
        "extra_columns must be 'error' or 'ignore'",
        "fields.forename: unknown key 'colour'",
        'fields.surname: give column = "..."',
        "two-digit year",
        "'%m/%Y' has no day",
        "'%Q' has no year",
        "fields.sex.codes must map each code",
        "fields.postcode: give column or absent = true, not both",
        "fields.nhs.absent must be true or false",
        "fields.other.codes: codes are matched ignoring case, so these clash: m",
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert "bad.toml" in str(raised.value)


def test_mapping_must_fit_the_schema() -> None:
    document = moj_document()
    del document["fields"]["postcode"]
    document["fields"]["nhs_number"] = {"column": "nhs"}
    document["fields"]["date_of_birth"] = {"column": "date_of_birth"}
    document["fields"]["sex"] = {"column": "gender"}
    mapping = parse_mapping(document)
    with pytest.raises(MappingError) as raised:
        mapping.bind(default_schema(), MOJ_HEADER)
    text = " | ".join(raised.value.problems)
    assert "schema field 'postcode' is not mapped" in text
    assert "field 'nhs_number' is not in schema 'default-person'" in text
    assert "field 'date_of_birth' is a date: give date_formats" in text
    assert "field 'sex' is sex: give codes" in text
    assert len(raised.value.problems) == 4


def test_missing_extra_and_duplicate_columns_are_listed_together() -> None:
    mapping = shipped_mapping("moj")
    header = ["person_id", "forename", "forename", "date_of_birth", "gender", "postcode", "notes"]
    with pytest.raises(ExtractError) as raised:
        mapping.bind(default_schema(), header, source="moj.csv")
    message = str(raised.value)
    assert "columns appear more than once: forename" in message
    assert "missing columns the mapping needs: surname" in message
    assert "columns the mapping does not mention: notes" in message


def test_extra_columns_can_be_ignored() -> None:
    document = moj_document() | {"extra_columns": "ignore"}
    bound = parse_mapping(document).bind(default_schema(), [*MOJ_HEADER, "notes"])
    row = ["1", "Ann", "Lee", "01/02/1990", "Female", "M1 1AE", "free text"]
    assert bound.normalise(row, row_number=1)[0] == "ann"


def test_absent_fields_set_no_bits() -> None:
    document = moj_document()
    document["fields"]["postcode"] = {"absent": True}
    header = MOJ_HEADER[:-1]
    bound = parse_mapping(document).bind(default_schema(), header)
    values = bound.normalise(["1", "Ann", "Lee", "01/02/1990", "Female"], row_number=1)
    assert values == ["ann", "lee", "1990-02-01", "f", None]


def test_required_field_cannot_be_absent_and_rejects_missing_values() -> None:
    text = resources.files("protocol").joinpath("data/default_schema.toml").read_text("utf-8")
    schema_document = tomllib.loads(text)
    schema_document["fields"][1]["missing"] = "required"
    schema = parse_schema(schema_document)
    absent = moj_document()
    absent["fields"]["surname"] = {"absent": True}
    with pytest.raises(MappingError, match="'surname' is required by the schema"):
        parse_mapping(absent).bind(schema, [c for c in MOJ_HEADER if c != "surname"])
    bound = shipped_mapping("moj").bind(schema, MOJ_HEADER)
    row = ["1", "Ann", "NULL", "01/02/1990", "Female", "M1 1AE"]
    with pytest.raises(RecordError) as raised:
        bound.normalise(row, row_number=7)
    assert raised.value.row == 7 and raised.value.field == "surname"
    # Even under the "blank" policy a required value is never blanked.
    with pytest.raises(RecordError):
        bound.normalise(row, row_number=7, blanked=[])


def test_bad_values_name_row_and_field_but_not_the_value() -> None:
    bound = shipped_mapping("moj").bind(default_schema(), MOJ_HEADER)
    row = ["1", "Ann", "Lee", "31/02/1990", "Female", "M1 1AE"]
    with pytest.raises(RecordError) as raised:
        bound.normalise(row, row_number=12)
    assert str(raised.value).startswith("row 12, field 'date_of_birth': ")
    assert "31/02/1990" not in str(raised.value)
    blanked: list[RecordError] = []
    values = bound.normalise(row, row_number=12, blanked=blanked)
    assert values[2] is None and values[0] == "ann"
    assert [(problem.row, problem.field) for problem in blanked] == [(12, "date_of_birth")]


def test_wrong_cell_count_is_a_record_error() -> None:
    bound = shipped_mapping("moj").bind(default_schema(), MOJ_HEADER)
    with pytest.raises(RecordError, match="row 3: has 5 cells but the header has 6"):
        bound.normalise(["1", "Ann", "Lee", "01/02/1990", "Female"], row_number=3)


def test_department_null_markers_and_long_foreign_postcodes() -> None:
    document = copy.deepcopy(moj_document()) | {"null_markers": ["ZZZ", "  Not Given "]}
    bound = parse_mapping(document).bind(default_schema(), MOJ_HEADER)
    row = ["1", "zzz", "not given", "01/02/1990", "Female", "75008 PARIS FRANCE"]
    assert bound.normalise(row, row_number=1) == [
        None,
        None,
        "1990-02-01",
        "f",
        "75008PARISFRANCE",
    ]


def test_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="does not exist"):
        load_mapping(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[fields\n", encoding="utf-8")
    with pytest.raises(MappingError, match="cannot read TOML"):
        load_mapping(broken)
    with pytest.raises(MappingError, match="no shipped mapping"):
        shipped_mapping("nosuch")


def test_dialect_and_pivot_problems_are_listed_too() -> None:
    document = moj_document()
    document.update(delimiter=";;", encoding="klingon", two_digit_year_pivot=25)
    with pytest.raises(MappingError) as raised:
        parse_mapping(document)
    text = " | ".join(raised.value.problems)
    assert "delimiter must be one character" in text
    assert "two_digit_year_pivot must be a four-digit year" in text
    assert "two-digit year (%y)" not in text  # moj's formats have four-digit years


def test_a_semicolon_file_read_as_commas_gets_a_delimiter_hint(tmp_path: Path) -> None:
    from party.extract import open_extract

    path = tmp_path / "moj.csv"
    path.write_text(";".join(MOJ_HEADER) + "\nM1;Ada;Lee;01/02/1990;Female;SW1A 1AA\n")
    with open_extract(path) as reader:
        with pytest.raises(ExtractError) as raised:
            shipped_mapping("moj").bind(default_schema(), reader.header)
    assert raised.value.message.endswith(
        "the file looks ';'-separated: set delimiter = ';' in the mapping"
    )
    document = moj_document() | {"delimiter": ";"}
    mapping = parse_mapping(document)
    with open_extract(path, dialect=mapping.dialect) as reader:
        bound = mapping.bind(default_schema(), reader.header)
        row = next(iter(reader)).rows[0]
    assert bound.normalise(row, row_number=1)[:3] == ["ada", "lee", "1990-02-01"]


def test_a_tab_separated_file_gets_its_own_hint() -> None:
    with pytest.raises(ExtractError, match=r'tab-separated: set delimiter = "\\t"'):
        shipped_mapping("moj").bind(default_schema(), ["\t".join(MOJ_HEADER)])


def test_the_mapping_encoding_reads_a_cp1252_file(tmp_path: Path) -> None:
    from party.extract import open_extract

    path = tmp_path / "moj.csv"
    path.write_bytes(
        (",".join(MOJ_HEADER) + "\nM1,Zoë,Brontë,01/02/1990,Female,SW1A 1AA\n").encode("cp1252")
    )
    mapping = parse_mapping(moj_document() | {"encoding": "cp1252"})
    with open_extract(path, dialect=mapping.dialect) as reader:
        bound = mapping.bind(default_schema(), reader.header)
        row = next(iter(reader)).rows[0]
    assert bound.normalise(row, row_number=1)[:2] == ["zoe", "bronte"]
    # Read as UTF-8 (the default), the same bytes are invalid: rejected naming row and field.
    with open_extract(path) as reader:
        bound = shipped_mapping("moj").bind(default_schema(), reader.header)
        row = next(iter(reader)).rows[0]
    with pytest.raises(RecordError, match="row 1, field 'forename'"):
        bound.normalise(row, row_number=1)


@pytest.mark.parametrize(
    ("pivot", "raw", "expected"),
    [
        (1925, "10/12/15", "2015-12-10"),
        (1925, "08/06/55", "1955-06-08"),
        (1925, "01/01/25", "1925-01-01"),
        (1925, "31/12/24", "2024-12-31"),
        (1900, "31/12/99", "1999-12-31"),
        (1930, "29/02/00", "2000-02-29"),
    ],
)
def test_two_digit_years_follow_the_pivot(pivot: int, raw: str, expected: str) -> None:
    document = moj_document()
    document["two_digit_year_pivot"] = pivot
    document["fields"]["date_of_birth"]["date_formats"] = ["%d/%m/%y"]
    bound = parse_mapping(document).bind(default_schema(), MOJ_HEADER)
    row = ["M1", "Ada", "Lee", raw, "Female", "SW1A 1AA"]
    assert bound.normalise(row, row_number=1)[2] == expected
    reader = bound.fields[2]
    assert reader.normalise_many([raw, raw]) == [expected, expected]  # the batch path agrees


def test_a_pivot_that_lands_on_a_missing_leap_day_rejects_the_value() -> None:
    document = moj_document()
    document["two_digit_year_pivot"] = 1850  # "00" is 1900, which had no 29 February
    document["fields"]["date_of_birth"]["date_formats"] = ["%d/%m/%y"]
    bound = parse_mapping(document).bind(default_schema(), MOJ_HEADER)
    with pytest.raises(RecordError, match="not a date"):
        bound.normalise(["M1", "Ada", "Lee", "29/02/00", "Female", ""], row_number=4)

"""Normalisation of bad and unusual input (security.md section 6 G, cases 35-42)."""

from __future__ import annotations

import datetime as dt
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ValueRejectedError
from protocol.normalisation import (
    nickname_table,
    normalise_date,
    normalise_identifier,
    normalise_name,
    normalise_postcode,
    normalise_sex,
    normalise_text,
    strip_invisible,
)

DMY = ("%d/%m/%Y",)
ISO = ("%Y-%m-%d",)
TODAY = dt.date(2024, 6, 1)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("Zoë", "zoe"),  # NFC
        (unicodedata.normalize("NFD", "Zoë"), "zoe"),  # NFD
        ("Ｚｏｅ", "zoe"),  # fullwidth
        ("ﬁona", "fiona"),  # ligature
        ("Smith²", "smith"),  # superscript digit is not a letter
        ("Straße", "strasse"),
        ("STRAẞE", "strasse"),
        ("İlker", "ilker"),  # Turkish dotted capital I
        ("ılker", "ilker"),  # Turkish dotless i
        ("Jo\u200dhn", "john"),  # ZWJ
        ("Jo\u200chn", "john"),  # ZWNJ
        ("Jo\u200bhn", "john"),  # ZWSP
        ("\ufeffJohn", "john"),  # BOM
        ("Jo\u00adhn", "john"),  # soft hyphen
        ("\u200eJohn\u202e", "john"),  # bidi marks
        ("Zoe\u200d\u0308", "zoe"),  # a joiner cannot keep an accent apart
        ("  Mary   Ann  ", "mary ann"),
        ("Mary\tAnn", "mary ann"),
        ("Mary\nAnn", "mary ann"),
        ("Mary\r\nAnn", "mary ann"),
        ("Søren Ærø", "soren aero"),
    ],
)
def test_names_fold_to_one_form(written: str, expected: str) -> None:
    assert normalise_name(written) == expected


@pytest.mark.parametrize(
    "variants",
    [
        ["O'Brien", "O’Brien", "O`Brien", "O‘Brien", "OBrien", "o'brien"],
        ["Smith-Jones", "Smith–Jones", "Smith—Jones", "Smith Jones", "SMITH - JONES"],
    ],
)
def test_apostrophe_and_hyphen_variants_agree(variants: list[str]) -> None:
    assert len({normalise_name(variant) for variant in variants}) == 1


def test_greek_final_sigma_and_capitals_without_accents_agree() -> None:
    forms = {normalise_name(word) for word in ("Οδυσσέας", "ΟΔΥΣΣΕΑΣ", "οδυσσεας", "Οδυσσεασ")}
    assert len(forms) == 1


@pytest.mark.parametrize(
    "marker",
    ["", "   ", "\t", "NULL", "null", "N/A", "n/a", "-", "--", "?", "UNKNOWN", "Unknown",
     "not known", "<NULL>", "(null)", "[unknown]", "Null.", "N/K", "\u200b", "\ufeffNULL"],
)  # fmt: skip
def test_null_like_values_are_missing_in_every_kind(marker: str) -> None:
    assert normalise_name(marker) is None
    assert normalise_text(marker) is None
    assert normalise_identifier(marker) is None
    assert normalise_postcode(marker) is None
    assert normalise_date(marker, formats=DMY, today=TODAY) is None
    assert normalise_sex(marker, codes={"M": "m", "F": "f"}) is None


def test_department_null_markers_are_missing() -> None:
    assert normalise_name("ZZZ", null_markers=frozenset({"zzz"})) is None
    assert normalise_name("ZZZ") == "zzz"


def test_over_long_value_is_rejected_without_quoting_it() -> None:
    value = "Alexandra" * 1200  # over 10,000 characters
    with pytest.raises(ValueRejectedError) as raised:
        normalise_name(value)
    assert "Alexandra" not in str(raised.value)
    assert "longer than" in str(raised.value)


def test_undecodable_bytes_are_rejected_without_quoting_them() -> None:
    value = b"Jos\xe9 Smith".decode("utf-8", "surrogateescape")
    with pytest.raises(ValueRejectedError) as raised:
        normalise_name(value)
    assert "UTF-8" in str(raised.value)
    assert "Jos" not in str(raised.value)


@pytest.mark.parametrize("value", ["😀", "🏳️‍🌈", "👨‍👩‍👧"])
def test_emoji_alone_is_missing(value: str) -> None:
    assert normalise_name(value) is None


def test_emoji_inside_a_name_separates_words() -> None:
    assert normalise_name("John😀Smith") == "john smith"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("李小龍", "李小龍"),
        ("محمد", "محمد"),
        ("हिन्दी", "हिन्दी"),  # vowel signs and virama stay part of the word
        ("क्षमा", "क्षमा"),
        ("がくと", "がくと"),  # voiced kana stay voiced (が is not か)
        ("Йосиф", "йосиф"),  # Cyrillic й is a letter, not и with an accent
        ("Иван", "иван"),
    ],
)
def test_non_latin_scripts_are_kept(written: str, expected: str) -> None:
    assert normalise_name(written) == expected
    assert normalise_name(written) == normalise_name(written)


def test_non_latin_identifiers_keep_their_marks() -> None:
    assert normalise_identifier("हिन्दी 12") == "हिन्दी12"


def test_confusables_from_different_scripts_stay_different() -> None:
    # Documented policy: no transliteration, so Latin "a" and Cyrillic "а" differ.
    latin, cyrillic = "anna", "\u0430nn\u0430"
    assert normalise_name(latin) != normalise_name(cyrillic)


def test_identifiers_fold_case_before_letters() -> None:
    assert normalise_identifier("Ø-123") == normalise_identifier("ø-123") == "O123"


@pytest.mark.parametrize(
    ("value", "formats", "expected"),
    [
        ("29/02/2000", DMY, "2000-02-29"),
        ("29/02/2004", DMY, "2004-02-29"),
        ("2000-02-29", ISO, "2000-02-29"),
        ("01/02/1985", DMY, "1985-02-01"),
        ("1985-02-01", ISO, "1985-02-01"),
        (" 01/02/1985 ", DMY, "1985-02-01"),
        ("１９８５-０２-０１", ISO, "1985-02-01"),
        ("19850201", ("%Y%m%d",), "1985-02-01"),
        ("1985-02-01", DMY + ISO, "1985-02-01"),
    ],
)
def test_dates_parse_to_iso(value: str, formats: tuple[str, ...], expected: str) -> None:
    assert normalise_date(value, formats=formats, today=TODAY) == expected


@pytest.mark.parametrize("value", ["29/02/2001", "29/02/1900", "31/04/2000", "00/01/2000"])
def test_impossible_dates_are_rejected(value: str) -> None:
    with pytest.raises(ValueRejectedError) as raised:
        normalise_date(value, formats=DMY, today=TODAY)
    assert value not in str(raised.value)


def test_two_digit_years_do_not_parse_as_four_digit_formats() -> None:
    with pytest.raises(ValueRejectedError):
        normalise_date("01/02/85", formats=DMY, today=TODAY)


def test_future_date_is_rejected() -> None:
    with pytest.raises(ValueRejectedError, match="future"):
        normalise_date("02/06/2024", formats=DMY, today=TODAY)
    assert normalise_date("01/06/2024", formats=DMY, today=TODAY) == "2024-06-01"


@pytest.mark.parametrize(
    "value", ["01/01/1900", "01/01/0001", "01/01/1753", "30/12/1899", "11/11/1111"]
)
def test_placeholder_dates_are_missing(value: str) -> None:
    assert normalise_date(value, formats=DMY, today=TODAY) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sw1a 1aa", "SW1A 1AA"),
        ("SW1A1AA", "SW1A 1AA"),
        ("  sw1a   1aa ", "SW1A 1AA"),
        ("sw1a-1aa", "SW1A 1AA"),
        ("ＳＷ１Ａ １ＡＡ", "SW1A 1AA"),
        ("M1 1AE", "M1 1AE"),
        ("gir 0aa", "GIR 0AA"),
        ("12345", "12345"),  # not UK-shaped: kept as letters and digits
        ("not a postcode!!", "NOTAPOSTCODE"),
    ],
)
def test_postcodes(value: str, expected: str) -> None:
    assert normalise_postcode(value, max_length=100) == expected


def test_sex_codes_follow_the_mapping() -> None:
    moj = {"Male": "m", "Female": "f", "Unknown": ""}
    assert normalise_sex(" MALE ", codes=moj) == "m"
    assert normalise_sex("female", codes=moj) == "f"
    assert normalise_sex("Unknown", codes=moj) is None
    with pytest.raises(ValueRejectedError) as raised:
        normalise_sex("Xyzzy", codes=moj)
    assert "Xyzzy" not in str(raised.value)
    hmpps = {"1": "m", "2": "f", "9": ""}
    assert normalise_sex("1", codes=hmpps) == "m"
    assert normalise_sex("9", codes=hmpps) is None


def test_nicknames_map_to_formal_names_and_are_stable() -> None:
    table = nickname_table()
    assert normalise_name("Bill", nicknames=table) == "william"
    # No nickname maps to another nickname: applying the table twice changes nothing.
    assert all(formal not in table for formal in table.values())


def test_normalised_name_over_its_limit_is_rejected() -> None:
    with pytest.raises(ValueRejectedError):
        normalise_name("a" * 101, max_length=100)


raw_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(["<NULL>", "Null.", "N/A", "Zoë", "O’Brien", "हिन्दी", "Οδυσσέας", "ΣΣ"])


@given(raw_text)
def test_normalising_a_normalised_name_changes_nothing(value: str) -> None:
    once = normalise_name(value, nicknames=nickname_table())
    if once is not None:
        assert normalise_name(once, nicknames=nickname_table()) == once


@given(raw_text)
def test_normalising_text_identifiers_and_postcodes_is_idempotent(value: str) -> None:
    for normalise in (normalise_text, normalise_identifier):
        once = normalise(value, max_length=1000)
        if once is not None:
            assert normalise(once, max_length=1000) == once
    postcode = normalise_postcode(value, max_length=1000)
    if postcode is not None:
        assert normalise_postcode(postcode, max_length=1000) == postcode


@given(raw_text)
def test_cleaning_is_idempotent_and_leaves_no_invisible_characters(value: str) -> None:
    cleaned = strip_invisible(value)
    assert strip_invisible(cleaned) == cleaned
    assert not any(unicodedata.category(char) in ("Cc", "Cf") for char in cleaned)

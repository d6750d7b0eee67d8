"""Department layouts: how each department's system names, formats and identifies records.

Stage: test-data generation. The same person looks different in each department only
because of these layouts (column names, date formats, sex codes, the case names are stored
in, record identifiers) and, above difficulty ``none``, because of corruption.

    layout  record id      forename        surname        date of birth  sex (F/M/unknown)
    moj     person_id      forename        surname        date_of_birth  gender
            P + 8 digits   as entered      as entered     DD/MM/YYYY     Female/Male/"" or Unknown
    dfe     pupil_id       legal_forename  legal_surname  dob            sex
            UPN-like       as entered      as entered     YYYY-MM-DD     F/M/""
    hmpps   prison_number  first_names     family_name    birth_date     sex_code
            A1234BC-like   UPPER           UPPER          YYYYMMDD       2/1/9

Each layout's postcode column holds the postcode as recorded ("SW1A 1AA" when clean).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

from bloomlink.synth.population import unique_random_integers

__all__ = [
    "LAYOUTS",
    "Layout",
    "make_dfe_ids",
    "make_hmpps_ids",
    "make_moj_ids",
    "upn_check_letters",
]

NameCase = Literal["as_entered", "upper"]
IdMaker = Callable[[np.random.Generator, int], npt.NDArray[np.object_]]

# The check letter of a Unique Pupil Number: weights 2..13 over the 12 digits, mod 23.
UPN_CHECK_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"
# Prison numbers start with A..G (issued in sequence) and avoid I and O in their suffix.
PRISON_FIRST_LETTERS = np.array(list("ABCDEFG"), dtype=object)
PRISON_SUFFIX_LETTERS = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), dtype=object)


def make_moj_ids(rng: np.random.Generator, count: int) -> npt.NDArray[np.object_]:
    """``P`` and 8 digits, e.g. ``P04719382``."""
    values = unique_random_integers(rng, count, low=0, high=10**8)
    return np.array([f"P{value:08d}" for value in values.tolist()], dtype=object)


def make_dfe_ids(rng: np.random.Generator, count: int) -> npt.NDArray[np.object_]:
    """UPN-like: check letter, local-authority code, 9 digits, e.g. ``H801200001001``."""
    serials = unique_random_integers(rng, count, low=0, high=10**9)
    numbers = rng.integers(201, 939, size=count, dtype=np.int64) * 10**9 + serials
    return np.array(
        [
            f"{letter}{number:012d}"
            for letter, number in zip(
                upn_check_letters(numbers).tolist(), numbers.tolist(), strict=True
            )
        ],
        dtype=object,
    )


def upn_check_letters(numbers: npt.NDArray[np.int64]) -> npt.NDArray[np.str_]:
    """The UPN check letter of each 12-digit number (weights 2..13 left to right, mod 23)."""
    total = np.zeros(len(numbers), dtype=np.int64)
    remaining = numbers.copy()
    for weight in range(13, 1, -1):  # the last digit carries weight 13
        remaining, digit = np.divmod(remaining, 10)
        total += digit * weight
    return np.asarray(list(UPN_CHECK_LETTERS))[total % 23]


def make_hmpps_ids(rng: np.random.Generator, count: int) -> npt.NDArray[np.object_]:
    """NOMIS-like prison numbers: letter, 4 digits, 2 letters, e.g. ``A1234BC``."""
    suffixes = len(PRISON_SUFFIX_LETTERS)
    space = len(PRISON_FIRST_LETTERS) * 10**4 * suffixes**2
    values = unique_random_integers(rng, count, low=0, high=space)
    first, rest = np.divmod(values, 10**4 * suffixes**2)
    number, tail = np.divmod(rest, suffixes**2)
    second, third = np.divmod(tail, suffixes)
    return np.array(
        [
            f"{a}{n:04d}{b}{c}"
            for a, n, b, c in zip(
                PRISON_FIRST_LETTERS[first].tolist(),
                number.tolist(),
                PRISON_SUFFIX_LETTERS[second].tolist(),
                PRISON_SUFFIX_LETTERS[third].tolist(),
                strict=True,
            )
        ],
        dtype=object,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """One department's extract format.

    ``date_format`` is a ``strftime`` pattern; ``sex_codes`` maps ``"F"``/``"M"`` to the
    department's codes and ``unknown_sex_codes`` lists what it writes when sex is not known
    (the first is the usual one).
    """

    name: str
    description: str
    id_column: str
    forename_column: str
    surname_column: str
    birth_date_column: str
    sex_column: str
    postcode_column: str
    date_format: str
    sex_codes: Mapping[str, str]
    unknown_sex_codes: tuple[str, ...]
    name_case: NameCase
    make_ids: IdMaker

    def __post_init__(self) -> None:
        if set(self.sex_codes) != {"F", "M"} or not self.unknown_sex_codes:
            raise ValueError(f"layout {self.name} needs codes for F, M and unknown sex")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"layout {self.name} repeats a column name")

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names in file order."""
        return (
            self.id_column,
            self.forename_column,
            self.surname_column,
            self.birth_date_column,
            self.sex_column,
            self.postcode_column,
        )

    def format_date(self, year: int, month: int, day: int) -> str:
        return datetime.date(year, month, day).strftime(self.date_format)

    def parse_date(self, text: str) -> datetime.date | None:
        """The date in ``text``, or None when it is empty or not in this layout's format."""
        try:
            return datetime.datetime.strptime(text, self.date_format).date()
        except ValueError:
            return None

    def parse_sex(self, code: str) -> str | None:
        """``"F"``, ``"M"``, or None for an unknown or unrecognised code."""
        for sex, value in self.sex_codes.items():
            if code == value:
                return sex
        return None

    def stored_case(self, name: str) -> str:
        """``name`` in the case this department's system stores names."""
        return name.upper() if self.name_case == "upper" else name


LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        "moj": Layout(
            name="moj",
            description="Ministry of Justice courts",
            id_column="person_id",
            forename_column="forename",
            surname_column="surname",
            birth_date_column="date_of_birth",
            sex_column="gender",
            postcode_column="postcode",
            date_format="%d/%m/%Y",
            sex_codes=MappingProxyType({"F": "Female", "M": "Male"}),
            unknown_sex_codes=("", "Unknown"),
            name_case="as_entered",
            make_ids=make_moj_ids,
        ),
        "dfe": Layout(
            name="dfe",
            description="Department for Education",
            id_column="pupil_id",
            forename_column="legal_forename",
            surname_column="legal_surname",
            birth_date_column="dob",
            sex_column="sex",
            postcode_column="home_postcode",
            date_format="%Y-%m-%d",
            sex_codes=MappingProxyType({"F": "F", "M": "M"}),
            unknown_sex_codes=("",),
            name_case="as_entered",
            make_ids=make_dfe_ids,
        ),
        "hmpps": Layout(
            name="hmpps",
            description="HM Prison and Probation Service",
            id_column="prison_number",
            forename_column="first_names",
            surname_column="family_name",
            birth_date_column="birth_date",
            sex_column="sex_code",
            postcode_column="postcode",
            date_format="%Y%m%d",
            sex_codes=MappingProxyType({"F": "2", "M": "1"}),
            unknown_sex_codes=("9",),
            name_case="upper",
            make_ids=make_hmpps_ids,
        ),
    }
)

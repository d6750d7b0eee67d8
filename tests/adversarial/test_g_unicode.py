"""Group G, Unicode and normalisation edge cases (security.md section 6, cases 35-42), in the
cross-department end-to-end form: the same person at MoJ (DD/MM/YYYY, Male/Female, odd
spellings) and at DfE (ISO dates, M/F, plain spellings) gives identical CLKs through the real
``encode_extract``. The normaliser's unit tests live in tests/protocol/test_normalisation*.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.errors import RecordError, ValueRejectedError
from tests.adversarial.conftest import encode_rows

# (case, MoJ forename, MoJ surname, MoJ date, DfE forename, DfE surname)
SAME_PERSON = [
    ("35-nfd", "Zoe\u0308", "Bronte\u0308", "01/02/2001", "Zoë", "Brontë"),
    ("35-fullwidth", "\uff3a\uff4f\uff45", "Smith", "01/02/2001", "Zoe", "Smith"),
    ("35-ligature", "\ufb01ona", "Gri\ufb03n", "01/02/2001", "fiona", "griffin"),
    ("36-eszett", "Hans", "STRASSE", "01/02/2001", "hans", "Straße"),
    ("36-dotless-i", "Ismail", "Yilmaz", "01/02/2001", "ısmaıl", "Yılmaz"),
    ("36-final-sigma", "ΟΔΥΣΣΕΥΣ", "Papas", "01/02/2001", "οδυσσευς", "Papas"),
    ("37-invisible", "A\u200dnn\u200b", "\ufeffLee\u00ad\u200e\u202e", "01/02/2001", "Ann", "Lee"),
    ("38-apostrophe", "Sean", "O\u2019Brien", "01/02/2001", "Sean", "O'Brien"),
    ("38-backtick", "Sean", "O`Brien", "01/02/2001", "Sean", "OBrien"),
    ("38-dash", "Amy", "Smith\u2013Jones", "01/02/2001", "Amy", "Smith Jones"),
    ("38-whitespace", "  Amy\t", "Smith  -\nJones ", "01/02/2001", "amy", "smith-jones"),
    ("41-leap-day", "Leap", "Day", "29/02/2000", "Leap", "Day"),
]


def _encode_pair(tmp_path: Path, moj_rows, dfe_rows):
    moj, _ = encode_rows(tmp_path / "moj", "moj", moj_rows, bad_rows="blank")
    dfe, _ = encode_rows(tmp_path / "dfe", "dfe", dfe_rows, bad_rows="blank")
    return moj, dfe


def _iso(date: str) -> str:
    day, month, year = date.split("/")
    return f"{year}-{month}-{day}"


def test_cases_35_to_38_and_41_odd_forms_give_identical_clks_across_departments(tmp_path) -> None:
    """Cases 35-38, 41: NFD vs NFC, NFKC compatibility forms, ß/ss, dotless i, final sigma,
    invisible and bidi characters, apostrophe/hyphen variants, stray whitespace, 29 February
    and DD/MM vs ISO: each MoJ row's CLK equals its DfE twin's, bit for bit."""
    moj_rows = [
        (f"m{i}", f, s, d, "Female", "SW1A 1AA") for i, (_, f, s, d, _, _) in enumerate(SAME_PERSON)
    ]
    dfe_rows = [
        (f"d{i}", f, s, _iso(d), "F", "sw1a1aa") for i, (_, _, _, d, f, s) in enumerate(SAME_PERSON)
    ]
    moj, dfe = _encode_pair(tmp_path, moj_rows, dfe_rows)
    differing = [case for i, (case, *_) in enumerate(SAME_PERSON) if moj[f"m{i}"] != dfe[f"d{i}"]]
    assert differing == []


def test_case_39_null_like_values_are_missing_never_hashed_as_text(tmp_path) -> None:
    """Case 39: "NULL", "N/A", "-", "UNKNOWN", "" and whitespace-only surnames encode exactly
    like a missing surname (and unlike a real surname "Null")."""
    markers = ["NULL", "N/A", "-", "UNKNOWN", "", "   "]
    rows = [
        (f"r{i}", "Ann", marker, "01/02/2001", "Female", "SW1A 1AA")
        for i, marker in enumerate(markers)
    ]
    moj, _ = encode_rows(
        tmp_path / "moj",
        "moj",
        rows + [("real", "Ann", "Nullman", "01/02/2001", "Female", "SW1A 1AA")],
    )
    assert len({moj[f"r{i}"] for i in range(len(markers))}) == 1
    assert moj["real"] != moj["r0"]


def test_case_40_long_invalid_and_non_latin_values(tmp_path) -> None:
    """Case 40: a 10,000-character name is refused with the row named (never the value) and,
    under bad_rows=blank, treated as missing; emoji, Arabic, CJK and Cyrillic encode without a
    crash and deterministically; Latin "a" and Cyrillic "а" (confusables) stay different."""
    with pytest.raises(RecordError) as caught:
        encode_rows(
            tmp_path / "fail",
            "moj",
            [("r1", "A" * 10_000, "Lee", "01/02/2001", "Female", "SW1A 1AA")],
        )
    assert "AAAA" not in str(caught.value)
    rows = [
        ("long", "A" * 10_000, "Lee", "01/02/2001", "Female", "SW1A 1AA"),
        ("blank", "", "Lee", "01/02/2001", "Female", "SW1A 1AA"),
        ("emoji", "Ann😀", "Lee", "01/02/2001", "Female", "SW1A 1AA"),
        ("arabic", "محمد", "علي", "01/02/2001", "Male", "SW1A 1AA"),
        ("cjk", "李", "小龙", "01/02/2001", "Male", "SW1A 1AA"),
        ("latin", "Anna", "Ivanova", "01/02/2001", "Female", "SW1A 1AA"),
        ("cyrillic", "\u0430nn\u0430", "Ivanova", "01/02/2001", "Female", "SW1A 1AA"),
    ]
    first, _ = encode_rows(tmp_path / "one", "moj", rows, bad_rows="blank")
    second, _ = encode_rows(tmp_path / "two", "moj", rows, bad_rows="blank")
    assert first == second
    assert first["long"] == first["blank"]
    assert first["latin"] != first["cyrillic"]
    with pytest.raises(ValueRejectedError):
        from protocol.normalisation import normalise_name

        normalise_name("Ann\udcff")  # a lone surrogate: undecodable bytes in the extract


def test_case_41_date_edge_cases(tmp_path) -> None:
    """Case 41: a two-digit year does not parse as DD/MM/YYYY (refused, row named); a future
    date of birth is refused; 1900-01-01 placeholders are missing (= no date)."""
    base = ("Ann", "Lee")
    for bad in ("01/02/85", "01/02/2999"):
        with pytest.raises(RecordError):
            encode_rows(
                tmp_path / bad.replace("/", "-"), "moj", [("r1", *base, bad, "Female", "SW1A 1AA")]
            )
    moj, _ = encode_rows(
        tmp_path / "placeholder",
        "moj",
        [("p", *base, "01/01/1900", "Female", "SW1A 1AA"), ("n", *base, "", "Female", "SW1A 1AA")],
    )
    assert moj["p"] == moj["n"]


def _dice(first: bytes, second: bytes) -> float:
    a, b = np.frombuffer(first, dtype=np.uint8), np.frombuffer(second, dtype=np.uint8)
    common = int(np.unpackbits(a & b).sum())
    return 2 * common / (int(np.unpackbits(a).sum()) + int(np.unpackbits(b).sum()))


def test_case_42_swapped_names_and_multi_part_surnames_stay_close(tmp_path) -> None:
    """Case 42 (quality, not security): a hyphenated vs spaced multi-part surname is identical
    after normalisation, and a swapped forename/surname still scores a Dice above two unrelated
    people (by the shared date, sex and postcode only)."""
    rows = [
        ("orig", "Amy", "Smith-Jones", "01/02/2001", "Female", "SW1A 1AA"),
        ("spaced", "Amy", "Smith Jones", "01/02/2001", "Female", "SW1A 1AA"),
        ("swapped", "Smith-Jones", "Amy", "01/02/2001", "Female", "SW1A 1AA"),
        ("other", "Brian", "Okafor", "17/09/1978", "Male", "M1 1AE"),
    ]
    moj, _ = encode_rows(tmp_path, "moj", rows)
    assert moj["orig"] == moj["spaced"]
    swapped, unrelated = _dice(moj["orig"], moj["swapped"]), _dice(moj["orig"], moj["other"])
    # Per-field keys mean a swapped name shares no name bits (measured 0.59 vs 0.45): only
    # date, sex and postcode carry the pair. docs/adversarial.md records this as a known cost.
    assert swapped > unrelated + 0.1

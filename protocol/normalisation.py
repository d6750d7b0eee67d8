"""Stage 1, normalise: turn a department's raw value into the canonical text every party
would produce for the same person, so that different casing, accents, apostrophes, date
formats and sex codes never change a CLK.

Versioned as ``NORMALISER_VERSION``; the version is part of the schema fingerprint, so two
parties on different normaliser versions are refused before any comparison. Any change to
the output for any input is a new version.

Rules of norm/v1, in order (docs/schema.md has the full table):
 1. invalid UTF-8 (surrogate escapes) and over-long raw values are rejected;
 2. control characters become spaces; format characters (zero-width, bidi marks, BOM, soft
    hyphen) are removed;
 3. NFKC (compatibility forms: fullwidth letters, ligatures, superscripts);
 4. null-like values ("NULL", "N/A", "UNKNOWN", "-", ...) and empty values are missing, both
    as written and once normalised ("<NULL>", "Null." are missing too);
 5. per kind: names are case-folded, Latin and Greek accents folded (é -> e, ø -> o,
    ß -> ss, έ -> ε), marks of other scripts kept (Devanagari vowel signs, Cyrillic й),
    apostrophes removed, hyphens and dashes become spaces, other punctuation removed; dates are parsed
    with the department's formats and written as ISO YYYY-MM-DD; UK postcodes are written
    as "OUTWARD INWARD"; sex codes are mapped to "m" or "f"; identifiers are upper-cased
    letters and digits only;
 6. whitespace is collapsed; optionally nicknames become their formal name (a table shipped
    with bloomlink, applied identically at every party).
Non-Latin scripts are kept as they are (no transliteration), so confusable letters from
different scripts stay different.

The per-value ``normalise_*`` functions are the definition. The batched ``normalise_*s``
functions give the same output for every input (a property test holds them to it): they
answer the common already-clean ASCII shapes with one precompiled regex and cheap string
methods, and send every other value to the per-value function.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from importlib import resources

from protocol.errors import ValueRejectedError

__all__ = [
    "DEFAULT_NULL_MARKERS",
    "NORMALISER_VERSION",
    "is_null_like",
    "nickname_table",
    "nickname_table_digest",
    "normalise_date",
    "normalise_dates",
    "normalise_identifier",
    "normalise_identifiers",
    "normalise_name",
    "normalise_names",
    "normalise_postcode",
    "normalise_postcodes",
    "normalise_sex",
    "normalise_text",
    "normalise_texts",
    "strip_invisible",
]

NORMALISER_VERSION = "norm/v1"

# Compared after invisible characters are stripped and case is folded.
DEFAULT_NULL_MARKERS = frozenset(
    {
        "",
        "null",
        "n/a",
        "n.a.",
        "none",
        "nil",
        "unknown",
        "not known",
        "nk",
        "-",
        "--",
        "?",
        "not stated",
        "not applicable",
        "n/k",
    }
)

# Brackets and trailing dots systems wrap null markers in: "<NULL>", "(unknown)", "N/K.".
_MARKER_WRAPPING = " .,;:!()[]{}<>\"'*_"

RAW_LENGTH_LIMIT = 1000  # characters; anything longer is an extract fault, not a name

_APOSTROPHES = "'\u2018\u2019\u201b\u0060\u00b4\u02bc\u02bb\u2032"
_HYPHENS = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_APOSTROPHE_TABLE = str.maketrans({char: None for char in _APOSTROPHES})
# Letters NFKD does not decompose into base + accent.
_LETTER_FOLDS = str.maketrans(
    {"ø": "o", "đ": "d", "ł": "l", "æ": "ae", "œ": "oe", "þ": "th", "ð": "d", "ı": "i", "ħ": "h"}
)
_SPACES = re.compile(r"\s+")
_SURROGATES = re.compile("[\ud800-\udfff]")
_NOT_LETTERS = re.compile(r"[\W\d_]+")  # runs of anything but a letter (any script)
_NOT_ALNUM = re.compile(r"[\W_]+")
_NAME_PUNCTUATION = str.maketrans({**{c: None for c in _APOSTROPHES}, **{c: " " for c in _HYPHENS}})
_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?|GIR)([0-9][A-Z]{2})$")
# Dates systems write when they hold none: 1900-01-01 and friends, .NET's DateTime.MinValue,
# SQL Server's datetime minimum and the Excel/OLE epoch.
_PLACEHOLDER_DATES = frozenset(
    {
        "1900-01-01",
        "1800-01-01",
        "1111-11-11",
        "9999-12-31",
        "0001-01-01",
        "1753-01-01",
        "1899-12-30",
    }
)


def _check_raw(value: str) -> None:
    if len(value) > RAW_LENGTH_LIMIT:
        raise ValueRejectedError(f"value is longer than {RAW_LENGTH_LIMIT} characters")
    # Lone surrogates are how undecodable bytes arrive (surrogateescape); name them.
    if not value.isascii() and _SURROGATES.search(value):
        raise ValueRejectedError("value is not valid UTF-8 (check the extract's encoding)")


def strip_invisible(value: str) -> str:
    """NFKC, control characters to spaces, format characters removed, whitespace collapsed."""
    _check_raw(value)
    text = value
    if not text.isascii() or not text.isprintable():
        # Invisible characters go before NFKC, so a zero-width joiner between a letter and
        # its accent cannot stop them composing (and cleaning twice changes nothing).
        chars = []
        for char in text:
            category = unicodedata.category(char)
            if category == "Cf":
                continue
            chars.append(" " if category == "Cc" else char)
        text = "".join(chars)
        if not text.isascii():
            text = unicodedata.normalize("NFKC", text)
    return _SPACES.sub(" ", text).strip()


def is_null_like(cleaned: str, extra_markers: frozenset[str] = frozenset()) -> bool:
    """Whether an already-cleaned value means "missing".

    Also checked on the normalised value, so "<NULL>", "(unknown)" or "Null." never reach
    the encoder as the literal word (every such record would share its bits).
    """
    folded = cleaned.casefold()
    if folded in DEFAULT_NULL_MARKERS or folded in extra_markers:
        return True
    bare = folded.strip(_MARKER_WRAPPING)
    return bare != folded and (bare in DEFAULT_NULL_MARKERS or bare in extra_markers)


def _is_foldable_base(char: str) -> bool:
    # Latin (NFKD leaves an ASCII base) and Greek (tonos and dialytika are accents; Greek
    # capitals are usually written without them, so "ΟΔΥΣΣΕΑΣ" must match "Οδυσσέας").
    return char.isascii() or "\u0370" <= char <= "\u03ff" or "\u1f00" <= char <= "\u1fff"


def _word_characters(text: str, *, digits: bool) -> str:
    """Letters (and digits) of any script, with the marks that belong to them; everything
    else becomes one space. Marks are kept because in scripts such as Devanagari a vowel
    sign or virama is part of the spelling, not decoration (accents were folded already)."""
    pattern = _NOT_ALNUM if digits else _NOT_LETTERS
    if text.isascii():
        return pattern.sub(" ", text).strip()
    chars: list[str] = []
    after_letter = False
    for char in text:
        if char.isalpha() or (digits and char.isalnum()):
            chars.append(char)
            after_letter = True
        elif after_letter and unicodedata.category(char)[0] == "M":
            chars.append(char)
        else:
            chars.append(" ")
            after_letter = False
    return _SPACES.sub(" ", "".join(chars)).strip()


def _fold_accents(text: str) -> str:
    """Drop accents from Latin and Greek letters only: in other scripts a mark makes a
    different letter (Cyrillic й is not и), and those scripts are kept as written."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTER_FOLDS))
    kept: list[str] = []
    base_is_latin = False
    for char in decomposed:
        if unicodedata.combining(char):
            if not base_is_latin:
                kept.append(char)
            continue
        base_is_latin = _is_foldable_base(char)
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept))


def _limit(text: str, max_length: int) -> str:
    if len(text) > max_length:
        raise ValueRejectedError(f"normalised value is longer than {max_length} characters")
    return text


def normalise_name(
    value: str,
    *,
    max_length: int = 100,
    nicknames: Mapping[str, str] | None = None,
    null_markers: frozenset[str] = frozenset(),
) -> str | None:
    """A person's name as letters and single spaces, case- and accent-folded; None if missing."""
    cleaned = strip_invisible(value)
    if is_null_like(cleaned, null_markers):
        return None
    text = _fold_accents(cleaned.translate(_NAME_PUNCTUATION).casefold())
    text = _word_characters(text, digits=False)
    if is_null_like(text, null_markers):
        return None
    if nicknames:
        text = " ".join(nicknames.get(word, word) for word in text.split(" "))
    return _limit(text, max_length)


def normalise_text(
    value: str, *, max_length: int = 100, null_markers: frozenset[str] = frozenset()
) -> str | None:
    """Free text: case- and accent-folded letters and digits, punctuation as spaces."""
    cleaned = strip_invisible(value)
    if is_null_like(cleaned, null_markers):
        return None
    text = _fold_accents(cleaned.translate(_APOSTROPHE_TABLE).casefold())
    text = _word_characters(text, digits=True)
    if is_null_like(text, null_markers):
        return None
    return _limit(text, max_length)


def normalise_identifier(
    value: str, *, max_length: int = 100, null_markers: frozenset[str] = frozenset()
) -> str | None:
    """An identifier (e.g. a reference number): upper-case letters and digits only."""
    cleaned = strip_invisible(value)
    if is_null_like(cleaned, null_markers):
        return None
    # Case-fold before folding letters, so "Ø" and "ø" give the same identifier.
    folded = _fold_accents(cleaned.casefold()).upper()
    text = _word_characters(folded, digits=True).replace(" ", "")
    if is_null_like(text, null_markers):
        return None
    return _limit(text, max_length)


def normalise_postcode(
    value: str, *, max_length: int = 10, null_markers: frozenset[str] = frozenset()
) -> str | None:
    """A UK postcode as "OUTWARD INWARD". Values that are not UK-shaped are kept as upper-case
    letters and digits (a typo still shares most of its n-grams) rather than rejected."""
    cleaned = strip_invisible(value)
    if is_null_like(cleaned, null_markers):
        return None
    compact = _NOT_ALNUM.sub("", cleaned.upper())
    if is_null_like(compact, null_markers):
        return None
    match = _POSTCODE.fullmatch(compact)
    text = f"{match.group(1)} {match.group(2)}" if match else compact
    return _limit(text, max_length)


def normalise_sex(
    value: str, *, codes: Mapping[str, str], null_markers: frozenset[str] = frozenset()
) -> str | None:
    """Map a department's sex code to "m" or "f" (codes matched case-insensitively);
    codes mapped to "" mean not known."""
    cleaned = strip_invisible(value)
    folded = cleaned.casefold()
    for code, canonical in codes.items():
        if folded == code.casefold():
            return canonical or None
    if is_null_like(cleaned, null_markers):
        return None
    raise ValueRejectedError("value is not one of the mapping's sex codes")


def normalise_date(
    value: str,
    *,
    formats: tuple[str, ...],
    null_markers: frozenset[str] = frozenset(),
    today: dt.date | None = None,
    two_digit_year_pivot: int | None = None,
) -> str | None:
    """Parse with the department's formats (first that fits) and write ISO YYYY-MM-DD.

    Placeholder dates (1900-01-01 and the like) are missing; a date in the future is rejected.
    A two-digit year (``%y``) is read as the year from ``two_digit_year_pivot`` to 99 years
    after it that ends in those digits (pivot 1930: ``29`` is 2029, ``30`` is 1930).
    """
    cleaned = strip_invisible(value)
    if is_null_like(cleaned, null_markers):
        return None
    for date_format in formats:
        try:
            parsed = dt.datetime.strptime(cleaned, date_format).date()
            if two_digit_year_pivot is not None and "%y" in date_format.replace("%%", ""):
                century_year = two_digit_year_pivot + (parsed.year - two_digit_year_pivot) % 100
                parsed = parsed.replace(year=century_year)  # 29 February may not exist then
        except ValueError:
            continue
        iso = parsed.isoformat()
        if iso in _PLACEHOLDER_DATES:
            return None
        if parsed > (today or dt.date.today()):
            raise ValueRejectedError("date is in the future")
        return iso
    raise ValueRejectedError(f"value is not a date in the format {' or '.join(formats)}")


@functools.cache
def _nickname_bytes() -> bytes:
    return resources.files("protocol").joinpath("data/nicknames.csv").read_bytes()


@functools.cache
def nickname_table() -> Mapping[str, str]:
    """The shipped nickname -> formal name table, keyed and valued in normalised form."""
    rows = csv.DictReader(_nickname_bytes().decode("utf-8").splitlines())
    table: dict[str, str] = {}
    for row in rows:
        nickname = normalise_name(row["nickname"])
        canonical = normalise_name(row["canonical"])
        if nickname and canonical and nickname != canonical:
            table.setdefault(nickname, canonical)
    return table


def nickname_table_digest() -> str:
    """SHA-256 of the shipped table, so a changed table changes the schema fingerprint."""
    return hashlib.sha256(_nickname_bytes()).hexdigest()


# Batched fast paths. Each recognises a shape for which the per-value rules provably reduce
# to a few string operations, and hands anything else to its per-value twin.

# A UK postcode in ASCII, either case, with at most a few spaces around and between its
# halves: the only shapes whose cleaning is "drop the spaces, upper-case" (no control,
# format or non-ASCII characters; re.ASCII stops IGNORECASE matching the Kelvin sign or ſ).
_PLAIN_POSTCODE = re.compile(
    r" {0,3}([A-Z]{1,2}[0-9][A-Z0-9]?|GIR) {0,3}([0-9][A-Z]{2}) {0,3}", re.ASCII | re.IGNORECASE
)
_CANONICAL_POSTCODE = re.compile(r"(?:[A-Z]{1,2}[0-9][A-Z0-9]?|GIR) [0-9][A-Z]{2}")
_POSTCODE_LENGTH = 8  # the longest "OUTWARD INWARD"


def normalise_postcodes(
    values: Sequence[str], *, max_length: int = 10, null_markers: frozenset[str] = frozenset()
) -> list[str | None]:
    """:func:`normalise_postcode` over many values (the same results; raises
    ValueRejectedError as soon as a value is rejected, without saying which)."""
    if max_length < _POSTCODE_LENGTH:
        return [
            normalise_postcode(value, max_length=max_length, null_markers=null_markers)
            for value in values
        ]

    # The default markers hold no digits, but a department's own may be postcode-shaped
    # (ZZ99 3VZ); only those can match a value this fast path answers.
    shaped_markers = frozenset(filter(_PLAIN_POSTCODE.fullmatch, null_markers))

    def reshape(value: str) -> str | None:
        match = _PLAIN_POSTCODE.fullmatch(value)
        if match is None:
            return normalise_postcode(value, max_length=max_length, null_markers=null_markers)
        outward, inward = match.group(1).upper(), match.group(2).upper()
        text = f"{outward} {inward}"
        # Compared cleaned (spaced only if the raw value had a space inside) and compacted.
        if shaped_markers and (
            (outward + inward).lower() in shaped_markers
            or (" " in value.strip(" ") and text.lower() in shaped_markers)
        ):
            return None
        return text

    if shaped_markers:
        return list(map(reshape, values))
    # Already "OUTWARD INWARD": the value is its own normal form.
    return [
        value if match is not None else reshape(value)
        for value, match in zip(values, map(_CANONICAL_POSTCODE.fullmatch, values), strict=True)
    ]


# A date format made only of %d, %m and %Y (each once), split by "/", "-", "." or nothing:
# "%d/%m/%Y", "%Y-%m-%d", "%Y%m%d". For zero-padded ASCII digits of a real date, strptime's
# pattern (2-digit alternatives tried first, then the rest must fit) reads exactly the
# two-two-four digits this pattern captures; anything else goes to strptime itself.
_DATE_SEPARATORS = frozenset({"", "/", "-", "."})
_DATE_FIELDS = {"%d": "day", "%m": "month", "%Y": "year"}
_DATE_DIGITS = {"%d": 2, "%m": 2, "%Y": 4}


@functools.cache
def _plain_date_pattern(date_format: str) -> re.Pattern[str] | None:
    parts = re.split("(%.)", date_format)
    directives, separators = parts[1::2], parts[0::2]
    if sorted(directives) != sorted(_DATE_FIELDS) or separators[0] or separators[-1]:
        return None
    if not all(part in _DATE_SEPARATORS for part in separators[1:-1]):
        return None
    pattern = "".join(
        f"(?P<{_DATE_FIELDS[directive]}>[0-9]{{{_DATE_DIGITS[directive]}}})" + re.escape(separator)
        for directive, separator in zip(directives, [*separators[1:-1], ""], strict=True)
    )
    return re.compile(pattern, re.ASCII)


def normalise_dates(
    values: Sequence[str],
    *,
    formats: tuple[str, ...],
    null_markers: frozenset[str] = frozenset(),
    today: dt.date | None = None,
    two_digit_year_pivot: int | None = None,
) -> list[str | None]:
    """:func:`normalise_date` over many values (the same results; raises ValueRejectedError
    as soon as a value is rejected, without saying which)."""
    pattern = _plain_date_pattern(formats[0]) if formats else None
    if pattern is None:
        return [
            normalise_date(
                value,
                formats=formats,
                null_markers=null_markers,
                today=today,
                two_digit_year_pivot=two_digit_year_pivot,
            )
            for value in values
        ]
    # Only dates before the day the batch began are answered here: a date that is "today"
    # near midnight goes to the per-value rule, which reads the clock itself.
    latest = today or dt.date.today()
    result: list[str | None] = []
    for value, match in zip(values, map(pattern.fullmatch, values), strict=True):
        if match is not None and not (null_markers and value.casefold() in null_markers):
            try:
                parsed = dt.date(int(match["year"]), int(match["month"]), int(match["day"]))
            except ValueError:
                parsed = None
            if parsed is not None and (parsed < latest or (today is not None and parsed <= today)):
                iso = parsed.isoformat()
                result.append(None if iso in _PLACEHOLDER_DATES else iso)
                continue
        result.append(
            normalise_date(
                value,
                formats=formats,
                null_markers=null_markers,
                today=today,
                two_digit_year_pivot=two_digit_year_pivot,
            )
        )
    return result


# ASCII letters in words split by single spaces: cleaning, folding and punctuation rules
# leave such a name as its lower-case self.
_PLAIN_NAME = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")


def normalise_names(
    values: Sequence[str],
    *,
    max_length: int = 100,
    nicknames: Mapping[str, str] | None = None,
    null_markers: frozenset[str] = frozenset(),
) -> list[str | None]:
    """:func:`normalise_name` over many values (the same results; raises ValueRejectedError
    as soon as a value is rejected, without saying which)."""
    missing = DEFAULT_NULL_MARKERS | null_markers
    result: list[str | None] = []
    for value, match in zip(values, map(_PLAIN_NAME.fullmatch, values), strict=True):
        if match is not None and len(value) <= RAW_LENGTH_LIMIT:
            text = value.lower()
            if text in missing:
                result.append(None)
                continue
            if nicknames:
                text = " ".join(nicknames.get(word, word) for word in text.split(" "))
            if len(text) <= max_length:
                result.append(text)
                continue
        result.append(
            normalise_name(
                value, max_length=max_length, nicknames=nicknames, null_markers=null_markers
            )
        )
    return result


# ASCII letters and digits, in words split by single spaces (free text) or in one word
# (identifiers): cleaning and folding leave these as their lower- (upper-) case selves.
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z0-9]+")


def normalise_texts(
    values: Sequence[str], *, max_length: int = 100, null_markers: frozenset[str] = frozenset()
) -> list[str | None]:
    """:func:`normalise_text` over many values (the same results; raises ValueRejectedError
    as soon as a value is rejected, without saying which)."""
    missing = DEFAULT_NULL_MARKERS | null_markers
    limit = min(max_length, RAW_LENGTH_LIMIT)  # the output is as long as the value
    result: list[str | None] = []
    for value, match in zip(values, map(_PLAIN_TEXT.fullmatch, values), strict=True):
        if match is not None and len(value) <= limit:
            text = value.lower()
            result.append(None if text in missing else text)
        else:
            result.append(normalise_text(value, max_length=max_length, null_markers=null_markers))
    return result


def normalise_identifiers(
    values: Sequence[str], *, max_length: int = 100, null_markers: frozenset[str] = frozenset()
) -> list[str | None]:
    """:func:`normalise_identifier` over many values (the same results; raises
    ValueRejectedError as soon as a value is rejected, without saying which)."""
    missing = DEFAULT_NULL_MARKERS | null_markers
    limit = min(max_length, RAW_LENGTH_LIMIT)  # the output is as long as the value
    result: list[str | None] = []
    for value, match in zip(values, map(_PLAIN_IDENTIFIER.fullmatch, values), strict=True):
        if match is not None and len(value) <= limit:
            result.append(None if value.lower() in missing else value.upper())
        else:
            result.append(
                normalise_identifier(value, max_length=max_length, null_markers=null_markers)
            )
    return result

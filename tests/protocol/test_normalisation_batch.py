"""The batched normalisers (fast paths) against their per-value twins, the definition: the
same output for every value, and a rejection wherever the twin rejects."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from bloomlink.synth import SynthConfig, generate
from protocol import normalisation
from protocol.errors import ValueRejectedError

Outcome = list[str | None] | str


def _outcome(function: Callable[..., Any], *args: Any, **options: Any) -> Outcome:
    try:
        result: list[str | None] = function(*args, **options)
    except ValueRejectedError:
        return "rejected"
    return result


def _agree(
    batched: Callable[..., list[str | None]],
    single: Callable[..., str | None],
    values: Sequence[str],
    **options: Any,
) -> None:
    expected = _outcome(lambda: [single(value, **options) for value in values])
    assert _outcome(batched, list(values), **options) == expected
    for value in values:  # one at a time too, so a rejection elsewhere hides nothing
        assert _outcome(batched, [value], **options) == _outcome(
            lambda value=value: [single(value, **options)]
        )


@functools.cache
def _synth_columns() -> dict[str, list[str]]:
    """Every column of a small hard-difficulty synth set (typos, case, whitespace, Unicode)."""
    result = generate(
        SynthConfig(departments=("moj", "dfe", "hmpps"), records=400, difficulty="hard", seed=5)
    )
    columns: dict[str, list[str]] = {}
    for extract in result.departments:
        for name, values in extract.columns.items():
            columns[f"{extract.name}.{name}"] = [str(value) for value in values.tolist()]
    return columns


def _synth(*names: str) -> list[str]:
    return [value for name in names for value in _synth_columns()[name]]


# Text that lands near the fast paths' edges: postcode and date characters, case, the
# whitespace and invisible characters cleaning removes, look-alikes that upper-case to ASCII.
near_postcode = st.text(
    alphabet="ABGIRZKabgirzk0139 \t\n\x0b\u00a0\u200b\u212aſıİ-./",
    max_size=14,
)
markers = st.frozensets(
    st.sampled_from(["zz99 3vz", "zz993vz", "zz99 9zz", "gir 0aa", "n/a", "tbc", "ab1 2cd"]),
    max_size=3,
)


@given(
    values=st.lists(st.one_of(st.text(max_size=20), near_postcode), max_size=8),
    null_markers=markers,
)
@example(
    values=["ZZ99 3VZ", "zz993vz", " ZZ99  3VZ ", "GIR 0AA", "gir0aa"],
    null_markers=frozenset({"zz993vz"}),
)
@example(values=["ZZ99 3VZ", "ZZ993VZ", "ZZ99 3VZ "], null_markers=frozenset({"zz99 3vz"}))
@example(values=["\u212a1 2AB", "ſW1 1AA", "AB1 2CD\n", "A" * 1001], null_markers=frozenset())
def test_postcodes_match_the_per_value_rules(
    values: list[str], null_markers: frozenset[str]
) -> None:
    _agree(
        normalisation.normalise_postcodes,
        normalisation.normalise_postcode,
        values,
        null_markers=null_markers,
    )
    _agree(
        normalisation.normalise_postcodes,
        normalisation.normalise_postcode,
        values,
        max_length=7,
        null_markers=null_markers,
    )


def test_postcodes_match_on_synth_extracts() -> None:
    values = _synth("moj.postcode", "dfe.home_postcode", "hmpps.postcode")
    assert len(set(values)) > 500  # the check below covers many shapes, not a handful
    _agree(normalisation.normalise_postcodes, normalisation.normalise_postcode, values)
    _agree(
        normalisation.normalise_postcodes,
        normalisation.normalise_postcode,
        values,
        null_markers=frozenset({"zz99 3vz", "unk"}),
    )


date_formats = st.sampled_from(
    [
        ("%d/%m/%Y",),
        ("%Y-%m-%d",),
        ("%d.%m.%Y", "%Y-%m-%d"),
        ("%m/%d/%Y", "%d/%m/%Y"),
        ("%d %b %Y",),
        ("%Y%m%d",),
        ("%d%m%Y", "%Y-%m-%d"),
    ]
)
near_date = st.one_of(
    st.text(alphabet="0123456789/-. \u0660\u00a0", max_size=12),
    st.dates(min_value=dt.date(1, 1, 1)).map(lambda day: day.strftime("%d/%m/%Y")),
    st.dates(min_value=dt.date(1, 1, 1)).map(lambda day: day.isoformat()),
    st.dates(min_value=dt.date(1, 1, 1)).map(lambda day: day.strftime("%Y%m%d")),
    st.from_regex(r"[0-9]{8}", fullmatch=True),
)
date_markers = st.frozensets(st.sampled_from(["01/01/2000", "2000-01-01", "00/00/0000", "tbc"]))


@given(
    values=st.lists(st.one_of(st.text(max_size=12), near_date), max_size=8),
    formats=date_formats,
    null_markers=date_markers,
    today=st.one_of(st.none(), st.dates(min_value=dt.date(1, 1, 1))),
)
@example(
    values=["31/02/2000", "00/01/2000", "01/13/2000", "01/01/1900", "30/12/1899", " 01/02/2003"],
    formats=("%d/%m/%Y",),
    null_markers=frozenset(),
    today=None,
)
@example(
    values=["01/01/2000", "12/31/1999"],
    formats=("%m/%d/%Y", "%d/%m/%Y"),
    null_markers=frozenset({"01/01/2000"}),
    today=None,
)
def test_dates_match_the_per_value_rules(
    values: list[str],
    formats: tuple[str, ...],
    null_markers: frozenset[str],
    today: dt.date | None,
) -> None:
    _agree(
        normalisation.normalise_dates,
        normalisation.normalise_date,
        values,
        formats=formats,
        null_markers=null_markers,
        today=today,
    )


def test_dates_around_today_match() -> None:
    today = dt.date.today()
    days = [today + dt.timedelta(days=offset) for offset in (-2, -1, 0, 1, 2)]
    for formats in [("%d/%m/%Y",), ("%Y-%m-%d",)]:
        values = [day.strftime(formats[0]) for day in days]
        _agree(normalisation.normalise_dates, normalisation.normalise_date, values, formats=formats)
        _agree(
            normalisation.normalise_dates,
            normalisation.normalise_date,
            values,
            formats=formats,
            today=today,
        )


def test_dates_match_on_synth_extracts() -> None:
    for names, formats in [
        (("moj.date_of_birth",), ("%d/%m/%Y",)),
        (("dfe.dob",), ("%Y-%m-%d",)),
        (("hmpps.birth_date",), ("%Y%m%d",)),
    ]:
        values = _synth(*names)
        assert len(set(values)) > 300, names
        _agree(normalisation.normalise_dates, normalisation.normalise_date, values, formats=formats)


near_name = st.text(alphabet="AaZzéøß'- \t\u00a0\u200b\u212aſıİ.0", max_size=12)
name_markers = st.frozensets(st.sampled_from(["tbc", "anon", "baby", "not given", "n/a"]))


@given(
    values=st.lists(
        st.one_of(st.text(max_size=12), near_name, st.sampled_from(["Null", "NK", "Not Known"])),
        max_size=8,
    ),
    null_markers=name_markers,
    max_length=st.sampled_from([100, 3, 2000]),
    nicknames=st.booleans(),
)
@example(
    values=["Ann " * 300, "B" * 1001], null_markers=frozenset(), max_length=2000, nicknames=False
)
@example(
    values=["Bob", "bob smith", "Not Known", "TBC", "Al", "O'Neil", "ANNE-MARIE", "Zoë"],
    null_markers=frozenset({"tbc"}),
    max_length=100,
    nicknames=True,
)
@example(values=["Bob", "Alexander"], null_markers=frozenset(), max_length=5, nicknames=True)
def test_names_match_the_per_value_rules(
    values: list[str], null_markers: frozenset[str], max_length: int, nicknames: bool
) -> None:
    _agree(
        normalisation.normalise_names,
        normalisation.normalise_name,
        values,
        max_length=max_length,
        nicknames=normalisation.nickname_table() if nicknames else None,
        null_markers=null_markers,
    )


def test_names_match_on_synth_extracts() -> None:
    columns = _synth_columns()
    values = [value for name, column in columns.items() if "name" in name for value in column]
    assert len(set(values)) > 500
    table = normalisation.nickname_table()
    _agree(normalisation.normalise_names, normalisation.normalise_name, values, nicknames=table)
    _agree(normalisation.normalise_names, normalisation.normalise_name, values)


near_text = st.text(alphabet="Aa9z0 '\u2019-.,\t\u00a0\u200b\u212aſıéß", max_size=14)
text_markers = st.frozensets(st.sampled_from(["tbc", "na", "0", "none given", "x1"]))


@given(
    values=st.lists(
        st.one_of(st.text(max_size=14), near_text, st.sampled_from(["NULL", "nk", "Unknown"])),
        max_size=8,
    ),
    null_markers=text_markers,
    max_length=st.sampled_from([100, 4, 2000]),
)
@example(
    values=["12 Miller Place", "Flat 3", "TBC", "none", "O'Hara St", "A" * 1500, "AB12" * 300],
    null_markers=frozenset({"tbc"}),
    max_length=2000,
)
def test_texts_and_identifiers_match_the_per_value_rules(
    values: list[str], null_markers: frozenset[str], max_length: int
) -> None:
    _agree(
        normalisation.normalise_texts,
        normalisation.normalise_text,
        values,
        max_length=max_length,
        null_markers=null_markers,
    )
    _agree(
        normalisation.normalise_identifiers,
        normalisation.normalise_identifier,
        values,
        max_length=max_length,
        null_markers=null_markers,
    )


def test_texts_and_identifiers_match_on_synth_extracts() -> None:
    values = [value for column in _synth_columns().values() for value in column]
    _agree(normalisation.normalise_texts, normalisation.normalise_text, values)
    _agree(normalisation.normalise_identifiers, normalisation.normalise_identifier, values)

"""What the membership-probe tests (test_privacy.py, test_dedupe_privacy.py) share: made-up
people from two disjoint pools, MoJ's way of writing a row, and the masking that makes two
linkage units' views comparable."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from protocol.errors import ServiceError

# Disjoint pools, so the made-up people of the two parties never link by chance.
POOLS = {
    "d": (
        ("Ann", "Bilal", "Chloe", "Dmitri", "Eve", "Farah", "Gareth", "Hana", "Ivo", "Jun"),
        ("Lee", "Okafor", "Nowak", "Patel", "Quinn", "Rossi", "Singh", "Tran", "Ueda"),
        "M",
    ),
    "m": (
        ("Kofi", "Lena", "Mateo", "Nadia", "Oren", "Priya", "Rafe", "Sanne", "Tomas", "Uma"),
        ("Achebe", "Brandt", "Castillo", "Dubois", "Eriksen", "Fong", "Gallo", "Haddad"),
        "B",
    ),
}


def made_up(prefix: str, count: int) -> list[tuple[str, ...]]:
    """``count`` made-up people of pool ``prefix`` as DfE-layout rows (ISO dates, M/F)."""
    forenames, surnames, area = POOLS[prefix]
    return [
        (
            f"{prefix}{number}",
            forenames[number % len(forenames)],
            surnames[(number * 7) % len(surnames)],
            f"{1940 + number % 60}-{1 + number % 12:02d}-{1 + number % 28:02d}",
            ("F", "M")[number % 2],
            f"{area}{1 + number % 9} {number % 10}AE",
        )
        for number in range(count)
    ]


def as_moj(row: tuple[str, ...]) -> tuple[str, ...]:
    """MoJ's layout writes dates of birth as DD/MM/YYYY and sex in words; DfE's (and these
    rows) ISO dates and M/F."""
    year, month, day = row[3].split("-")
    sex = {"F": "Female", "M": "Male"}[row[4]]
    return (*row[:3], f"{day}/{month}/{year}", sex, *row[5:])


_HEX = re.compile(r"^[0-9a-f]{16,}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def mask(value: Any) -> Any:
    """Ids, digests, hashes, salts, signatures and timestamps become placeholders; every
    count, name, state, event and structure stays."""
    if isinstance(value, dict):
        return {key: mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask(item) for item in value]
    if isinstance(value, bytes):
        return "<bytes>"
    if isinstance(value, str) and (_HEX.fullmatch(value) or _TIMESTAMP.fullmatch(value)):
        return "<masked>"
    return value


def error_of(call: Callable[[], object]) -> str:
    """The service error ``call`` raises, as a party sees it, or "no error"."""
    try:
        call()
    except ServiceError as error:
        return f"{type(error).__name__}: {error.message}"
    return "no error"

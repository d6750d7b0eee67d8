"""Character-level errors people and scanners make: keyboard slips, OCR confusions, edits.

Stage: test-data generation (corruption primitives; use ``bloomlink.synth.corruption``).
Each function takes the value and a few uniform draws in [0, 1) from the caller's seeded
generator, so the per-record work needs no random calls of its own and stays reproducible.
Each returns a value different from its input.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = [
    "date_digit_typo",
    "name_typo",
    "postcode_typo",
    "strip_accents",
]

KEYBOARD_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    position = {
        key: (row, column)
        for row, keys in enumerate(KEYBOARD_ROWS)
        for column, key in enumerate(keys)
    }
    neighbours: dict[str, str] = {}
    for key, (row, column) in position.items():
        near = [
            other
            for other, (other_row, other_column) in position.items()
            if other != key and abs(other_row - row) <= 1 and abs(other_column - column) <= 1
        ]
        neighbours[key] = "".join(near)
    return neighbours


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()
# Confusions typical of scanned or handwritten forms (FEBRL/GeCo OCR tables, trimmed to
# letters that occur in names).
OCR_CONFUSIONS: dict[str, tuple[str, ...]] = {
    "m": ("rn", "nn"),
    "rn": ("m",),
    "d": ("cl",),
    "cl": ("d",),
    "w": ("vv",),
    "vv": ("w",),
    "h": ("li", "b"),
    "b": ("h",),
    "l": ("i", "1"),
    "i": ("l", "j"),
    "e": ("c",),
    "c": ("e",),
    "u": ("v",),
    "v": ("u",),
    "a": ("o",),
    "o": ("a", "0"),
    "g": ("q",),
    "n": ("h",),
}
POSTCODE_OCR = {"0": "O", "O": "0", "1": "I", "I": "1", "5": "S", "S": "5", "8": "B", "B": "8"}


def _pick(options: Sequence[str], draw: float) -> str:
    return options[min(int(draw * len(options)), len(options) - 1)]


def _match_case(replacement: str, original: str) -> str:
    return replacement.upper() if original.isupper() else replacement


def _letter_positions(value: str) -> list[int]:
    return [index for index, char in enumerate(value) if char.isalpha()]


def _choose_position(positions: list[int], draw: float) -> int:
    # Errors are rarer in the first letter (Pollock and Zamora 1983): skip it most of the time.
    if len(positions) > 1 and draw < 0.85:
        positions = positions[1:]
        draw = draw / 0.85
    else:
        draw = (draw - 0.85) / 0.15 if len(positions) > 1 else draw
    return positions[min(int(draw * len(positions)), len(positions) - 1)]


def name_typo(value: str, draws: Sequence[float]) -> str:
    """One edit to a name: keyboard or OCR substitution, deletion, insertion or transposition.

    ``draws`` are four uniforms: the kind, the position, the replacement, a spare.
    """
    positions = _letter_positions(value)
    if not positions:
        return value + "x" if value else "x"
    kind, where, which = draws[0], draws[1], draws[2]
    index = _choose_position(positions, where)
    char = value[index]
    lower = char.lower()
    result = value
    if kind < 0.30:  # keyboard neighbour substitution
        near = [key for key in KEYBOARD_NEIGHBOURS.get(lower, "") if key.isalpha()]
        if near:
            result = value[:index] + _match_case(_pick(near, which), char) + value[index + 1 :]
    elif kind < 0.42:  # OCR confusion, single or two letters
        pair = value[index : index + 2].lower()
        if pair in OCR_CONFUSIONS:
            swap = _pick(OCR_CONFUSIONS[pair], which)
            result = value[:index] + _match_case(swap, char) + value[index + 2 :]
        elif lower in OCR_CONFUSIONS:
            swap = _pick(OCR_CONFUSIONS[lower], which)
            result = value[:index] + _match_case(swap, char) + value[index + 1 :]
    elif kind < 0.65:  # deletion
        if len(positions) > 1:
            result = value[:index] + value[index + 1 :]
    elif kind < 0.85:  # insertion: a doubled letter or a neighbouring key
        near = [key for key in KEYBOARD_NEIGHBOURS.get(lower, "") if key.isalpha()]
        extra = char if which < 0.4 or not near else _match_case(_pick(near, which), char)
        result = value[:index] + extra + value[index:]
    else:  # transposition with the next character
        if index + 1 < len(value) and value[index + 1] != char:
            result = value[:index] + value[index + 1] + char + value[index + 2 :]
    if result == value:
        # The chosen edit was impossible here (no neighbour, doubled letter): drop or add one.
        result = value[:index] + value[index + 1 :] if len(positions) > 1 else value + value[-1]
    return result


def postcode_typo(value: str, draws: Sequence[float]) -> str:
    """One wrong character in a postcode: OCR look-alike, neighbouring key or wrong digit."""
    positions = [index for index, char in enumerate(value) if char.isalnum()]
    if not positions:
        return value + "1"
    index = positions[min(int(draws[1] * len(positions)), len(positions) - 1)]
    char = value[index]
    if char in POSTCODE_OCR and draws[0] < 0.4:
        replacement = POSTCODE_OCR[char]
    elif char.isdigit():
        replacement = str((int(char) + 1 + int(draws[2] * 9)) % 10)
    else:
        near = [key for key in KEYBOARD_NEIGHBOURS.get(char.lower(), "") if key.isalpha()]
        replacement = _pick(near, draws[2]).upper() if near else "X"
    if replacement == char:
        replacement = "Z" if char != "Z" else "Y"
    return value[:index] + replacement + value[index + 1 :]


def date_digit_typo(
    year: int, month: int, day: int, draws: Sequence[float], *, latest_year: int
) -> tuple[int, int, int]:
    """One mistyped digit of DDMMYYYY that still makes a valid date (systems check dates)."""
    digits = f"{day:02d}{month:02d}{year:04d}"
    # Position weights: day and month digits and the last two of the year are where people
    # slip; the century is almost never wrong.
    order = [0, 1, 2, 3, 6, 7, 5]
    start = min(int(draws[0] * len(order)), len(order) - 1)
    for attempt in range(len(order)):
        position = order[(start + attempt) % len(order)]
        for step in range(1, 10):
            replacement = (int(digits[position]) + step + int(draws[1] * 9)) % 10
            candidate = digits[:position] + str(replacement) + digits[position + 1 :]
            day_, month_, year_ = int(candidate[:2]), int(candidate[2:4]), int(candidate[4:])
            if candidate != digits and _valid(year_, month_, day_, latest_year):
                return year_, month_, day_
    return year, month, day - 1 if day > 1 else day + 1


def _valid(year: int, month: int, day: int, latest_year: int) -> bool:
    if not (1900 <= year <= latest_year and 1 <= month <= 12 and day >= 1):
        return False
    days_in_month = (31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    return day <= days_in_month[month - 1]


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# Letters with no Unicode decomposition that ASCII-only systems still flatten.
UNDECOMPOSABLE = str.maketrans({"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ø": "O", "ø": "o"})


def strip_accents(value: str) -> str:
    """``value`` with combining marks removed (Zoë -> Zoe), as many older systems store it."""
    decomposed = unicodedata.normalize("NFD", value.translate(UNDECOMPOSABLE))
    return "".join(char for char in decomposed if not unicodedata.combining(char))

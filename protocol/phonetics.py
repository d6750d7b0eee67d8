"""Phonetic codes for names (a tokeniser input): American Soundex, as in the 1920 US census
rules (H and W do not separate letters with the same code; vowels do)."""

from __future__ import annotations

__all__ = ["soundex"]

_CODES = {
    **dict.fromkeys("bfpv", "1"),
    **dict.fromkeys("cgjkqsxz", "2"),
    **dict.fromkeys("dt", "3"),
    "l": "4",
    **dict.fromkeys("mn", "5"),
    "r": "6",
}


def soundex(word: str) -> str | None:
    """The Soundex code of a normalised (lower-case) word; None if it has no a-z letters."""
    letters = [char for char in word if "a" <= char <= "z"]
    if not letters:
        return None
    first = letters[0]
    code = [first.upper()]
    previous = _CODES.get(first, "")
    for char in letters[1:]:
        digit = _CODES.get(char, "")
        if digit and digit != previous:
            code.append(digit)
            if len(code) == 4:
                break
        if char not in "hw":
            previous = digit
    return "".join(code).ljust(4, "0")

"""Stage 2, tokenise: turn a normalised value into the set of tokens its field encodes.

Every token carries a tag for the method that made it (``g2:`` bigram, ``p2:3:`` positional
bigram, ``x:`` exact value, ``y:``/``m:``/``d:``/``dm:`` date parts, ``s:`` Soundex), so two
methods in one field can never set the same bits by accident. Token sets are unordered: the
CLK does not depend on the order tokens are produced in.

A salted tokeniser (schema v2, ``salt = "<field>"``) mixes the record's normalised value of
that field into each token: ``~<length of salt in code points>:<salt>~<token>``. No unsalted
token starts with ``~`` and the length says where the salt ends, so a salted token can never
equal another token. Sex salted with the date of birth sets bits that depend on both, so no
bit group encodes sex alone.
"""

from __future__ import annotations

from protocol.phonetics import soundex
from protocol.schema import TokenSpec

__all__ = ["PAD", "salted_token", "tokenise"]

PAD = "_"  # never in a normalised name, so padding cannot collide with a letter


def _ngrams(value: str, spec: TokenSpec) -> set[str]:
    size = spec.size
    text = PAD * (size - 1) + value + PAD * (size - 1) if spec.padded else value
    if len(text) < size:
        return {f"g{size}:{text}"} if text else set()
    if spec.positional:
        return {
            f"p{size}:{index}:{text[index : index + size]}" for index in range(len(text) - size + 1)
        }
    tag = f"g{size}:"
    if size == 2:
        return {tag + first + second for first, second in zip(text, text[1:], strict=False)}
    return {tag + text[index : index + size] for index in range(len(text) - size + 1)}


def _date_parts(value: str) -> set[str]:
    # value is ISO YYYY-MM-DD (normalise_date guarantees it). The unordered day/month token
    # survives a day/month transposition; the others keep exact dates the most similar.
    year, month, day = value.split("-")
    low, high = sorted((month, day))
    return {f"y:{year}", f"m:{month}", f"d:{day}", f"dm:{low}{high}", f"ym:{year}{month}"}


def _phonetic(value: str) -> set[str]:
    return {f"s:{code}" for word in value.split(" ") if (code := soundex(word))}


def tokenise(value: str, spec: TokenSpec) -> frozenset[str]:
    """The tokens one tokeniser makes from one normalised value."""
    if spec.words == "first":  # normalised values hold single spaces between words
        value = value.split(" ", 1)[0]
    if spec.method == "ngram":
        return frozenset(_ngrams(value, spec))
    if spec.method == "exact":
        return frozenset({f"x:{value}"})
    if spec.method == "date_parts":
        return frozenset(_date_parts(value))
    if spec.method == "phonetic":
        return frozenset(_phonetic(value))
    raise ValueError(f"unknown tokeniser method {spec.method!r}")


def salted_token(token: str, salt: str) -> str:
    """``token`` salted with another field's normalised value ``salt`` (never empty)."""
    return f"~{len(salt)}:{salt}~{token}"

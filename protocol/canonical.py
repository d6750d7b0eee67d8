"""Canonical JSON: the one byte form every digest and signature of the protocol is taken over.

Stage: protocol (shared by the party, which signs manifests, the linkage unit, which
fingerprints settings and hashes audit entries, and auditors, who recompute both).

The form is RFC 8785, the JSON Canonicalization Scheme (JCS), restricted to the values a
bloomlink document holds, so that any language reproduces it without our code:

* ``null``, ``true``, ``false``; strings; arrays; objects with string keys.
* Numbers are IEEE-754 doubles written as ECMAScript ``Number::toString`` writes them
  (RFC 8785 section 3.2.2.3): ``1.0`` and ``1`` are both ``1``, ``0.1`` is ``0.1``, ``1e-7``
  is ``1e-7``, ``-0`` is ``0``. A number's magnitude must be at most 2^53 - 1, so every
  integer is exact in every language (JavaScript's ``Number.MAX_SAFE_INTEGER``); a larger
  number, NaN or an infinity is refused. No positive exponent is then ever written.
* Strings are UTF-8, escaped exactly as RFC 8785 says: ``\\"`` and ``\\\\``; ``\\b``,
  ``\\t``, ``\\n``, ``\\f``, ``\\r``; every other code point below U+0020 as ``\\u00xx`` (lower
  case hex); everything else, non-ASCII included, as itself. A lone surrogate is refused.
* Object members are sorted by their keys' UTF-16 code units; no whitespace anywhere.

Number digits come from the exact value (:func:`number_to_string` searches for the shortest
decimal that reads back as the same double), never from Python's float formatting; the test
suite checks it against ``repr`` as an independent twin, against RFC 8785's own number
samples, and the Node.js conformance client checks every vector in
``tests/vectors/canonical_json.json`` with ECMAScript itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

from protocol.errors import ConfigurationError

__all__ = [
    "MAX_SAFE_INTEGER",
    "canonical_json",
    "canonical_sha256",
    "number_to_string",
]

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest magnitude a number in a canonical document may have."""

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _reads_back(candidate: Fraction, value: float) -> bool:
    try:
        return float(candidate) == value  # int / int in Python rounds correctly
    except OverflowError:  # above the largest double
        return False


def _shortest_digits(value: float) -> tuple[int, int]:
    """``(digits, n)`` for a positive finite double: the integer ``digits`` with the fewest
    decimal digits ``k`` such that ``digits x 10^(n - k)`` reads back as ``value``, the one
    closest to it when several do (the even one on a tie): ECMAScript's ``s`` and ``n``."""
    exact = Fraction(value)
    n = math.floor(math.log10(value)) + 1  # an estimate, corrected exactly below
    while exact >= Fraction(10) ** n:
        n += 1
    while exact < Fraction(10) ** (n - 1):
        n -= 1
    for k in range(1, 18):  # 17 significant digits always identify a double
        scale = Fraction(10) ** (k - n)
        low = math.floor(exact * scale)
        found: list[tuple[Fraction, int, int]] = []
        for digits in (low, low + 1):
            candidate = Fraction(digits) / scale
            if digits > 0 and _reads_back(candidate, value):
                found.append((abs(candidate - exact), digits % 2, digits))
        if found:
            digits = min(found)[2]
            if digits == 10**k:  # rounded up to the next power of ten: one digit, n + 1
                return 1, n + 1
            return digits, n
    raise AssertionError("unreachable: 17 digits identify every double")


def number_to_string(value: float) -> str:
    """ECMAScript ``Number::toString(value)`` for a finite double (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(value):
        raise ConfigurationError("canonical JSON cannot hold NaN or an infinity")
    if value == 0:
        return "0"  # and -0
    if value < 0:
        return "-" + number_to_string(-value)
    digits, n = _shortest_digits(value)
    s = str(digits)
    k = len(s)
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + s
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    mantissa = s if k == 1 else s[0] + "." + s[1:]
    return f"{mantissa}e{sign}{abs(exponent)}"


def _string(text: str, where: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ConfigurationError(f"canonical JSON cannot hold a lone surrogate (at {where})")
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _utf16_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly as the code units do (surrogates were refused).
    return key.encode("utf-16-be")


def _write(value: object, where: str, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ConfigurationError(
                f"canonical JSON holds integers of magnitude at most 2**53 - 1 (at {where})"
            )
        out.append(str(value))
    elif isinstance(value, float):
        if math.isfinite(value) and abs(value) > MAX_SAFE_INTEGER:
            raise ConfigurationError(
                f"canonical JSON holds numbers of magnitude at most 2**53 - 1 (at {where})"
            )
        out.append(number_to_string(value))
    elif isinstance(value, str):
        out.append(_string(value, where))
    elif isinstance(value, Mapping):
        keys = list(value)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON object keys must be strings (at {where})")
            _string(key, where)  # refuses a lone surrogate before it is sorted
        out.append("{")
        for index, key in enumerate(sorted(keys, key=_utf16_key)):
            if index:
                out.append(",")
            out.append(_string(key, where))
            out.append(":")
            _write(value[key], f"{where}.{key}", out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, f"{where}[{index}]", out)
        out.append("]")
    else:
        raise TypeError(
            f"canonical JSON cannot hold a {type(value).__name__} (at {where}); "
            "spell bytes as lower-case hex"
        )


def canonical_json(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value`` (dicts, lists, tuples, str, int,
    float, bool, None). Values it cannot hold raise :class:`ConfigurationError` naming the
    path (``$.details.record_count``), never the value; other Python types ``TypeError``."""
    out: list[str] = []
    _write(value, "$", out)
    return "".join(out).encode("utf-8")


def canonical_sha256(value: object) -> str:
    """Hex SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()

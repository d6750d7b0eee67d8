"""RFC 8785 canonical JSON (protocol/canonical.py): the vectors, RFC 8785's number samples,
the refusals, and properties against independent twins (``repr`` for number digits, the
standard library's ``json`` for the ASCII documents earlier versions hashed)."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import MAX_SAFE_INTEGER, canonical_json, canonical_sha256, number_to_string
from protocol.errors import ConfigurationError
from tests.strategies import ascii_documents, json_documents

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "canonical_json.json").read_text("utf-8")
)


@pytest.mark.parametrize("case", VECTORS["canonical"], ids=lambda case: case["name"])
def test_canonical_vectors(case: dict[str, Any]) -> None:
    produced = canonical_json(case["input"])
    assert produced == case["canonical"].encode("utf-8")
    assert canonical_sha256(case["input"]) == case["sha256"]
    assert hashlib.sha256(produced).hexdigest() == case["sha256"]


@pytest.mark.parametrize("case", VECTORS["refused"], ids=lambda case: case["name"])
def test_refused_vectors(case: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"canonical JSON .*\(at \$"):
        canonical_json(json.loads(case["input_json"]))


@pytest.mark.parametrize(
    "sample", VECTORS["number_to_string"]["samples"], ids=lambda sample: sample["ieee754_hex"]
)
def test_rfc_8785_number_samples(sample: dict[str, str]) -> None:
    value = struct.unpack(">d", bytes.fromhex(sample["ieee754_hex"]))[0]
    assert number_to_string(value) == sample["string"]


def test_integer_valued_doubles_and_integers_agree() -> None:
    assert canonical_json({"t": 1.0}) == canonical_json({"t": 1}) == b'{"t":1}'
    assert canonical_json(-0.0) == b"0"
    assert canonical_json(float(MAX_SAFE_INTEGER)) == str(MAX_SAFE_INTEGER).encode()


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, 2.0**53, 10**21, -(2**53), {"x": [2**60]}, "a\ud83d"],
)
def test_values_the_form_cannot_hold_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError):
        canonical_json(value)


def test_the_error_names_the_path_never_the_value() -> None:
    with pytest.raises(ConfigurationError) as refused:
        canonical_json({"details": {"record_count": 123456789012345678}})
    assert "$.details.record_count" in refused.value.message
    assert "123456789012345678" not in refused.value.message


@pytest.mark.parametrize("value", [b"\x00", {1: "a"}, {"a": object()}, {1.5}])
def test_other_python_types_are_a_programming_error(value: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def _repr_twin(value: float) -> str:
    """ECMAScript Number::toString from Python's shortest round-trip ``repr``: the digits
    come from another algorithm (David Gay's), the layout rules are written out again."""
    if value == 0:
        return "0"
    if value < 0:
        return "-" + _repr_twin(-value)
    shortest = Decimal(repr(value)).normalize().as_tuple()  # digits x 10^exponent
    digits = "".join(map(str, shortest.digits))
    k = len(digits)
    n = k + int(shortest.exponent)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if n >= 1 else '-'}{abs(n - 1)}"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_digits_agree_with_the_repr_twin_and_read_back(value: float) -> None:
    text = number_to_string(value)
    assert text == _repr_twin(value)
    assert float(text) == value or (value == 0 and text == "0")


@given(json_documents)
def test_canonical_json_is_valid_json_and_a_fixed_point(document: object) -> None:
    produced = canonical_json(document)
    parsed = json.loads(produced)
    assert canonical_json(parsed) == produced


@given(ascii_documents)
def test_ascii_documents_keep_the_bytes_earlier_versions_hashed(document: object) -> None:
    # Audit entries, signed heads, manifests and layouts hold only these values, so logs and
    # manifests written with json.dumps (before canonical.py) verify unchanged.
    earlier = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical_json(document) == earlier.encode("ascii")


@given(st.dictionaries(st.text(alphabet=st.characters(exclude_categories=["Cs"])), st.none()))
def test_members_are_sorted_by_utf16_code_units(document: dict[str, None]) -> None:
    keys = list(json.loads(canonical_json(document)))
    assert keys == sorted(document, key=lambda key: [unit for unit in key.encode("utf-16-be")])

"""Issuing link keys: the array path agrees with the one-key-at-a-time reference, byte for
byte, for any random source and clustering."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from linkage_unit.link_keys import (
    KEY_BYTES,
    base32_keys,
    fresh_keys,
    issue_link_keys,
    reference_base32_keys,
    reference_issue_link_keys,
)
from protocol.messages import LinkKeyMode


@given(st.lists(st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES), max_size=40))
def test_base32_keys_spell_keys_as_the_standard_library_does(keys: list[bytes]) -> None:
    raw = b"".join(keys)
    assert base32_keys(raw).tolist() == reference_base32_keys(raw)


def test_the_reference_is_rfc_4648_base32_lower_case_without_padding() -> None:
    # RFC 4648 section 10's "foobar" vector, padded to a key: the first 10 characters.
    assert reference_base32_keys(b"foobar" + bytes(10))[0][:10] == "mzxw6ytboi"
    assert base32_keys(bytes(16)).tolist() == ["a" * 26]
    assert base32_keys(b"\xff" * 16).tolist() == ["7" * 25 + "4"]  # last: 3 set bits, 2 zero
    raw = bytes(range(16))
    assert base32_keys(raw).tolist() == [base64.b32encode(raw).decode().rstrip("=").lower()]


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["moj", "dfe", "hmpps"]),
        st.lists(st.integers(0, 30), max_size=40),
        min_size=1,
    ),
    st.sampled_from(list(LinkKeyMode)),
    st.integers(0, 2**32 - 1),
)
def test_issued_keys_agree_with_the_one_at_a_time_reference(
    clusters: dict[str, list[int]], mode: LinkKeyMode, seed: int
) -> None:
    arrays = {party: np.asarray(ids, dtype=np.int64) for party, ids in clusters.items()}
    fast_source, slow_source = np.random.default_rng(seed), np.random.default_rng(seed)
    fast = issue_link_keys(arrays, mode, random_bytes=fast_source.bytes)
    slow = reference_issue_link_keys(arrays, mode, random_bytes=slow_source.bytes)
    assert fast == slow


def test_a_random_source_that_repeats_a_key_is_refused() -> None:
    repeating = bytes(range(16)) * 2 + bytes(range(1, 17))
    with pytest.raises(RuntimeError, match="repeated link key"):
        fresh_keys(3, lambda count: repeating[:count])
    # Keys whose first halves agree but whose second halves differ are distinct.
    distinct = bytes(8) + bytes(8) + bytes(8) + b"\x01" + bytes(7)
    assert len(set(fresh_keys(2, lambda count: distinct[:count]))) == 2

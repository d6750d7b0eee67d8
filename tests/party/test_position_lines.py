"""The compiled positions-file lines against their csv-module twin."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from party.position_lines import position_lines, position_lines_reference

# Record ids as the encoder keeps them: printable, non-empty; commas and quotes included, so
# quoting is exercised, and non-ASCII, so bytes are not characters.
record_ids = st.text(
    alphabet=st.one_of(st.sampled_from(',"'), st.characters(codec="utf-8")).filter(str.isprintable),
    min_size=1,
    max_size=12,
)


@given(st.lists(st.tuples(record_ids, st.integers(0, 2**62)), max_size=40))
def test_position_lines_agree_with_the_csv_module(rows: list[tuple[str, int]]) -> None:
    ids = "".join(record_id + "\n" for record_id, _ in rows).encode("utf-8")
    positions = np.array([position for _, position in rows], dtype=np.int64)
    expected = position_lines_reference(ids, positions)
    assert expected is not None
    assert position_lines(ids, positions) == expected


def test_position_lines_quote_like_csv_and_refuse_a_mismatch() -> None:
    ids = b'MJ-1\nid, with comma\nsay "hi"\n'
    positions = np.array([2, 0, 10], dtype=np.int64)
    assert position_lines(ids, positions) == b'MJ-1,2\n"id, with comma",0\n"say ""hi""",10\n'
    assert position_lines(ids, positions[:2]) is None
    assert position_lines_reference(ids, positions[:2]) is None
    assert position_lines(ids + b"MJ-4\n", positions) is None
    assert position_lines(ids[:-1], positions) is None

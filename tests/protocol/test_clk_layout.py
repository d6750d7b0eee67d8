"""The record layout shared by the encoder, the encoded file and the linkage unit."""

from __future__ import annotations

import pytest

from protocol.clk_layout import RECORD_GROUP, ClkLayout, GroupLayout
from protocol.errors import ConfigurationError


def test_word_ranges_concatenate_groups_in_order() -> None:
    layout = ClkLayout(
        groups=(
            GroupLayout(name="name", bits=512),
            GroupLayout(name="birth", bits=256),
            GroupLayout(name="postcode", bits=128),
        )
    )
    assert layout.total_bits == 896 and layout.total_words == 14
    assert [layout.word_range(i) for i in range(3)] == [(0, 8), (8, 12), (12, 14)]
    assert layout.word_offsets() == (0, 8, 12, 14)
    assert layout.names == ("name", "birth", "postcode")


def test_single_is_one_record_group() -> None:
    layout = ClkLayout.single(1024)
    assert layout.names == (RECORD_GROUP,) and layout.word_range(0) == (0, 16)


@pytest.mark.parametrize("bits", [0, 63, 100, 65600])
def test_group_bits_must_be_whole_words_in_range(bits: int) -> None:
    with pytest.raises(ConfigurationError, match="multiple of 64"):
        GroupLayout(name="name", bits=bits)


def test_group_names_are_labels_and_distinct() -> None:
    with pytest.raises(ConfigurationError, match="field group name"):
        GroupLayout(name="Name", bits=64)
    with pytest.raises(ConfigurationError, match="distinct"):
        ClkLayout(groups=(GroupLayout(name="a", bits=64), GroupLayout(name="a", bits=64)))
    with pytest.raises(ConfigurationError, match="1 to 16"):
        ClkLayout(groups=())

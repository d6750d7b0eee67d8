"""Automatic threshold from the best-score distribution."""

from __future__ import annotations

import numpy as np
import pytest

from linkage_unit.threshold import DEFAULT_THRESHOLD, ThresholdChoice, choose_threshold
from protocol.errors import MatchingError


def test_valley_between_non_match_and_match_modes() -> None:
    generator = np.random.default_rng(1)
    scores = np.concatenate([generator.normal(0.55, 0.02, 4000), generator.normal(0.93, 0.02, 400)])
    choice = choose_threshold(scores)
    assert choice.method == "valley"
    assert 0.62 < choice.threshold < 0.87
    assert abs(choice.non_match_mode - 0.55) < 0.03 and abs(choice.match_mode - 0.93) < 0.03


def test_valley_moves_with_the_modes() -> None:
    generator = np.random.default_rng(2)
    low = choose_threshold(
        np.concatenate([generator.normal(0.4, 0.02, 3000), generator.normal(0.7, 0.02, 3000)])
    )
    high = choose_threshold(
        np.concatenate([generator.normal(0.6, 0.02, 3000), generator.normal(0.95, 0.01, 3000)])
    )
    assert low.threshold < high.threshold


@pytest.mark.parametrize(
    "scores",
    [np.empty(0), np.full(10, 0.9), np.random.default_rng(3).normal(0.6, 0.03, 5000)],
    ids=["empty", "too-few", "one-mode"],
)
def test_falls_back_to_the_default_without_a_valley(scores) -> None:
    choice = choose_threshold(scores)
    assert choice == ThresholdChoice(threshold=DEFAULT_THRESHOLD, method="default")


def test_choice_is_clamped() -> None:
    generator = np.random.default_rng(4)
    scores = np.concatenate([generator.normal(0.1, 0.01, 3000), generator.normal(0.3, 0.01, 3000)])
    assert choose_threshold(scores).threshold == 0.5


def test_invalid_choice_is_refused() -> None:
    with pytest.raises(MatchingError):
        ThresholdChoice(threshold=0.0, method="valley")

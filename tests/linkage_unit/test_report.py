"""The run report (linkage_unit/report.py): its estimates against planted truth, the
threshold curve against its slow twin, a Dice run's null-model estimates and honest gaps, the JSON round trip, who may
ask for it, and its storage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkage_unit.admission import Operation, require_role
from linkage_unit.matching import link
from linkage_unit.report import (
    RunReport,
    build_report,
    group_completeness,
    threshold_curve,
    threshold_curve_reference,
)
from linkage_unit.storage import Storage
from protocol.errors import PermissionDeniedError
from protocol.identity import Identity, Role
from tests.linkage_unit.test_scoring import LAYOUT, SETTINGS, pair_f1, planted  # noqa: F401


def test_the_report_estimates_f1_of_planted_matches(
    planted: tuple[np.ndarray, np.ndarray],  # noqa: F811
) -> None:
    left, right = planted
    result = link({"a": left, "b": right}, SETTINGS, layout=LAYOUT)
    report = build_report(result)
    precision, recall, f1 = pair_f1(result, 600)
    # 1,500 x 1,200 records, 600 shared, 3 % of group values changed: the model's estimate is
    # within 0.01 of the truth here (benchmarks/quality.py checks 10k synth medium and hard).
    assert report.estimated_f1 is not None and abs(report.estimated_f1 - f1) < 0.01
    assert report.estimated_precision == pytest.approx(result.statistics.estimated.precision)
    assert report.scoring == "fellegi-sunter" and report.threshold == 0.5
    assert report.histogram is not None
    assert sum(report.histogram.counts) == result.candidate_pair_count
    rates = {rate.party: rate for rate in report.parties}
    assert (rates["a"].records, rates["b"].records) == (1500, 1200)
    assert abs(rates["b"].match_rate - 0.5) < 0.02  # 600 of 1,200 have a match
    at_cut = next(point for point in report.threshold_curve if point.cut == 0.5)
    # The curve ignores the one-to-one solver, so it is close to, not equal to, the estimate.
    assert abs(at_cut.f1 - report.estimated_f1) < 0.02
    assert abs(at_cut.f1 - f1) < 0.02
    assert RunReport.from_json(report.to_json()) == report


def test_a_dice_run_reports_the_null_models_estimates_against_the_truth(
    planted: tuple[np.ndarray, np.ndarray],  # noqa: F811
) -> None:
    left, right = planted
    result = link({"a": left, "b": right}, SETTINGS)
    report = build_report(result)
    assert report.scoring == "dice" and report.threshold_method == "null-model"
    _, _, f1 = pair_f1(result, 600)
    assert report.estimated_f1 is not None and abs(report.estimated_f1 - f1) < 0.01
    # No model, so no weight histogram; the curve is over the Dice thresholds searched and
    # holds the run's own estimate at its threshold.
    assert report.histogram is None
    cuts = [point.cut for point in report.threshold_curve]
    assert cuts[0] == 0.5 and cuts[-1] == 0.95 and len(cuts) == 91
    at_threshold = min(report.threshold_curve, key=lambda point: abs(point.cut - result.threshold))
    assert at_threshold.f1 == pytest.approx(report.estimated_f1)
    assert RunReport.from_json(report.to_json()) == report


def test_a_dice_run_at_an_operators_threshold_reports_no_estimates(
    planted: tuple[np.ndarray, np.ndarray],  # noqa: F811
) -> None:
    left, right = planted
    report = build_report(link({"a": left, "b": right}, replace(SETTINGS, threshold=0.8)))
    assert report.scoring == "dice" and report.threshold_method == "operator"
    assert report.estimated_f1 is None and report.estimated_precision is None
    assert report.histogram is None and report.threshold_curve == ()
    assert sum(rate.linked_records for rate in report.parties) > 1000
    assert RunReport.from_json(report.to_json()) == report


def test_completeness_counts_records_whose_group_has_no_bits(
    planted: tuple[np.ndarray, np.ndarray],  # noqa: F811
) -> None:
    left, right = planted
    has = {name: np.any(left[:, words] != 0, axis=1) for name, words in
           (("name", slice(0, 4)), ("birth", slice(4, 6)), ("postcode", slice(6, 8)))}  # fmt: skip
    left = left.copy()
    left[:100, 4:6] = 0  # birth (words 4-5): missing in the first 100 records of a
    found = {
        (item.party, item.group): item
        for item in group_completeness({"a": left, "b": right}, LAYOUT)
    }
    assert found["a", "birth"].records == 1500
    assert found["a", "birth"].present == int(has["birth"][100:].sum())
    assert found["a", "birth"].present == int(has["birth"].sum()) - 100
    assert found["a", "name"].present == int(has["name"].sum())
    assert found["a", "postcode"].present == int(has["postcode"].sum())
    assert found["b", "birth"].present == int(np.any(right[:, 4:6] != 0, axis=1).sum())
    assert group_completeness({"a": left}, None) == ()


@given(
    probabilities=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60),
    missed=st.floats(min_value=-5.0, max_value=50.0),
)
def test_the_threshold_curve_agrees_with_its_slow_twin(
    probabilities: list[float], missed: float
) -> None:
    fast = threshold_curve(np.array(probabilities, dtype=np.float64), missed)
    slow = threshold_curve_reference(probabilities, missed)
    assert len(fast) == len(slow)
    for one, other in zip(fast, slow, strict=True):
        assert one.cut == other.cut
        assert one.precision == pytest.approx(other.precision, abs=1e-9)
        assert one.recall == pytest.approx(other.recall, abs=1e-9)
        assert one.f1 == pytest.approx(other.f1, abs=1e-9)


def test_only_the_operator_may_ask_for_a_report() -> None:
    require_role(Identity(role=Role.OPERATOR), Operation.GET_PROJECT_REPORT)
    for identity in (Identity(role=Role.AUDITOR), Identity(role=Role.PARTY, party="moj")):
        with pytest.raises(PermissionDeniedError, match="only the operator"):
            require_role(identity, Operation.GET_PROJECT_REPORT)


def test_a_stored_report_is_found_only_once_its_run_finished(tmp_path: Path) -> None:
    store = Storage(tmp_path / "lu", clock=lambda: 100.0)
    try:
        assert store.finished_report("p1") is None
        store.store_report("r1", "p1", '{"x":1}')
        assert store.finished_report("p1") is None  # no FINISHED run r1
    finally:
        store.close()

"""Link quality against the synthetic truth (bloomlink/synth/scoring.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloomlink.synth.scoring import link_quality


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_counts_cross_party_pairs_only(tmp_path: Path) -> None:
    # People: ann (moj m1, dfe d1), bob (moj m2, moj m3 duplicate, dfe d2), cat (dfe d3 only).
    truth = _write(
        tmp_path / "truth.csv",
        "department,record_id,person_id",
        ["moj,m1,ann", "moj,m2,bob", "moj,m3,bob", "dfe,d1,ann", "dfe,d2,bob", "dfe,d3,cat"],
    )
    # Linked: m1-d1 (right), m2-d3 (wrong); m3 and d2 alone (bob's pairs m2-d2, m3-d2 missed).
    moj = _write(tmp_path / "moj.csv", "own_record_id,link_key", ["m1,K1", "m2,K2", "m3,K3"])
    dfe = _write(tmp_path / "dfe.csv", "own_record_id,link_key", ["d1,K1", "d2,K4", "d3,K2"])
    quality = link_quality(truth, {"moj": moj, "dfe": dfe})
    assert (quality.true_pairs, quality.linked_pairs, quality.correct) == (3, 2, 1)
    assert quality.precision == pytest.approx(0.5)
    assert quality.recall == pytest.approx(1 / 3)
    assert quality.f1 == pytest.approx(0.4)


def test_nothing_linked_scores_zero_not_a_division_error(tmp_path: Path) -> None:
    truth = _write(
        tmp_path / "truth.csv", "department,record_id,person_id", ["moj,m1,a", "dfe,d1,a"]
    )
    moj = _write(tmp_path / "moj.csv", "own_record_id,link_key", ["m1,K1"])
    dfe = _write(tmp_path / "dfe.csv", "own_record_id,link_key", ["d1,K2"])
    quality = link_quality(truth, {"moj": moj, "dfe": dfe})
    assert (quality.precision, quality.recall, quality.f1) == (0.0, 0.0, 0.0)

"""`bloomlink demo`, the README's main job, runs end to end and reports real link quality."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bloomlink.cli import main


@pytest.mark.integration
def test_demo_links_two_departments_over_mutual_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "demo",
                "--dir",
                str(tmp_path),
                "--records",
                "600",
                "--difficulty",
                "low",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    output = capsys.readouterr().out
    found = re.search(r"precision (\S+)\s+recall (\S+)\s+F1 (\S+)", output)
    assert found, output
    precision, recall, f1 = (float(value) for value in found.groups())
    assert precision > 0.95 and recall > 0.85 and f1 > 0.9
    run_dir = next(tmp_path.glob("run-*"))
    for party in ("moj", "dfe"):
        keys = (run_dir / party / f"{party}.link-keys.csv").read_text().splitlines()
        assert keys[0] == "own_record_id,link_key" and len(keys) == 601
    assert (run_dir / "linkage-unit" / "audit.jsonl").stat().st_size > 0

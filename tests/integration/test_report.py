"""``bloomlink project report`` against a real mutual-TLS linkage unit: the operator gets
report.html, PNGs and report.json (aggregates only) of a grouped (Fellegi-Sunter) run; a
party certificate is refused, and so is a report before the run finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from tests.party.test_encoder_run import person, write_csv
from tests.service_helpers import cli_linkage_unit

pytestmark = pytest.mark.integration

SCHEMA = (
    Path(__file__).resolve().parents[2] / "benchmarks/schemas/grouped_diffusion_w3_blip_p02.toml"
)


def test_the_operator_gets_a_report_and_no_one_else_does(tmp_path: Path, capsys) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe"]) == 0
    secret = tmp_path / "linkage.secret"
    assert main(["keygen", "--out", str(secret)]) == 0
    with cli_linkage_unit(tmp_path / "lu", certs) as lu:
        tls = lu.tls

        assert main(["project", "create", "p1", "--schema", str(SCHEMA), "--parties", "moj,dfe",
                     "--no-auto-run", *tls("operator")]) == 0  # fmt: skip
        out_dir = tmp_path / "report"
        # No finished run yet: refused, and nothing written.
        code = main(["project", "report", "p1", "--out", str(out_dir), *tls("operator")])
        assert code == ExitCode.SERVICE
        error = capsys.readouterr().err
        assert "PreconditionError: no finished run" in error and not out_dir.exists()

        rows = [person(index) for index in range(60)]
        for party, chosen in (("moj", rows[:45]), ("dfe", rows[15:])):
            extract = write_csv(tmp_path / f"{party}.csv", chosen)
            key = tmp_path / f"{party}-signing.pem"
            encoded = tmp_path / f"{party}.clk"
            assert main(["keygen", "--signing", "--out", str(key)]) == 0
            assert main(["encode", str(extract), "--project", "p1", "--layout", "moj",
                         "--schema", str(SCHEMA), "--secret-file", str(secret),
                         "--out", str(encoded), "--party", party,
                         "--signing-key", str(key)]) == 0  # fmt: skip
            assert main(["submit", str(encoded), "--party", party,
                         *tls(f"party-{party}")]) == 0  # fmt: skip
        assert main(["project", "run", "p1", "--wait", "30", *tls("operator")]) == 0
        capsys.readouterr()

        # A party is refused the report (PERMISSION_DENIED; auditors: tests/linkage_unit).
        for role in ("party-moj", "party-dfe"):
            code = main(["project", "report", "p1", "--out", str(out_dir), *tls(role)])
            assert code == ExitCode.SERVICE, role
            assert "PermissionDeniedError: only the operator may do this" in capsys.readouterr().err
            assert not out_dir.exists()

        assert main(["project", "report", "p1", "--out", str(out_dir), "--json",
                     *tls("operator")]) == 0  # fmt: skip
        shown = json.loads(capsys.readouterr().out)
        report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
        assert report["run_id"] == shown["run_id"] and shown["report"]["threshold"] == 0.5
        assert report["threshold_method"] == "fellegi-sunter" and report["scoring"] == (
            "fellegi-sunter"
        )
        # The same figures as project status shows the operator.
        assert main(["project", "status", "p1", "--json", *tls("operator")]) == 0
        status = json.loads(capsys.readouterr().out)
        assert report["estimated_f1"] == pytest.approx(status["estimated"]["f1"])
        assert report["estimated_precision"] == pytest.approx(status["estimated"]["precision"])
        assert report["estimated_recall"] == pytest.approx(status["estimated"]["recall"])
        rates = {item["party"]: item for item in report["parties"]}
        assert rates["moj"]["records"] == 45 and rates["dfe"]["records"] == 45
        linked = sum(item["linked_records"] for item in report["parties"])
        assert linked == status["linked_record_count"]
        histogram = report["histogram"]
        assert sum(histogram["counts"]) == report["candidate_pairs"] > 0
        assert len(histogram["edges"]) == len(histogram["counts"]) + 1
        pairs = zip(histogram["expected_matches"], histogram["expected_non_matches"], strict=True)
        fitted = [match + non_match for match, non_match in pairs]
        assert fitted == pytest.approx(histogram["counts"], abs=1e-6)
        curve = report["threshold_curve"]
        assert [point["cut"] for point in curve] == sorted(point["cut"] for point in curve)
        recalls = [point["recall"] for point in curve]
        assert recalls == sorted(recalls, reverse=True)  # a higher cut never finds more
        # Aggregates only: no record position, CLK or link key anywhere in the report.
        assert set(report) >= {"threshold", "threshold_method", "estimated_precision",
                               "estimated_recall", "estimated_f1"}  # fmt: skip
        assert not {"positions", "clks", "link_keys", "pairs"} & set(report)

        # As the LU sees the encodings: every record has a name; counts never exceed records.
        groups = {(item["party"], item["group"]): item for item in report["completeness"]}
        assert set(groups) == {
            (p, g) for p in ("moj", "dfe") for g in ("name", "birth", "postcode")
        }
        assert all(0 < item["present"] <= item["records"] == 45 for item in groups.values())
        assert groups["moj", "name"]["present"] == groups["dfe", "name"]["present"] == 45

        page = (out_dir / "report.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 3
        assert "<table id='completeness'>" in page
        assert "<table id='summary'>" in page and "estimated F1" in page
        for name in ("histogram.png", "threshold_curve.png", "match_rates.png"):
            assert (out_dir / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

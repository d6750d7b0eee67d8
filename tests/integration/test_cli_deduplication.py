"""An operator runs a deduplicate-and-link project and a deduplication-only project with the
command line alone: synthetic extracts with repeat users, encode, submit, run, fetch, audit,
all against a real mutual-TLS linkage unit on loopback."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from protocol.schema import default_schema
from tests.service_helpers import cli_linkage_unit, read_rows

pytestmark = pytest.mark.integration


def pair_quality(
    truth: dict[tuple[str, str], str], keys: dict[tuple[str, str], str]
) -> tuple[float, float]:
    """Pairwise precision and recall over every pair of records (within and across parties)."""

    def pairs(label: dict[tuple[str, str], str]) -> set[frozenset[tuple[str, str]]]:
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for record, value in label.items():
            groups[value].append(record)
        return {
            frozenset(pair)
            for members in groups.values()
            for pair in itertools.combinations(members, 2)
        }

    predicted, actual = pairs(keys), pairs(truth)
    correct = len(predicted & actual)
    return correct / max(len(predicted), 1), correct / max(len(actual), 1)


def test_dedupe_and_link_and_dedupe_only_projects_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe", "--auditor"]) == 0
    data = tmp_path / "synth"
    # MoJ holds repeat users (30 % of its records repeat a person); DfE is duplicate-free.
    assert main(["synth", "--out", str(data), "--records", "300", "--difficulty", "low",
                 "--repeat-rate", "0.3", "--repeat-departments", "moj", "--seed", "5"]) == 0  # fmt: skip
    secret = tmp_path / "linkage-secret.key"
    assert main(["keygen", "--out", str(secret)]) == 0
    for party in ("moj", "dfe"):
        assert main(["keygen", "--signing", "--out", str(tmp_path / f"{party}-signing.pem")]) == 0
    with cli_linkage_unit(tmp_path / "lu", certs) as lu:

        def tls(role: str) -> list[str]:
            return lu.tls(role, timeout=10)

        fingerprint = default_schema().fingerprint.hex()
        capsys.readouterr()

        # --dedupe naming a party that is not a member: refused by name, nothing created.
        code = main(["project", "create", "bad", "--parties", "moj,dfe", "--dedupe", "hmrc",
                     "--schema-fingerprint", fingerprint, *tls("operator")])  # fmt: skip
        assert code == ExitCode.CONFIGURATION
        assert "--dedupe names 'hmrc', not a member party" in capsys.readouterr().err

        def encode_and_submit(project: str, party: str) -> Path:
            out = tmp_path / project / f"{party}.clk"
            out.parent.mkdir(exist_ok=True)
            assert main(["encode", str(data / f"{party}.csv"), "--project", project,
                         "--layout", party, "--party", party, "--secret-file", str(secret),
                         "--signing-key", str(tmp_path / f"{party}-signing.pem"),
                         "--out", str(out), "--workers", "1"]) == 0  # fmt: skip
            assert main(["submit", str(out), "--party", party, *tls(f"party-{party}")]) == 0
            return out

        def fetch(project: str, party: str, encoded: Path) -> dict[tuple[str, str], str]:
            output = tmp_path / project / f"{party}-keys.csv"
            assert main(["fetch", project, "--party", party,
                         "--positions", str(encoded.with_name(encoded.name + ".positions.csv")),
                         "--output", str(output), *tls(f"party-{party}")]) == 0  # fmt: skip
            return {(party, row["own_record_id"]): row["link_key"] for row in read_rows(output)}

        truth = {
            (row["department"], row["record_id"]): row["person_id"]
            for row in read_rows(data / "truth.csv")
        }

        # 1. Deduplicate MoJ and link it with DfE: one link key per person.
        assert main(["project", "create", "linked", "--parties", "moj,dfe", "--dedupe", "moj",
                     "--no-auto-run", "--schema-fingerprint", fingerprint,
                     *tls("operator")]) == 0  # fmt: skip
        assert "dedupe-and-link: deduplicating moj" in capsys.readouterr().out
        encoded = {party: encode_and_submit("linked", party) for party in ("moj", "dfe")}
        assert main(["project", "run", "linked", "--wait", "60", *tls("operator")]) == 0
        capsys.readouterr()
        assert main(["project", "status", "linked", *tls("operator")]) == 0
        status = capsys.readouterr().out
        assert "run finished" in status and "link model dedupe-and-link" in status, status
        keys = {**fetch("linked", "moj", encoded["moj"]), **fetch("linked", "dfe", encoded["dfe"])}
        dfe_keys = [key for (party, _), key in keys.items() if party == "dfe"]
        assert len(set(dfe_keys)) == len(dfe_keys)  # duplicate-free: one key per record
        moj_truth = {record: person for record, person in truth.items() if record[0] == "moj"}
        assert len(set(moj_truth.values())) < len(moj_truth)  # MoJ really holds repeats
        # 300 records at the automatic threshold (a fresh secret each time): around 0.95-1.0
        # precision and recall. A one-to-one solve would group no two MoJ records (recall 0).
        precision, recall = pair_quality(truth, keys)
        assert precision >= 0.9 and recall >= 0.9, (precision, recall)
        moj_only = {record: key for record, key in keys.items() if record[0] == "moj"}
        precision, recall = pair_quality(moj_truth, moj_only)
        assert precision >= 0.9 and recall >= 0.9, (precision, recall)

        # 2. A deduplication-only project: MoJ alone. DfE is no member: its upload is refused.
        assert main(["project", "create", "solo", "--parties", "moj", "--dedupe", "moj",
                     "--max-cluster-size", "50", "--no-auto-run",
                     "--schema-fingerprint", fingerprint, *tls("operator")]) == 0  # fmt: skip
        solo_moj = encode_and_submit("solo", "moj")
        capsys.readouterr()
        refused = tmp_path / "solo" / "dfe.clk"
        assert main(["encode", str(data / "dfe.csv"), "--project", "solo", "--layout", "dfe",
                     "--party", "dfe", "--secret-file", str(secret),
                     "--signing-key", str(tmp_path / "dfe-signing.pem"), "--out", str(refused),
                     "--workers", "1"]) == 0  # fmt: skip
        assert main(["submit", str(refused), "--party", "dfe", *tls("party-dfe")]) == (
            ExitCode.SERVICE
        )
        assert "error: NotFoundError:" in capsys.readouterr().err
        assert main(["project", "run", "solo", "--wait", "60", *tls("operator")]) == 0
        capsys.readouterr()
        assert main(["project", "status", "solo", *tls("operator")]) == 0
        assert "link model dedupe-only: deduplicating moj" in capsys.readouterr().out
        solo = fetch("solo", "moj", solo_moj)
        precision, recall = pair_quality(moj_truth, solo)
        assert precision >= 0.9 and recall >= 0.9, (precision, recall)

        # The auditor sees each project's link model in the verified log.
        audit = tmp_path / "auditor"
        assert main(["audit", "fetch", "--out", str(audit), *tls("auditor")]) == 0
        capsys.readouterr()
        assert main(["audit", "verify", "--log", str(audit / "audit.jsonl"),
                     "--public-key", str(audit / "lu-audit-key.pem")]) == 0  # fmt: skip
        report = capsys.readouterr().out
        assert "result: PASSED" in report
        assert "link model dedupe-and-link: moj deduplicated, at most one record per person " \
            "from dfe; clusters capped at 1000 records" in report  # fmt: skip
        assert "link model dedupe-only: moj deduplicated; clusters capped at 50 records" in report

"""The certs, project, submit and fetch commands against a real mutual-TLS linkage unit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from linkage_unit.server import ServerConfig, create_server
from party.manifest import create_party_signing_key, manifest_path_for, write_manifest_for_file
from tests.service_helpers import SCHEMA_FINGERPRINT, planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


def test_operator_and_parties_drive_a_project_from_the_command_line(tmp_path: Path, capsys) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe", "--auditor"]) == 0
    assert (certs / "party-moj.key").stat().st_mode & 0o777 == 0o600
    server = create_server(
        ServerConfig(
            data_dir=tmp_path / "lu",
            listen="127.0.0.1:0",
            ca_certificate=certs / "ca.pem",
            certificate=certs / "linkage-unit.pem",
            private_key=certs / "linkage-unit.key",
            grace_seconds=0.5,
        )
    )
    port = server.start()
    try:

        def tls(role: str) -> list[str]:
            return ["--target", f"127.0.0.1:{port}", "--ca", str(certs / "ca.pem"),
                    "--cert", str(certs / f"{role}.pem"), "--key", str(certs / f"{role}.key"),
                    "--timeout", "5"]  # fmt: skip

        # The test starts the run itself, so the project must not start it on the last upload.
        create = [
            "project",
            "create",
            "p1",
            "--parties",
            "moj,dfe",
            "--threshold",
            "0.9",
            "--no-auto-run",
        ]
        create += ["--schema-fingerprint", SCHEMA_FINGERPRINT.hex(), *tls("operator")]
        assert main(create) == 0
        clks = planted_party_clks(["moj", "dfe"], seed=21, records=15, shared=5)
        for party in ("moj", "dfe"):
            path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
            # Random CLKs have no extract to scan; this manifest vouches as encode's would.
            write_manifest_for_file(
                path,
                manifest_path_for(path),
                signing_key=create_party_signing_key(tmp_path / f"{party}-signing.pem"),
                party=party,
                software_version="0.1.0",
                leak_scan_strings=1,
                leak_scan_rows=1,
            )
            assert main(["submit", str(path), "--party", party, *tls(f"party-{party}")]) == 0
        assert main(["project", "run", "p1", "--wait", "20", *tls("operator")]) == 0
        assert "finished" in capsys.readouterr().out
        positions = tmp_path / "moj-positions.csv"
        positions.write_text(
            "record_id,position\n" + "".join(f"r{i:03d},{i}\n" for i in range(15)), encoding="utf-8"
        )
        output = tmp_path / "moj-keys.csv"
        assert main(["fetch", "p1", "--party", "moj", "--positions", str(positions),
                     "--output", str(output), *tls("party-moj")]) == 0  # fmt: skip
        with output.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert sorted(row["own_record_id"] for row in rows) == [f"r{i:03d}" for i in range(15)]
        assert len({row["link_key"] for row in rows}) == 15
        # Another party's keys: a one-line error and the documented exit code.
        code = main(["fetch", "p1", "--party", "dfe", "--positions", str(positions),
                     "--output", str(tmp_path / "x.csv"), *tls("party-moj")])  # fmt: skip
        assert code == ExitCode.SERVICE
        assert "error: NotFoundError:" in capsys.readouterr().err
    finally:
        server.stop(0)

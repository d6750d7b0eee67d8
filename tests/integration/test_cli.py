"""The certs, project, submit and fetch commands against a real mutual-TLS linkage unit."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from party.manifest import create_party_signing_key, manifest_path_for, write_manifest_for_file
from tests.service_helpers import (
    SCHEMA_FINGERPRINT,
    cli_linkage_unit,
    planted_party_clks,
    write_clk_file,
)

pytestmark = pytest.mark.integration


def test_operator_and_parties_drive_a_project_from_the_command_line(tmp_path: Path, capsys) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe", "--auditor"]) == 0
    assert (certs / "party-moj.key").stat().st_mode & 0o777 == 0o600
    with cli_linkage_unit(tmp_path / "lu", certs) as lu:
        tls = lu.tls

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
                unkeyed_check=True,
            )
            assert main(["submit", str(path), "--party", party, *tls(f"party-{party}")]) == 0
        capsys.readouterr()
        assert main(["project", "run", "p1", "--wait", "20", "--json", *tls("operator")]) == 0
        ran = json.loads(capsys.readouterr().out)
        assert ran["state"] == "queued" or ran["state"] == "running"
        assert ran["status"]["run_state"] == "finished" and ran["status"]["comparisons"] > 0
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
        # Another party's keys with moj's certificate: refused before asking, saying why.
        code = main(["fetch", "p1", "--party", "dfe", "--positions", str(positions),
                     "--output", str(tmp_path / "x.csv"), *tls("party-moj")])  # fmt: skip
        assert code == ExitCode.CONFIGURATION
        assert "error: ConfigurationError: --party dfe does not match" in capsys.readouterr().err


# -- issue 16: binding, early refusal, misclassified errors, --json, health ------------------


@pytest.fixture
def deployment(tmp_path: Path):
    """certs init (as the CLI does it), a real mutual-TLS LU, synthetic moj + dfe extracts,
    a linkage secret and each party's signing key."""
    from bloomlink.synth import SynthConfig, generate, write

    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe"]) == 0
    write(
        generate(SynthConfig(departments=("moj", "dfe"), records=120, overlap=0.5,
                             difficulty="none", seed=5)),
        tmp_path / "synth",
    )  # fmt: skip
    assert main(["keygen", "--out", str(tmp_path / "secret.key")]) == 0
    for party in ("moj", "dfe"):
        assert main(["keygen", "--signing", "--out", str(tmp_path / f"{party}-signing.pem")]) == 0
    with cli_linkage_unit(tmp_path / "lu", certs) as lu:
        yield tmp_path, lu.port


def _tls(base: Path, port: int, role: str, host: str = "127.0.0.1") -> list[str]:
    certs = base / "certs"
    return ["--target", f"{host}:{port}", "--ca", str(certs / "ca.pem"),
            "--cert", str(certs / f"{role}.pem"), "--key", str(certs / f"{role}.key"),
            "--timeout", "5"]  # fmt: skip


def _encode(base: Path, party: str, *extra: str) -> list[str]:
    return ["encode", str(base / "synth" / f"{party}.csv"), "--project", "p1",
            "--layout", party, "--party", party, "--secret-file", str(base / "secret.key"),
            "--signing-key", str(base / f"{party}-signing.pem"),
            "--out", str(base / f"{party}.clk"), "--workers", "1", *extra]  # fmt: skip


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1, out  # exactly one JSON object and nothing else
    return json.loads(lines[0])


def _create(base: Path, port: int, fingerprint: str, capsys) -> dict:
    code = main(["project", "create", "p1", "--parties", "moj,dfe", "--threshold", "0.8",
                 "--schema-fingerprint", fingerprint, "--json", *_tls(base, port, "operator")])  # fmt: skip
    assert code == 0
    return _json(capsys)


def test_json_outputs_and_a_reencode_cannot_scramble_the_keys(deployment, capsys) -> None:
    base, port = deployment
    capsys.readouterr()
    assert main(["schema", "check", "--json"]) == 0
    schema = _json(capsys)
    assert len(bytes.fromhex(schema["fingerprint"])) == 32 and "surname" in schema["fields"]
    created = _create(base, port, schema["fingerprint"], capsys)
    assert created["project_id"] == "p1" and created["members"] == ["moj", "dfe"]
    encoded = {}
    for party in ("moj", "dfe"):
        assert main(_encode(base, party, "--json")) == 0
        encoded[party] = _json(capsys)
        assert encoded[party]["records_encoded"] == 120
        assert encoded[party]["leak_scan"]["unkeyed_check"] is True
        assert {item["field"] for item in encoded[party]["fields"]} >= {"forename", "surname"}
    for party in ("moj", "dfe"):
        code = main(["submit", str(base / f"{party}.clk"), "--party", party, "--json",
                     *_tls(base, port, f"party-{party}")])  # fmt: skip
        assert code == 0
        submitted = _json(capsys)
        assert submitted["state"] == "complete"
        assert submitted["payload_sha256"] == encoded[party]["payload_sha256"]
    assert main(["project", "status", "p1", "--wait", "30", "--json",
                 *_tls(base, port, "operator")]) == 0  # fmt: skip
    status = _json(capsys)
    assert status["run_state"] == "finished"
    # Retention (delete-after-run): the payloads go right after the run is marked finished,
    # so a status read in between still says "complete"; then they are gone, their digests
    # remembered. (Asserting it on the first read failed now and then.)
    for _ in range(50):
        if set(status["uploads"].values()) == {"deleted"}:
            break
        time.sleep(0.1)
        assert main(["project", "status", "p1", "--json", *_tls(base, port, "operator")]) == 0
        status = _json(capsys)
    assert status["uploads"] == {"moj": "deleted", "dfe": "deleted"}
    assert main(["health", "--json", *_tls(base, port, "operator")]) == 0
    assert _json(capsys) == {"target": f"127.0.0.1:{port}", "service": "bloomlink.v1.LinkageUnit",
                             "status": "SERVING", "serving": True}  # fmt: skip
    # The department keeps the positions file of what it sent; then re-encodes to the same
    # --out. encode refuses to replace the files without --force...
    positions = base / "moj.clk.positions.csv"
    kept = base / "moj-submitted.positions.csv"
    kept.write_bytes(positions.read_bytes())
    assert main(_encode(base, "moj")) == ExitCode.CONFIGURATION
    assert "--force" in capsys.readouterr().err
    assert kept.read_bytes() == positions.read_bytes()
    # ...and with --force, fetch refuses the new positions file for the old submission,
    # where it once wrote scrambled keys with exit 0.
    assert main(_encode(base, "moj", "--force")) == 0
    capsys.readouterr()
    fetch = ["fetch", "p1", "--party", "moj", "--output", str(base / "keys.csv"), "--json",
             *_tls(base, port, "party-moj")]  # fmt: skip
    assert main([*fetch, "--positions", str(positions)]) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert "not the file party moj submitted" in err and not (base / "keys.csv").exists()
    assert main([*fetch, "--positions", str(kept)]) == 0
    fetched = _json(capsys)
    assert fetched["link_keys"] == 120 and fetched["positions_checked"] is True
    with (base / "keys.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120
    # The operator fetches the audit log and verifies it, both as JSON.
    audit = base / "audit"
    assert main(["audit", "fetch", "--out", str(audit), "--json",
                 *_tls(base, port, "operator")]) == 0  # fmt: skip
    fetched_log = _json(capsys)
    assert fetched_log["entries"] > 5 and fetched_log["log"] == str(audit / "audit.jsonl")
    assert main(["audit", "verify", "--log", str(audit / "audit.jsonl"), "--public-key",
                 str(audit / "lu-audit-key.pem"), "--json"]) == 0  # fmt: skip
    verified = json.loads(capsys.readouterr().out)
    assert verified["passed"] is True
    # A party fetches its project's view: the verify command it is told to run names its
    # party (without --party the withheld figures read as failures), and that command passes.
    own = base / "moj-audit"
    assert main(["audit", "fetch", "--out", str(own), "--project", "p1",
                 *_tls(base, port, "party-moj")]) == 0  # fmt: skip
    hint = capsys.readouterr().out
    assert "--project p1 --party moj" in hint
    command = hint.split("then run bloomlink ", 1)[1].split()
    assert main(command) == 0
    assert "PASSED" in capsys.readouterr().out


def test_submit_refuses_a_file_for_another_schema_before_sending(deployment, capsys) -> None:
    base, port = deployment
    _create(base, port, "ab" * 32, capsys)  # not the shipped schema's fingerprint
    assert main(_encode(base, "moj")) == 0
    capsys.readouterr()
    code = main(["submit", str(base / "moj.clk"), "--party", "moj",
                 *_tls(base, port, "party-moj")])  # fmt: skip
    assert code == ExitCode.INCOMPATIBLE
    err = capsys.readouterr().err
    assert "project p1 expects schema abababababab" in err and "nothing was sent" in err
    assert "a different schema file?" in err  # the plain words
    assert main(["project", "status", "p1", "--json", *_tls(base, port, "operator")]) == 0
    assert _json(capsys)["uploads"]["moj"] == "not_started"


def test_party_flag_not_matching_the_certificate_says_so(deployment, capsys) -> None:
    base, port = deployment
    capsys.readouterr()
    positions = base / "p.csv"
    positions.write_text("record_id,position\n", encoding="utf-8")
    code = main(["fetch", "p1", "--party", "dfe", "--positions", str(positions),
                 "--output", str(base / "k.csv"), *_tls(base, port, "party-moj")])  # fmt: skip
    assert code == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert "--party dfe does not match your certificate, which is party moj's" in err
    assert "no link keys" not in err


def test_a_host_name_not_in_the_certificate_is_a_configuration_error(
    tmp_path: Path, capsys
) -> None:
    """The LU's certificate names lu.internal and 10.9.9.9; the client dials 127.0.0.1. That
    is the caller's setup, not an outage: no 'unavailable, retry later'."""
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj",
                 "--host", "lu.internal", "--address", "10.9.9.9"]) == 0  # fmt: skip
    with cli_linkage_unit(tmp_path / "lu", certs) as lu:
        capsys.readouterr()
        assert main(["project", "status", "p1", *lu.tls("operator")]) == (ExitCode.CONFIGURATION)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "does not name '127.0.0.1'" in err
        assert "--server-name" in err and "retry later" not in err
        # The flag it names fixes it.
        args = ["project", "status", "p1", *lu.tls("operator")]
        assert main([*args, "--server-name", "lu.internal"]) == ExitCode.SERVICE  # not found
        assert "NotFoundError" in capsys.readouterr().err


def test_serve_logs_json_to_a_file_without_grpc_handshake_noise(tmp_path: Path) -> None:
    """`bloomlink serve` in its own process, as an operator runs it: the example config,
    JSON logs to a file, and no 'Handshake failed ... PEER_DID_NOT_RETURN_A_CERTIFICATE' from
    the LU's own mutual-TLS self-check on stderr."""
    import os
    import signal
    import subprocess
    import sys

    assert main(["certs", "init", "--dir", str(tmp_path / "pki"), "--parties", "moj,dfe"]) == 0
    config = tmp_path / "lu.toml"
    config.write_text(
        (Path(__file__).resolve().parents[2] / "lu.example.toml")
        .read_text(encoding="utf-8")
        .replace('"127.0.0.1:50051"', '"127.0.0.1:0"'),
        encoding="utf-8",
    )
    environment = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bloomlink",
            "serve",
            "--config",
            "lu.toml",
            "--log-format",
            "json",
            "--log-file",
            "lu.log",
        ],  # fmt: skip
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("linkage unit listening on port "), line
        port = int(line.rsplit(" ", 1)[1])
        pki = tmp_path / "pki"
        assert main(["health", "--target", f"localhost:{port}", "--ca", str(pki / "ca.pem"),
                     "--cert", str(pki / "operator.pem"), "--key", str(pki / "operator.key")]) == 0  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "Handshake failed" not in stderr and "PEER_DID_NOT_RETURN" not in stderr
    entries = [json.loads(text) for text in (tmp_path / "lu.log").read_text().splitlines()]
    messages = [entry["message"] for entry in entries]
    assert any(message.startswith("mutual TLS self-check passed") for message in messages)
    assert any(message.startswith("linkage unit serving") for message in messages)


def test_a_client_certificate_from_another_ca_is_an_authentication_error(
    deployment, capsys
) -> None:
    """The LU cuts the handshake of a certificate its CA did not issue; the client saw only
    'unavailable, retry later' (exit 10). Retrying cannot help: say which file is wrong."""
    base, port = deployment
    other = base / "other-pki"
    assert main(["certs", "init", "--dir", str(other), "--parties", "moj"]) == 0
    capsys.readouterr()
    args = ["--target", f"127.0.0.1:{port}", "--ca", str(base / "certs" / "ca.pem"),
            "--cert", str(other / "operator.pem"), "--key", str(other / "operator.key"),
            "--timeout", "5"]  # fmt: skip
    assert main(["project", "status", "p1", *args]) == ExitCode.SERVICE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: UnauthenticatedError: ")
    assert f"{other / 'operator.pem'} was not issued by the CA in" in err
    assert "retry" not in err


def test_submitting_another_partys_file_is_refused_plainly(deployment, capsys) -> None:
    """moj submits dfe's encoded file: its signed manifest says it is dfe's. That is the
    wrong file (exit 3, saying whose it is), not a manifest that fails its audit (exit 9,
    're-run bloomlink encode')."""
    base, port = deployment
    _create(base, port, "ab" * 32, capsys)
    assert main(_encode(base, "dfe")) == 0
    capsys.readouterr()
    code = main(["submit", str(base / "dfe.clk"), "--party", "moj",
                 *_tls(base, port, "party-moj")])  # fmt: skip
    assert code == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is party dfe's encoded file" in err
    assert "nothing was sent" in err and "re-run bloomlink encode" not in err
    assert main(["project", "status", "p1", "--json", *_tls(base, port, "operator")]) == 0
    assert _json(capsys)["uploads"]["moj"] == "not_started"

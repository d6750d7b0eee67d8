"""An encoded file says what its keys were derived for (its key context), and the linkage
unit refuses, before it stores a byte, an encoding made for another context than the
project's: with the command line alone against a real mutual-TLS linkage unit. Before, the
first run of a spine bound whatever KCV its uploads shared, an encoding made without
``--spine`` included, and every correct upload was refused after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from party.manifest import manifest_path_for, read_manifest
from protocol.clk_file import read_header
from tests.service_helpers import cli_encode, create_cli_spine, serving

pytestmark = pytest.mark.integration


def test_a_spine_project_refuses_an_encoding_not_made_for_its_spine_before_its_first_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe"]) == 0
    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--records", "40", "--difficulty", "low",
                 "--departments", "moj,dfe", "--seed", "3"]) == 0  # fmt: skip
    secret = tmp_path / "linkage-secret.key"
    assert main(["keygen", "--out", str(secret)]) == 0
    for party in ("moj", "dfe"):
        assert main(["keygen", "--signing", "--out", str(tmp_path / f"{party}-signing.pem")]) == 0
    spine = create_cli_spine(tmp_path, certs, "people", "moj,dfe")
    fingerprint = spine.fingerprint
    with serving(spine.config, timeout=10) as lu:
        tls = lu.tls

        def encode(project: str, party: str, *flags: str) -> Path:
            out = tmp_path / project / f"{party}{'-spine' if flags else ''}.clk"
            return cli_encode(data / f"{party}.csv", out, project=project, party=party,
                              layout=party, secret=secret,
                              signing_key=tmp_path / f"{party}-signing.pem", extra=flags)  # fmt: skip

        def status(project: str) -> dict[str, str]:
            capsys.readouterr()
            assert main(["project", "status", project, "--json", *tls("operator")]) == 0
            uploads: dict[str, str] = json.loads(capsys.readouterr().out)["uploads"]
            return uploads

        assert main(["project", "create", "release-1", "--parties", "moj,dfe", "--spine",
                     "people", "--no-auto-run", "--schema-fingerprint", fingerprint,
                     *tls("operator")]) == 0  # fmt: skip
        # MoJ encodes without --spine, and is first: the spine has bound no KCV yet, so only
        # the file's key context can tell. Refused when the header arrives, naming the party.
        plain = encode("release-1", "moj")
        assert read_header(plain).key_context is None
        capsys.readouterr()
        assert main(["submit", str(plain), "--party", "moj", *tls("party-moj")]) == (
            ExitCode.INCOMPATIBLE
        )
        err = capsys.readouterr().err
        assert "party moj's file was encoded without --spine" in err
        assert "joins spine people" in err and "--spine people" in err
        assert status("release-1")["moj"] == "not_started"
        # The parties' encodings for the spine are taken, and the run binds the spine's KCV.
        for party in ("dfe", "moj"):
            out = encode("release-1", party, "--spine", "people")
            assert read_header(out).key_context == "spine:people"
            # The party's signed manifest states the context, so the header's cannot be
            # edited without the party's key (the LU compares them before the project).
            assert read_manifest(manifest_path_for(out)).manifest.key_context == "spine:people"
            assert main(["submit", str(out), "--party", party, *tls(f"party-{party}")]) == 0
        assert main(["project", "run", "release-1", "--wait", "120", *tls("operator")]) == 0
        # The run finished. (Its payloads are deleted just after the state is published, so
        # an upload may still read complete here: asserting "deleted" failed under load.)
        capsys.readouterr()
        assert main(["project", "status", "release-1", "--json", *tls("operator")]) == 0
        assert json.loads(capsys.readouterr().out)["run_state"] == "finished"
        assert set(status("release-1").values()) <= {"complete", "deleted"}

        # A one-off project takes a file without a key context (the format as it always was)
        # and refuses one made for a spine.
        assert main(["project", "create", "one-off", "--parties", "moj,dfe", "--no-auto-run",
                     "--schema-fingerprint", fingerprint, *tls("operator")]) == 0  # fmt: skip
        assert main(["submit", str(encode("one-off", "moj")), "--party", "moj",
                     *tls("party-moj")]) == 0  # fmt: skip
        spined = encode("one-off", "dfe", "--spine", "people")
        capsys.readouterr()
        assert main(["submit", str(spined), "--party", "dfe", *tls("party-dfe")]) == (
            ExitCode.INCOMPATIBLE
        )
        err = capsys.readouterr().err
        assert "party dfe's file was encoded for spine:people" in err and "joins no spine" in err
        assert status("one-off") == {"moj": "complete", "dfe": "not_started"}
    log = [
        json.loads(line)
        for line in (spine.config.data_dir / "audit.jsonl").read_text().splitlines()
        if line
    ]
    refused = [entry for entry in log if entry["event"] == "upload_refused"]
    assert [(entry["project_id"], entry["details"]["party"]) for entry in refused] == [
        ("release-1", "moj"),
        ("one-off", "dfe"),
    ]
    assert {entry["details"]["reason"] for entry in refused} == {"key_context"}
    # Each committed upload records the spine its keys were made for (none for a one-off).
    committed = [entry for entry in log if entry["event"] == "upload_committed"]
    assert sorted(
        (entry["project_id"], entry["details"]["party"], entry["details"].get("spine"))
        for entry in committed
    ) == [("one-off", "moj", None), ("release-1", "dfe", "people"), ("release-1", "moj", "people")]

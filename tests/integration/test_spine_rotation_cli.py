"""Key rotation and retention of a spine with the command line alone, against a real
mutual-TLS linkage unit: release 1 (MoJ + DfE) under one linkage secret; every party
re-encodes its release-1 upload under a new secret at the same positions (``encode
--same-positions``); the operator rotates the spine (``spine rotate``); release 2 of MoJ
under the new secret keeps each returning person's link key, and an upload under the old
secret is refused; retention (``--keep-runs 1``) removes release 1's encodings when release 2's
run completes; the audit log,
rotation and deletion included, verifies."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from party.manifest import load_party_signing_key, manifest_path_for
from protocol.manifest import SignedManifest, read_manifest, sign_manifest, write_signed_manifest
from tests.service_helpers import (
    CliLinkageUnit,
    audit_verified,
    cli_encode,
    create_cli_spine,
    positions_of,
    read_rows,
    serving,
)

pytestmark = pytest.mark.integration


def test_a_rotated_spine_keeps_link_keys_and_prunes_old_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--parties", "moj,dfe",
                 "--auditor"]) == 0  # fmt: skip
    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--records", "300", "--difficulty", "low",
                 "--departments", "moj,dfe", "--seed", "15"]) == 0  # fmt: skip
    old_secret, new_secret = tmp_path / "secret-1.key", tmp_path / "secret-2.key"
    for secret in (old_secret, new_secret):
        assert main(["keygen", "--out", str(secret)]) == 0
    for party in ("moj", "dfe"):
        assert main(["keygen", "--signing", "--out", str(tmp_path / f"{party}-signing.pem")]) == 0
    spine = create_cli_spine(tmp_path, certs, "people", "moj,dfe", "--keep-runs", "1",
                             party_keys={party: tmp_path / f"{party}-signing.pem.pub"
                                         for party in ("moj", "dfe")})  # fmt: skip
    lu, operator_dir = spine.config.data_dir, spine.operator_dir
    truth = {
        (row["department"], row["record_id"]): row["person_id"]
        for row in read_rows(data / "truth.csv")
    }

    def encode(
        project: str, party: str, department: str, secret: Path, out: Path, *extra: str
    ) -> None:
        cli_encode(data / f"{department}.csv", out, project=project, party=party,
                   layout=department, secret=secret, signing_key=tmp_path / f"{party}-signing.pem",
                   extra=["--spine", "people", *extra])  # fmt: skip

    def release(
        unit: CliLinkageUnit, project: str, sends: dict[str, str], secret: Path, submitted: int = 0
    ) -> dict[str, dict[str, str]] | None:
        """Create, encode, submit, run and fetch: party -> record id -> key (None: a submit
        was refused with the exit code ``submitted``, or the run did not finish)."""
        tls = unit.tls
        parties = ",".join(sends)
        dedupe = ["--dedupe", parties] if len(sends) == 1 else []
        assert main(["project", "create", project, "--parties", parties, *dedupe,
                     "--spine", "people", "--no-auto-run", "--threshold", "0.8",
                     "--schema-fingerprint", spine.fingerprint, *tls("operator")]) == 0  # fmt: skip
        for party, department in sends.items():
            out = tmp_path / project / f"{party}.clk"
            encode(project, party, department, secret, out)
            code = main(["submit", str(out), "--party", party, *tls(f"party-{party}")])
            assert code == submitted
            if code:
                return None
        if main(["project", "run", project, "--wait", "120", *tls("operator")]) != 0:
            return None
        keys: dict[str, dict[str, str]] = {}
        for party in sends:
            out = tmp_path / project / f"{party}.clk"
            output = tmp_path / project / f"{party}-keys.csv"
            assert main(["fetch", project, "--party", party, "--positions", str(positions_of(out)),
                         "--output", str(output), *tls(f"party-{party}")]) == 0  # fmt: skip
            keys[party] = {row["own_record_id"]: row["link_key"] for row in read_rows(output)}
        return keys

    with serving(spine.config, timeout=10) as unit:
        first = release(unit, "release-1", {"moj": "moj", "dfe": "dfe"}, old_secret)
    assert first is not None

    # Rotation: each party re-encodes its release-1 upload under the new secret, each record
    # at the position it had; the operator rebinds the spine (LU stopped). `spine show` says
    # which uploads the spine holds records of.
    capsys.readouterr()
    assert main(["spine", "show", "people", *operator_dir, "--json"]) == 0
    held = json.loads(capsys.readouterr().out)["uploads"]
    assert held == [
        {"project": "release-1", "party": "moj", "records": len(first["moj"])},
        {"project": "release-1", "party": "dfe", "records": len(first["dfe"])},
    ]
    reencoded = []
    for party in ("moj", "dfe"):
        out = tmp_path / "rotation" / f"{party}.clk"
        encode("release-1", party, party, new_secret, out,
               "--same-positions", str(positions_of(tmp_path / "release-1" / f"{party}.clk")))  # fmt: skip
        reencoded += ["--reencoded", f"{party}={out}"]
    # The parties' registered manifest keys, as the LU's config names them.
    lu_config = tmp_path / "lu.toml"
    lu_config.write_text(
        f'data_dir = "{lu}"\nca_certificate = "{certs / "ca.pem"}"\n'
        f'certificate = "{certs / "linkage-unit.pem"}"\n'
        f'private_key = "{certs / "linkage-unit.key"}"\n[party_keys]\n'
        + "".join(f'{p} = "{tmp_path / f"{p}-signing.pem.pub"}"\n' for p in ("moj", "dfe")),
        encoding="utf-8",
    )
    registered = ["--config", str(lu_config)]

    # A rotation takes only re-encodings their party's signed manifest vouches for; any other
    # refuses the whole rotation, names the party and the file, and changes nothing.
    moj_new = tmp_path / "rotation" / "moj.clk"
    spine_file = lu / "spines" / "people.spine"
    stored = spine_file.read_bytes()
    moj_manifest = read_manifest(manifest_path_for(moj_new))

    def suspect(case: str, manifest: SignedManifest | None) -> Path:
        copy = tmp_path / case / "moj.clk"
        copy.parent.mkdir()
        shutil.copyfile(moj_new, copy)
        if manifest is not None:
            write_signed_manifest(manifest, manifest_path_for(copy))
        return copy

    dfe_key = load_party_signing_key(tmp_path / "dfe-signing.pem")
    release_one_manifest = read_manifest(manifest_path_for(tmp_path / "release-1" / "moj.clk"))
    cases = {
        "bare": (None, "manifest_missing", "signed manifest"),
        "forged": (
            sign_manifest(moj_manifest.manifest, dfe_key),
            "manifest_signature",
            "not signed by this party's registered key",
        ),
        "stale": (release_one_manifest, "manifest_mismatch", "payload_sha256"),
    }
    # Re-encoded without --spine (keys for the project): it would bind the spine to a KCV
    # no later upload for the spine has. Refused by its key context, its manifest good.
    unspined = cli_encode(data / "moj.csv", tmp_path / "unspined" / "moj.clk",
                          project="release-1", party="moj", layout="moj", secret=new_secret,
                          signing_key=tmp_path / "moj-signing.pem",
                          extra=["--same-positions",
                                 str(positions_of(tmp_path / "release-1" / "moj.clk"))])  # fmt: skip
    cases["unspined"] = (read_manifest(manifest_path_for(unspined)), "key_context", "--spine")
    for case, (manifest, reason, why) in cases.items():
        copy = suspect(case, manifest) if case != "unspined" else unspined
        others = ["--reencoded", f"dfe={tmp_path / 'rotation' / 'dfe.clk'}"]
        capsys.readouterr()
        assert main(["spine", "rotate", "people", "--reencoded", f"moj={copy}", *others,
                     *registered, *operator_dir]) != 0  # fmt: skip
        error = capsys.readouterr().err
        assert f"party moj's re-encoded file {copy}" in error and why in error, (case, error)
        assert "nothing changed" in error
        for value in (moj_manifest.manifest.payload_sha256, release_one_manifest.manifest.kcv):
            assert value.hex() not in error
        assert spine_file.read_bytes() == stored
        last = json.loads((lu / "audit.jsonl").read_text(encoding="utf-8").splitlines()[-1])
        assert (last["event"], last["project_id"]) == ("upload_refused", "release-1")
        assert (last["details"]["party"], last["details"]["reason"]) == ("moj", reason)
    # Without the registered keys the rotation is refused before it reads a manifest.
    assert main(["spine", "rotate", "people", *reencoded, *operator_dir]) != 0
    assert "registered manifest key" in capsys.readouterr().err
    assert spine_file.read_bytes() == stored

    capsys.readouterr()
    assert main(["spine", "rotate", "people", *reencoded, *registered, *operator_dir,
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["uploads"] == 2

    with serving(spine.config, timeout=10) as unit:
        second = release(unit, "release-2", {"moj": "dfe"}, new_secret)
        # The spine's binding moved: an upload under the old secret is refused when its
        # header arrives (before any byte is stored), naming the spine and key rotation.
        capsys.readouterr()
        stale = release(
            unit, "release-stale", {"dfe": "dfe"}, old_secret, submitted=ExitCode.INCOMPATIBLE
        )
        refusal = capsys.readouterr().err
    assert second is not None and stale is None
    assert "not the one spine 'people' is bound to" in refusal and "key rotation" in refusal

    def person_keys(keys: dict[str, str], department: str) -> dict[str, set[str]]:
        by_person: dict[str, set[str]] = defaultdict(set)
        for record, key in keys.items():
            by_person[truth[(department, record)]].add(key)
        return by_person

    moj_one = person_keys(first["moj"], "moj")
    moj_two = person_keys(second["moj"], "dfe")
    returning = sorted(set(moj_one) & set(moj_two))
    assert len(returning) >= 50
    kept = sum(moj_one[person] == moj_two[person] for person in returning)
    assert kept / len(returning) >= 0.98, (kept, len(returning))

    # Retention (--keep-runs 1): release 2's run pruned release 1's encodings itself when it
    # completed; people and keys stay. `spine prune` then has nothing left to remove.
    capsys.readouterr()
    assert main(["spine", "show", "people", *operator_dir, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["records"] == len(second["moj"]) and shown["people"] >= len(moj_one)
    assert main(["spine", "prune", "people", *operator_dir, "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert (pruned["records_removed"], pruned["records_kept"]) == (0, len(second["moj"]))
    (pruned_entry,) = [
        json.loads(line)
        for line in (lu / "audit.jsonl").read_text(encoding="utf-8").splitlines()
        if line and json.loads(line)["event"] == "spine_pruned"
    ]
    assert pruned_entry["details"]["records_removed"] == len(first["moj"]) + len(first["dfe"])

    with serving(spine.config, timeout=10) as unit:
        audit_verified(unit, tmp_path / "auditor", capsys)
    events = [
        json.loads(line)["event"]
        for line in (lu / "audit.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    ]
    assert events.count("spine_rotated") == 1 and events.count("spine_pruned") == 1

"""The command line's reports: --json everywhere, encode's refusals and counts, the example
LU config, certs init's next steps, progress bars, JSON logs and plain-word refusals."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import pytest

from bloomlink import cli
from bloomlink.commands import _explain, _output, project, serve
from bloomlink.exit_codes import ExitCode
from linkage_unit.server import ServerConfig, create_server, load_config
from party.manifest import SIGNING_KEY_ENV_VAR, create_party_signing_key, read_manifest
from protocol.messages import PartyStatus, ProjectStatus, RunState, UploadState
from protocol.vocabulary import CheckAspect
from tests.bloomlink.test_cli import ROWS, write_extract

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def encode_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    key = tmp_path / "signing.pem"
    create_party_signing_key(key)
    monkeypatch.setenv(SIGNING_KEY_ENV_VAR, str(key))
    assert cli.main(["keygen", "--out", str(tmp_path / "s.key")]) == 0
    rows = [[f"MJ-{i:06d}", *row[1:]] for i, row in enumerate(ROWS * 40)]
    extract = write_extract(tmp_path / "moj.csv", rows)
    return ["encode", str(extract), "--project", "demo", "--layout", "moj", "--party", "moj",
            "--secret-file", str(tmp_path / "s.key"), "--out", str(tmp_path / "moj.clk")]  # fmt: skip


def one_json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out
    record = json.loads(out)
    assert isinstance(record, dict)
    return record


def test_encode_json_has_counts_fill_rates_and_the_scan(
    encode_args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capsys.readouterr()
    assert cli.main([*encode_args, "--json"]) == ExitCode.OK
    record = one_json(capsys)
    assert record["rows_read"] == record["records_encoded"] == 120
    fields = {item["field"]: item for item in record["fields"]}
    # ROWS: the third person's date (1900-01-01 placeholder), sex and postcode are missing.
    assert fields["date_of_birth"]["missing"] == 40
    assert fields["forename"]["fill_rate"] == 1.0 and fields["postcode"]["missing"] == 40
    assert record["leak_scan"] == {
        "clean": True,
        "strings_checked": record["leak_scan"]["strings_checked"],
        "patterns_checked": record["leak_scan"]["patterns_checked"],
        "rows_sampled": 120,
        "unkeyed_check": True,
    }
    manifest = read_manifest(tmp_path / "moj.clk.manifest.json").manifest
    assert manifest.unkeyed_check and manifest.rows_read == 120
    assert {item.field: item.missing for item in manifest.field_counts}["postcode"] == 40
    assert record["manifest_sha256"] == manifest.sha256
    for value in ("Theodora", "Featherstonehaugh", "SW1A"):
        assert value not in json.dumps(record)


def test_encode_text_shows_fill_rates_and_no_bar_off_a_terminal(
    encode_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli.main(encode_args) == ExitCode.OK
    captured = capsys.readouterr()
    assert "postcode" in captured.out and "filled  66.67%" in captured.out
    assert "known-key encoding" in captured.out
    assert "%|" not in captured.err and "encode:" not in captured.err  # quiet: not a terminal


def test_encode_refuses_to_replace_its_outputs_without_force(
    encode_args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(encode_args) == ExitCode.OK
    before = {name: (tmp_path / name).read_bytes() for name in
              ("moj.clk", "moj.clk.positions.csv", "moj.clk.manifest.json")}  # fmt: skip
    capsys.readouterr()
    assert cli.main(encode_args) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "moj.clk.positions.csv" in err
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert cli.main([*encode_args, "--force"]) == ExitCode.OK
    assert (tmp_path / "moj.clk.positions.csv").read_bytes() != before["moj.clk.positions.csv"]


def test_encode_max_bad_rows_from_the_command_line(
    encode_args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = [[f"MJ-{i:06d}", *ROWS[i % 2][1:]] for i in range(100)]
    rows[5][3] = "1985-07-13"  # not %d/%m/%Y
    write_extract(tmp_path / "moj.csv", rows)
    capsys.readouterr()
    assert cli.main([*encode_args, "--on-bad-row", "skip", "--max-bad-rows", "0"]) == (
        ExitCode.INPUT
    )
    err = capsys.readouterr().err
    assert "1 of 100 rows read were unusable" in err and "1985-07-13" not in err
    assert not (tmp_path / "moj.clk").exists()
    assert cli.main([*encode_args, "--on-bad-row", "skip", "--max-bad-rows", "1%", "--json"]) == 0
    assert one_json(capsys)["rows_skipped"] == 1
    assert cli.main([*encode_args, "--max-bad-rows", "lots"]) == ExitCode.USAGE


@pytest.mark.parametrize(
    ("argv", "keys"),
    [
        (["schema", "check", "--json"], {"fingerprint", "fields", "clk_bits", "hardening"}),
        (["keygen", "--json", "--out", "{dir}/new.key"], {"kind", "path", "bits"}),
        (["keygen", "--signing", "--json", "--out", "{dir}/sign.pem"],
         {"kind", "private_key", "public_key", "public_key_fingerprint"}),
        (["certs", "init", "--dir", "{dir}/pki", "--parties", "moj,dfe", "--json"],
         {"directory", "ca_certificate", "linkage_unit", "operator", "parties", "auditor"}),
    ],
)  # fmt: skip
def test_local_commands_print_one_json_object(
    argv: list[str], keys: set[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli.main([item.format(dir=tmp_path) for item in argv]) == ExitCode.OK
    record = one_json(capsys)
    assert keys <= set(record)
    if argv[0] == "keygen" and "--signing" not in argv:
        secret = (tmp_path / "new.key").read_text().split()[1]
        assert secret not in json.dumps(record)


def test_scan_json_alone_prints_the_report(
    encode_args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(encode_args) == ExitCode.OK
    capsys.readouterr()
    code = cli.main(["scan", "--encoded", str(tmp_path / "moj.clk"), "--extract",
                     str(tmp_path / "moj.csv"), "--layout", "moj", "--json"])  # fmt: skip
    assert code == ExitCode.OK
    record = one_json(capsys)
    assert record["clean"] is True and record["unkeyed_check"] is True


def test_certs_init_prints_the_next_commands_with_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    directory = tmp_path / "pki"
    assert cli.main(["certs", "init", "--dir", str(directory), "--parties", "moj,dfe",
                     "--auditor"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for name in ("ca.pem", "linkage-unit.pem", "linkage-unit.key", "operator.pem",
                 "party-moj.key", "party-dfe.pem", "auditor.pem"):  # fmt: skip
        assert str(directory / name) in out, name
        assert (directory / name).is_file(), name
    assert "bloomlink serve --config lu.toml" in out
    assert f"bloomlink health --target localhost:50051 --ca {directory / 'ca.pem'}" in out
    assert "bloomlink project create PROJECT --parties moj,dfe" in out


def test_the_example_config_is_shipped_documented_and_accepted_as_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    capsys.readouterr()
    assert cli.main(["serve", "--example-config"]) == 0
    printed = capsys.readouterr().out
    assert printed == (REPOSITORY / "lu.example.toml").read_text(encoding="utf-8")
    assert printed == serve.example_config()
    # Every setting is documented (set or commented out with its default).
    documented = {
        line.lstrip("# ").split(" = ")[0] for line in printed.splitlines() if " = " in line
    } | {line.lstrip("# [").rstrip("]") for line in printed.splitlines() if "[party_keys]" in line}
    settings = {item.name for item in dataclasses.fields(ServerConfig)} - {"extra_options"}
    assert settings - documented == set()
    # As it is, beside certs init --dir pki: it loads, and a server starts from it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lu.toml").write_text(printed, encoding="utf-8")
    assert cli.main(["certs", "init", "--dir", "pki", "--parties", "moj,dfe"]) == 0
    config = load_config(tmp_path / "lu.toml")
    assert config.listen == "127.0.0.1:50051" and config.data_dir == Path("lu-data")
    server = create_server(dataclasses.replace(config, listen="127.0.0.1:0"))
    try:
        assert server.start() > 0
    finally:
        server.stop(0)


def test_a_progress_bar_has_total_percentage_and_eta_in_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = _output.progress_bar("encode", total=2048, unit="B", file=stream)
    bar.update(1024)
    bar.close()
    text = stream.getvalue()
    assert "encode:  50%" in text and "1.00k/2.00k" in text and "<" in text  # elapsed<ETA
    quiet = io.StringIO()
    silent = _output.progress_bar("encode", total=10, file=quiet)
    silent.update(5)
    silent.close()
    assert quiet.getvalue() == ""


def test_json_logs_to_a_file(tmp_path: Path) -> None:
    log_file = tmp_path / "lu.log"
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        _output.configure_logging(verbose=False, log_format="json", log_file=log_file)
        logging.getLogger("bloomlink.test").info("run finished run_id=%s", "r1")
    finally:
        for handler in list(root.handlers):
            if handler not in before[0]:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(before[1])
    entry = json.loads(log_file.read_text(encoding="utf-8").splitlines()[-1])
    assert entry["message"] == "run finished run_id=r1" and entry["level"] == "INFO"
    assert entry["logger"] == "bloomlink.test" and entry["time"].endswith("+00:00")
    assert oct(log_file.stat().st_mode & 0o777) == "0o640"


def test_serve_takes_log_flags(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--log-format", "json", "--log-file", str(tmp_path / "x.log"), "--data-dir", "d"]
    )
    assert args.log_format == "json" and args.log_file == tmp_path / "x.log"


def test_a_refused_run_is_explained_in_plain_words() -> None:
    status = ProjectStatus(
        project_id="p1",
        parties=(
            PartyStatus(party_id="moj", upload_state=UploadState.COMPLETE),
            PartyStatus(party_id="schools", upload_state=UploadState.COMPLETE),
        ),
        run_state=RunState.REFUSED,
        schema_fingerprint=bytes(32),
        settings_fingerprint="ab" * 32,
        check_party_id="schools",
        check_aspect="kcv",
    )
    line = project.describe(status)
    assert "checks refused: party schools, kcv" in line
    assert "a different linkage secret?" in line
    assert project.status_record(status)["refused"]["explanation"].startswith("party schools")


def test_every_check_aspect_has_plain_words_and_an_unknown_one_none() -> None:
    """A new aspect (the linkage unit's vocabulary) cannot ship without its explanation."""
    assert set(_explain._PLAIN_WORDS) == set(CheckAspect)
    for aspect in CheckAspect:
        assert _explain.explain_aspect(aspect, "dfe").startswith("party dfe ")
    assert _explain.explain_aspect("from_a_newer_lu", "dfe") == ""
    assert _explain.explain_aspect(None, None) == ""


def test_a_compatibility_error_prints_with_plain_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from protocol.errors import CompatibilityError

    def handler(args: object) -> int:
        raise CompatibilityError("key check values differ", party="dfe", aspect="kcv")

    monkeypatch.setattr("bloomlink.commands.keygen.run", handler)
    assert cli.main(["keygen", "--out", "never"]) == ExitCode.INCOMPATIBLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "party dfe encoded under a different key" in err and "linkage secret?" in err

"""The command line: documented exit codes, one-line errors, and no secret or record value in
any output of keygen and encode."""

from __future__ import annotations

import argparse
import csv
import logging
import stat
from pathlib import Path

import numpy as np
import pytest

from bloomlink import cli
from bloomlink.exit_codes import EXIT_CODE_HELP, ExitCode, exit_code_for
from party.manifest import SIGNING_KEY_ENV_VAR, create_party_signing_key
from protocol import errors
from protocol.secret import SECRET_ENV_VAR
from protocol.signing import create_signing_key, public_key_pem
from tests.service_helpers import write_clk_file

HEADER = ["person_id", "forename", "surname", "date_of_birth", "gender", "postcode"]
ROWS = [
    ["MJ-000001", "Theodora", "Featherstonehaugh", "29/02/2000", "Female", "SW1A 1AA"],
    ["MJ-000002", "Bartholomew", "Okonkwo-Whitfield", "13/07/1985", "Male", "EH1 1YZ"],
    ["MJ-000003", "Siobhán", "Ó Súilleabháin", "01/01/1900", "Unknown", "NULL"],
]
# Values (raw and normalised) that must never appear in any output.
SENSITIVE = [
    "Theodora",
    "theodora",
    "Featherstonehaugh",
    "featherstonehaugh",
    "Bartholomew",
    "bartholomew",
    "Okonkwo",
    "okonkwo",
    "whitfield",
    "Siobh",
    "siobhan",
    "suilleabhain",
    "29/02/2000",
    "2000-02-29",
    "1985-07-13",
    "SW1A",
    "EH1 1YZ",
]


@pytest.fixture(autouse=True)
def party_signing_key(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """encode signs a manifest, so every run here has a real party signing key."""
    path = tmp_path_factory.mktemp("signing") / "moj-signing.pem"
    create_party_signing_key(path)
    monkeypatch.setenv(SIGNING_KEY_ENV_VAR, str(path))
    return path


def write_extract(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def secret_hex(path: Path) -> str:
    return path.read_text(encoding="ascii").split()[1]


def test_every_exit_code_has_help_and_appears_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(EXIT_CODE_HELP) == set(ExitCode)
    assert all(text.strip() for text in EXIT_CODE_HELP.values())
    assert cli.main(["--help"]) == ExitCode.OK
    help_text = capsys.readouterr().out
    for code, text in EXIT_CODE_HELP.items():
        assert f"{int(code):>3}  {text}" in help_text


def _every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _every_parser(child)
    return found


def test_every_command_and_action_renders_its_help() -> None:
    """argparse expands ``%`` in help text, so a literal one (``1%``) breaks ``--help`` only
    when someone asks for it; render every parser's help to find it first."""
    parsers = _every_parser(cli.build_parser())
    assert len(parsers) > 20  # the commands and their actions, not just the top level
    for parser in parsers:
        assert parser.format_help().startswith("usage:"), parser.prog


def _concrete_errors() -> list[type[errors.BloomlinkError]]:
    return [
        getattr(errors, name)
        for name in errors.__all__
        if issubclass(getattr(errors, name), errors.BloomlinkError)
    ]


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        (errors.SchemaError, ExitCode.CONFIGURATION),
        (errors.MappingError, ExitCode.CONFIGURATION),
        (errors.SecretError, ExitCode.CONFIGURATION),
        (errors.ConfigurationError, ExitCode.CONFIGURATION),
        (errors.InUseError, ExitCode.IN_USE),
        (errors.ExtractError, ExitCode.INPUT),
        (errors.RecordError, ExitCode.INPUT),
        (errors.ValueRejectedError, ExitCode.INPUT),
        (errors.ClkFileError, ExitCode.ENCODED_FILE),
        (errors.CompatibilityError, ExitCode.INCOMPATIBLE),
        (errors.UnavailableError, ExitCode.UNAVAILABLE),
        (errors.NotFoundError, ExitCode.SERVICE),
        (errors.InvalidRequestError, ExitCode.SERVICE),
        (errors.MatchingError, ExitCode.MATCHING),
        (errors.AuditError, ExitCode.AUDIT_FAILED),
        (errors.InvariantError, ExitCode.INTERNAL),
    ],
)
def test_each_error_class_maps_to_its_code(
    error_type: type[errors.BloomlinkError], code: ExitCode
) -> None:
    assert exit_code_for(error_type.__new__(error_type)) == code


def test_every_error_class_has_a_documented_code() -> None:
    for error_type in _concrete_errors():
        code = exit_code_for(error_type.__new__(error_type))
        assert code in EXIT_CODE_HELP
        if error_type not in (errors.BloomlinkError, errors.InvariantError):
            assert code != ExitCode.INTERNAL, error_type


def _with_command(
    monkeypatch: pytest.MonkeyPatch, handler: object, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    # The keygen command's handler is replaced; the parser picks it up when main builds it.
    monkeypatch.setattr("bloomlink.commands.keygen.run", handler)
    code = cli.main(["keygen", "--out", "never-written"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_our_errors_print_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise errors.RecordError("value is not a date", row=4, field="date_of_birth")

    code, out, err = _with_command(monkeypatch, handler, capsys)
    assert code == ExitCode.INPUT
    assert out == ""
    assert err == "error: RecordError: row 4, field 'date_of_birth': value is not a date\n"


def test_unexpected_error_prints_one_line_without_its_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise ValueError("Featherstonehaugh 29/02/2000")

    code, out, err = _with_command(monkeypatch, handler, capsys)
    assert code == ExitCode.INTERNAL
    assert err.count("\n") == 1 and err.startswith("error: ValueError: unexpected failure")
    assert "Featherstonehaugh" not in out + err and "29/02" not in out + err


def test_interrupt_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    code, _, err = _with_command(monkeypatch, handler, capsys)
    assert code == ExitCode.INTERRUPTED
    assert err.count("\n") == 1 and err.startswith("error: KeyboardInterrupt: ")


def test_usage_errors_exit_with_usage_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["encode"]) == ExitCode.USAGE
    assert cli.main(["no-such-command"]) == ExitCode.USAGE
    capsys.readouterr()


def test_keygen_creates_owner_only_file_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.key"
    assert cli.main(["keygen", "--out", str(path)]) == ExitCode.OK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert secret_hex(path) not in out
    before = path.read_bytes()
    assert cli.main(["keygen", "--out", str(path)]) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: SecretError: ")
    assert path.read_bytes() == before


def test_full_encode_run_never_shows_the_secret_or_a_value(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = tmp_path / "s.key"
    assert cli.main(["keygen", "--out", str(key)]) == ExitCode.OK
    extract = write_extract(tmp_path / "moj.csv", ROWS)
    out_path = tmp_path / "moj.clk"
    code = cli.main(
        [
            "--verbose",
            "encode",
            str(extract),
            "--project",
            "demo",
            "--layout",
            "moj",
            "--party",
            "moj",
            "--secret-file",
            str(key),
            "--out",
            str(out_path),
        ]
    )
    assert code == ExitCode.OK
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert "encoded 3 of 3 rows" in captured.out
    hex_secret = secret_hex(key)
    assert hex_secret not in everything and hex_secret.upper() not in everything
    for value in SENSITIVE:
        assert value not in everything, value
    written = out_path.read_bytes() + (tmp_path / "moj.clk.positions.csv").read_bytes()
    assert bytes.fromhex(hex_secret) not in written
    assert b"Featherstonehaugh" not in written and b"featherstonehaugh" not in written


def test_failed_encode_names_row_and_field_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = tmp_path / "s.key"
    cli.main(["keygen", "--out", str(key)])
    rows = [row[:] for row in ROWS]
    rows[1][3] = "31/02/1985"
    extract = write_extract(tmp_path / "moj.csv", rows)
    code = cli.main(
        ["encode", str(extract), "--project", "demo", "--layout", "moj", "--party", "moj"]
        + ["--secret-file", str(key), "--out", str(tmp_path / "moj.clk")]
    )
    assert code == ExitCode.INPUT
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: RecordError: row 2, field 'date_of_birth': value is not a date in the format "
        "%d/%m/%Y"
    ]
    assert "31/02/1985" not in err + caplog.text
    assert secret_hex(key) not in err + caplog.text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["moj.csv", "s.key"]


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("missing", "does not exist"),
        ("readable", "readable by group or others"),
        ("short", "at least 256 are required"),
        ("malformed", "not a bloomlink secret file"),
    ],
)
def test_encode_refuses_unusable_secret_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, fragment: str
) -> None:
    key = tmp_path / "s.key"
    if setup != "missing":
        text = {
            "readable": "bloomlink-linkage-secret-v1\n" + "ab" * 32 + "\n",
            "short": "bloomlink-linkage-secret-v1\n" + "ab" * 16 + "\n",
            "malformed": "ab" * 32 + "\n",
        }[setup]
        key.write_text(text, encoding="ascii")
        key.chmod(0o644 if setup == "readable" else 0o600)
    extract = write_extract(tmp_path / "moj.csv", ROWS)
    code = cli.main(
        ["encode", str(extract), "--project", "demo", "--layout", "moj", "--party", "moj"]
        + ["--secret-file", str(key), "--out", str(tmp_path / "moj.clk")]
    )
    assert code == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: SecretError: ")
    assert fragment in err and "abab" not in err
    assert not (tmp_path / "moj.clk").exists()


def test_encode_reads_the_secret_file_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "s.key"
    cli.main(["keygen", "--out", str(key)])
    monkeypatch.setenv(SECRET_ENV_VAR, str(key))
    extract = write_extract(tmp_path / "moj.csv", ROWS)
    code = cli.main(
        ["encode", str(extract), "--project", "demo", "--layout", "moj", "--party", "moj"]
        + ["--out", str(tmp_path / "moj.clk"), "--workers", "1"]
    )
    assert code == ExitCode.OK
    assert (tmp_path / "moj.clk.positions.csv").is_file()
    monkeypatch.delenv(SECRET_ENV_VAR)
    code = cli.main(
        ["encode", str(extract), "--project", "demo", "--layout", "moj", "--party", "moj"]
        + ["--out", str(tmp_path / "again.clk")]
    )
    assert code == ExitCode.CONFIGURATION
    assert SECRET_ENV_VAR in capsys.readouterr().err


def test_encode_configuration_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "s.key"
    cli.main(["keygen", "--out", str(key)])
    extract = write_extract(tmp_path / "moj.csv", ROWS)
    base = [
        "encode",
        str(extract),
        "--party",
        "moj",
        "--secret-file",
        str(key),
        "--out",
        str(tmp_path / "o.clk"),
    ]
    capsys.readouterr()
    cases = [
        (["--project", "Bad Project", "--layout", "moj", "--party", "moj"], "ConfigurationError"),
        (["--project", "demo", "--layout", "nosuch"], "MappingError"),
        (["--project", "demo", "--layout", "dfe"], "ExtractError"),
        (["--project", "demo", "--layout", "moj", "--schema", str(tmp_path / "x.toml")], "SchemaError"),
        (["--project", "demo", "--layout", "moj", "--workers", "0"], "ConfigurationError"),
    ]  # fmt: skip
    for extra, error_name in cases:
        code = cli.main(base + extra)
        err = capsys.readouterr().err
        assert code in (ExitCode.CONFIGURATION, ExitCode.INPUT), extra
        assert err.count("\n") == 1 and err.startswith(f"error: {error_name}: "), err


def test_schema_check_describes_groups_and_their_hardening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from protocol.schema import default_schema, load_schema

    root = Path(__file__).resolve().parents[2]
    assert cli.main(["schema", "check"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out.startswith(default_schema().fingerprint.hex())
    assert "2560-bit encodings of 3 groups" in out
    assert "name 1024 bits, hardening nonlinear-diffusion:width=3,output_bits=1024" in out
    grouped = root / "benchmarks/schemas/grouped_diffusion_w3.toml"
    assert cli.main(["schema", "check", "--schema", str(grouped)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out.startswith(load_schema(grouped).fingerprint.hex())
    assert "1280-bit encodings of 3 groups" in out
    assert "birth 512 bits, hardening diffusion:width=3,output_bits=512" in out


def test_keygen_signing_says_where_the_public_key_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator must register the public key or every upload is refused: say where."""
    path = tmp_path / "moj-signing.pem"
    assert cli.main(["keygen", "--signing", "--out", str(path)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "[party_keys]" in out and "LU config" in out
    assert "moj-signing.pem.pub" in out


def test_scan_of_a_cut_off_file_is_a_bad_file_not_a_leak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupted copy is a damaged encoded file (exit 5), not evidence of a leak (9)."""
    path = write_clk_file(tmp_path / "moj.clk", np.zeros((50, 4), dtype=np.uint64), project_id="p1")
    path.write_bytes(path.read_bytes()[:-100])
    strings = tmp_path / "strings.txt"
    strings.write_text("Thornton\nMargaret\n", encoding="utf-8")
    code = cli.main(["scan", "--encoded", str(path), "--sensitive-strings", str(strings)])
    assert code == ExitCode.ENCODED_FILE
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "truncated" in captured.err
    assert "LEAK" not in captured.out + captured.err


def test_audit_verify_with_a_missing_file_is_a_wrong_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing was verified, so it is not "audit verification found a problem" (9): the
    path given does not exist (3), and the message names it."""
    key = tmp_path / "lu-audit-key.pem"
    key.write_bytes(public_key_pem(create_signing_key(tmp_path / "lu-audit.key")))
    missing = tmp_path / "audit" / "audit.jsonl"
    verify = ["audit", "verify", "--public-key", str(key)]
    assert cli.main([*verify, "--log", str(missing)]) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{missing}: cannot read audit log" in err
    missing_head = tmp_path / "old.head"
    code = cli.main([*verify, "--log", str(missing), "--head", str(missing_head)])
    assert code == ExitCode.CONFIGURATION
    assert f"{missing_head}: cannot read signed head" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("ca", "cert", "key", "says"),
    [
        ("ca.pem", "operator.pem", "party-moj.key", "is not the private key of"),
        ("ca.pem", "operator.pem", "operator.pem", "is not an unencrypted PEM private key"),
        ("ca.pem", "operator.key", "operator.key", "is not a PEM certificate"),
        ("ca.key", "operator.pem", "operator.key", "is not a PEM CA certificate"),
    ],
)
def test_a_key_that_is_not_the_certificates_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ca: str, cert: str, key: str, says: str
) -> None:
    """A swapped --key used to surface as 'unavailable, retry later' (exit 10) after gRPC's
    handshake failed; it is the caller's setup (exit 3), named before any connection."""
    pki = tmp_path / "pki"
    assert cli.main(["certs", "init", "--dir", str(pki), "--parties", "moj"]) == ExitCode.OK
    capsys.readouterr()
    # Nothing listens on the target: the files are refused before any connection is tried.
    code = cli.main(["health", "--target", "127.0.0.1:9", "--timeout", "2",
                     "--ca", str(pki / ca), "--cert", str(pki / cert), "--key", str(pki / key)])  # fmt: skip
    assert code == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "BEGIN" not in err


def test_serve_refuses_a_key_that_is_not_its_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    pki = tmp_path / "pki"
    assert cli.main(["certs", "init", "--dir", str(pki), "--parties", "moj"]) == ExitCode.OK
    config = tmp_path / "lu.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "lu"}"\nlisten = "127.0.0.1:0"\n'
        f'ca_certificate = "{pki / "ca.pem"}"\ncertificate = "{pki / "linkage-unit.pem"}"\n'
        f'private_key = "{pki / "party-moj.key"}"\n',
        encoding="utf-8",
    )
    capsys.readouterr()
    assert cli.main(["serve", "--config", str(config)]) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert "party-moj.key is not the private key of" in err and "linkage-unit.pem" in err
    assert "linkage unit stopped" not in err + caplog.text  # it never started


def test_schema_init_writes_the_shipped_schema_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The walkthroughs pass --schema schema.toml: a newcomer gets that file from the CLI."""
    from protocol.schema import default_schema, load_schema

    out = tmp_path / "schema.toml"
    assert cli.main(["schema", "init", "--out", str(out)]) == ExitCode.OK
    assert load_schema(out).fingerprint == default_schema().fingerprint
    before = out.read_bytes()
    capsys.readouterr()
    assert cli.main(["schema", "init", "--out", str(out)]) == ExitCode.CONFIGURATION
    assert "does not replace" in capsys.readouterr().err and out.read_bytes() == before


@pytest.mark.parametrize(
    "form", ["hex line", "whole file", "base64", "base64 leading slash", "env", "env base64"]
)
def test_the_secret_given_instead_of_its_file_is_never_echoed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    form: str,
) -> None:
    """`--secret-file <the secret>` was answered with `error: ...: <the secret>: secret file
    does not exist`: the secret on the terminal and in every log of stderr.

    The base64 forms are fixed: a fresh random secret each run made this fail about once in
    130 runs (base64 that starts with '/'), so the case is pinned here instead."""
    hex_line = "5b0e6f8a2d4c1937e8a0b6d2f4c81a3e9d7b5f1c2a4e6089b3d5f7e1c3a5b709"
    given = {
        "hex line": hex_line,
        "whole file": f"bloomlink-linkage-secret-v1\n{hex_line}\n",
        "base64": "TgdAhWK+24tgzgXB3s/jrRa3IjCWfeAfZAt+Rym0n84=",
        "base64 leading slash": "/yzLa6Qj01a9VJ7Uv7dulpdqDc3gWgmZahzbn4NCLsQ=",
        "env": hex_line,
        "env base64": "/yzLa6Qj01a9VJ7Uv7dulpdqDc3gWgmZahzbn4NCLsQ=",
    }[form]
    extract = write_extract(tmp_path / "moj.csv", ROWS)
    argv = ["encode", str(extract), "--project", "demo", "--layout", "moj", "--party", "moj"]
    argv += ["--out", str(tmp_path / "moj.clk")]
    if form.startswith("env"):
        monkeypatch.setenv(SECRET_ENV_VAR, given)
    else:
        argv += ["--secret-file", given]
    capsys.readouterr()
    assert cli.main(argv) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the secret" in err and "bloomlink keygen" in err
    for fragment in (hex_line[:16], given.strip().strip("/")[:16]):
        assert fragment not in err


def test_an_output_path_that_is_a_directory_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fetch --output DIR` (or any output) ended in 'IsADirectoryError: unexpected failure
    (please report it)', exit 1: a path the person gave, so say which and why (exit 3)."""
    path = write_clk_file(tmp_path / "moj.clk", np.zeros((5, 4), dtype=np.uint64), project_id="p1")
    strings = tmp_path / "strings.txt"
    strings.write_text("Thornton\n", encoding="utf-8")
    folder = tmp_path / "reports"
    folder.mkdir()
    argv = ["scan", "--encoded", str(path), "--sensitive-strings", str(strings)]
    capsys.readouterr()
    assert cli.main([*argv, "--json", str(folder)]) == ExitCode.CONFIGURATION
    err = capsys.readouterr().err
    assert (
        err
        == f"error: IsADirectoryError: cannot use {folder}: it is a directory; give a file path\n"
    )
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.glob(".*partial")] == []

"""The server config file: the parties' registered manifest keys (``[party_keys]``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage_unit.server import create_server, load_config
from protocol.errors import ConfigurationError


def test_party_keys_table_is_read_as_paths(tmp_path: Path) -> None:
    config_path = tmp_path / "lu.toml"
    config_path.write_text(
        f'data_dir = "{tmp_path / "lu"}"\ninsecure = true\nlisten = "127.0.0.1:0"\n'
        '[party_keys]\nmoj = "keys/moj.pub"\ndfe = "keys/dfe.pub"\n',
        encoding="utf-8",
    )
    config = load_config(config_path)
    assert config.party_keys == {"moj": Path("keys/moj.pub"), "dfe": Path("keys/dfe.pub")}


def test_an_unreadable_party_key_stops_the_server_being_built(tmp_path: Path) -> None:
    config = load_config(
        None,
        data_dir=str(tmp_path / "lu"),
        insecure=True,
        listen="127.0.0.1:0",
        party_keys={"moj": str(tmp_path / "missing.pub")},
    )
    with pytest.raises(ConfigurationError, match="cannot read public key"):
        create_server(config)


def test_serve_party_key_flag_must_name_a_party_and_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bloomlink import cli
    from bloomlink.exit_codes import ExitCode

    argv = ["serve", "--data-dir", str(tmp_path / "lu"), "--insecure", "--party-key", "moj"]
    assert cli.main(argv) == ExitCode.CONFIGURATION
    assert "--party-key wants PARTY=PEM" in capsys.readouterr().err


def test_serve_party_key_flag_reaches_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bloomlink import cli
    from bloomlink.exit_codes import ExitCode

    missing = tmp_path / "moj.pub"
    argv = ["serve", "--data-dir", str(tmp_path / "lu"), "--listen", "127.0.0.1:0"]
    argv += ["--insecure", "--party-key", f"moj={missing}"]
    # The key is loaded before the server binds, so a missing file fails the start.
    assert cli.main(argv) == ExitCode.CONFIGURATION
    assert "cannot read public key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "flag", "on"),
    [("", None, True), ("group_blocking = false\n", None, False),
     ("group_blocking = false\n", True, True), ("", False, False)],
)  # fmt: skip
def test_group_blocking_is_on_unless_the_config_or_the_flag_turns_it_off(
    tmp_path: Path, toml: str, flag: bool | None, on: bool
) -> None:
    import argparse

    from bloomlink.commands.serve import add_arguments

    config_path = tmp_path / "lu.toml"
    config_path.write_text(f'data_dir = "{tmp_path / "lu"}"\ninsecure = true\n{toml}')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [] if flag is None else ["--group-blocking" if flag else "--no-group-blocking"]
    args = parser.parse_args(argv)
    config = load_config(config_path, group_blocking=args.group_blocking)
    assert config.group_blocking is on

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

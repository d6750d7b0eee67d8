"""docs/your-own-data.md, followed literally: every file it shows is written as shown and
every command runs in order; the one liberty is the port (the page's linkage unit listens on
50051; here it binds 127.0.0.1:0 and later commands use the port it got)."""

from __future__ import annotations

import csv
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from bloomlink.cli import main
from linkage_unit.server import LinkageUnitServer, create_server, load_config

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "docs" / "your-own-data.md"
BLOCK = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    return [(found["info"].strip(), found["body"]) for found in BLOCK.finditer(PAGE.read_text())]


def test_the_page_shows_files_and_commands() -> None:
    kinds = [info.split()[0] for info, _ in _blocks()]
    assert kinds.count("sh") >= 4 and sum("file=" in info for info, _ in _blocks()) == 4


def test_a_new_user_links_semicolon_files_with_two_digit_years(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    servers: list[LinkageUnitServer] = []
    port = "50051"
    try:
        for info, body in _blocks():
            name = dict(item.split("=", 1) for item in info.split()[1:] if "=" in item).get("file")
            if name:
                (tmp_path / name).write_text(body, encoding="utf-8")
                continue
            assert info == "sh", info
            for line in body.splitlines():
                line = line.strip().replace("localhost:50051", f"localhost:{port}")
                words = shlex.split(line)
                assert words[0] == "bloomlink", line
                if words[-1] == "&":  # the linkage unit, left running
                    assert words[1:3] == ["serve", "--config"], line
                    config = load_config(words[3])
                    server = create_server(dataclasses.replace(config, listen="127.0.0.1:0"))
                    servers.append(server)
                    port = str(server.start())
                    continue
                redirect = None
                if ">" in words:
                    redirect = Path(words[words.index(">") + 1])
                    words = words[: words.index(">")]
                capsys.readouterr()
                code = main(words[1:])
                captured = capsys.readouterr()
                assert code == 0, (line, captured.err)
                if redirect is not None:
                    redirect.write_text(captured.out, encoding="utf-8")
    finally:
        for server in servers:
            server.stop(0)

    def keys(path: str) -> dict[str, str]:
        with (tmp_path / path).open(encoding="utf-8", newline="") as handle:
            return {row["own_record_id"]: row["link_key"] for row in csv.DictReader(handle)}

    council, school = keys("council-keys.csv"), keys("school-keys.csv")
    assert len(council) == 5 and len(school) == 4
    pairs = re.findall(r"^\| (C-\d+) \| (S-\d+) \|", PAGE.read_text(), re.MULTILINE)
    assert len(pairs) == 3
    for council_id, school_id in pairs:
        assert council[council_id] == school[school_id], (council_id, school_id)
    linked = {council[council_id] for council_id, _ in pairs}
    alone = [council["C-0004"], council["C-0005"], school["S-12"]]
    assert len(set(alone)) == 3 and not set(alone) & linked

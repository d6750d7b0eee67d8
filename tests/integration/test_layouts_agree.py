"""Issue acceptance: two (three) departments with different layouts encode the same people to
bit-identical CLKs, through the real commands a data engineer runs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bloomlink.cli import main
from party.manifest import check_manifest_for_file, manifest_path_for
from party.positions_file import read_positions
from protocol.clk_file import read_clks

LAYOUTS = ("moj", "dfe", "hmpps")


@pytest.mark.integration
def test_uncorrupted_synth_layouts_give_identical_clks_per_person(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (
        main(
            [
                "synth",
                "--out",
                str(data),
                "--records",
                "1500",
                "--departments",
                ",".join(LAYOUTS),
                "--difficulty",
                "none",
                "--repeat-rate",
                "0.05",
                "--seed",
                "11",
            ]
        )
        == 0
    )
    assert main(["keygen", "--out", str(tmp_path / "secret.key")]) == 0
    assert main(["keygen", "--signing", "--out", str(tmp_path / "signing.pem")]) == 0
    clk_of: dict[tuple[str, str], bytes] = {}
    for layout in LAYOUTS:
        encoded = tmp_path / f"{layout}.clk"
        assert (
            main(
                [
                    "encode",
                    str(data / f"{layout}.csv"),
                    "--project",
                    "layouts",
                    "--layout",
                    layout,
                    "--secret-file",
                    str(tmp_path / "secret.key"),
                    "--out",
                    str(encoded),
                    "--party",
                    layout,
                    "--signing-key",
                    str(tmp_path / "signing.pem"),
                ]
            )
            == 0
        )
        _, clks = read_clks(encoded)
        # encode leak-scanned its own output and signed a manifest for exactly this payload
        assert check_manifest_for_file(encoded, manifest_path_for(encoded), party=layout)
        for _, record_id, position in read_positions(tmp_path / f"{layout}.clk.positions.csv"):
            clk_of[(layout, record_id)] = np.asarray(clks[position]).tobytes()
    by_person: dict[str, set[bytes]] = {}
    records_per_person: dict[str, int] = {}
    with (data / "truth.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_person.setdefault(row["person_id"], set()).add(
                clk_of[(row["department"], row["record_id"])]
            )
            records_per_person[row["person_id"]] = records_per_person.get(row["person_id"], 0) + 1
    shared = [person for person, count in records_per_person.items() if count > 1]
    assert len(shared) > 500
    assert all(len(by_person[person]) == 1 for person in shared)
    # and different people almost never collide
    distinct = {next(iter(clks)) for clks in by_person.values()}
    assert len(distinct) > 0.99 * len(by_person)

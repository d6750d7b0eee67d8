"""A deduplicated party learns which of its own records are one person and nothing about
another party's data: the membership probe against ``link()`` with real encodings.

MoJ (deduplicated) submits two deliberately half-matching probes of one person: her name
right and her date of birth wrong, and her date of birth right and her name wrong. The two
are too unlike to be one person on their own; the person herself matches both. DfE's
extract differs between two worlds only in whether she is in it. If her record could join
the probes into one cluster, MoJ would see them share a link key exactly when she is in
DfE's extract. MoJ's partition of its own records must be the same in both worlds, and the
same as deduplicating its extract alone, at an operator's threshold and at the automatic one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bloomlink.synth import SynthConfig, generate
from linkage_unit.matching import MatchSettings, link
from protocol.schema import LinkageSchema, load_schema
from tests.adversarial.conftest import encode_rows

GROUPED = Path(__file__).resolve().parents[2] / "benchmarks" / "schemas" / "grouped_plain.toml"
PERSON = ("dfe-person", "Quillonwyth", "Zabrowskaya", "2003-03-17", "F", "SW1A 1AA")
# MoJ's layout: DD/MM/YYYY and sex in words.
NAME_RIGHT = ("moj-probe-name", "Quillonwyth", "Zabrowskaya", "02/11/1991", "Female", "SW1A 1AA")
DATE_RIGHT = ("moj-probe-date", "Maria", "Smith", "17/03/2003", "Female", "SW1A 1AA")


def encoded_worlds(
    directory: Path, schema: LinkageSchema | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """MoJ (filler with repeat users, then the two probes) and DfE (filler, with or without
    the person), encoded by the real recipe; each world's CLKs by party."""
    synth = generate(
        SynthConfig(
            departments=("moj", "dfe"), records=300, difficulty="low", repeat_rate=0.3,
            repeat_departments=("moj",), seed=12,
        )
    )  # fmt: skip
    rows = {extract.name: list(extract.rows()) for extract in synth.departments}
    moj, _ = encode_rows(
        directory / "moj", "moj", [*rows["moj"], NAME_RIGHT, DATE_RIGHT], schema=schema
    )
    worlds = {}
    for world, extra in (("with", [PERSON]), ("without", [])):
        dfe, _ = encode_rows(directory / world, "dfe", [*rows["dfe"], *extra], schema=schema)
        worlds[world] = {
            party: np.array([np.frombuffer(clk, np.uint64) for clk in clks.values()])
            for party, clks in (("moj", moj), ("dfe", dfe))
        }
    # encode_rows keys CLKs by record id in file order: the probes are MoJ's last two rows.
    assert list(moj)[-2:] == [NAME_RIGHT[0], DATE_RIGHT[0]]
    return worlds


def partition(ids: np.ndarray) -> set[frozenset[int]]:
    """Which of a party's records share a cluster id (a link key): what it is shown."""
    groups: dict[int, set[int]] = {}
    for position, cluster in enumerate(ids.tolist()):
        groups.setdefault(cluster, set()).add(position)
    return {frozenset(group) for group in groups.values()}


@pytest.mark.parametrize("threshold", [0.74, None], ids=["operator", "automatic"])
def test_moj_cannot_tell_from_its_own_keys_whether_its_probe_person_is_in_dfe(
    tmp_path: Path, threshold: float | None
) -> None:
    worlds = encoded_worlds(tmp_path)
    settings = MatchSettings(threshold=threshold, deduplicated=frozenset({"moj"}), blocking_seed=5)
    results = {world: link(clks, settings) for world, clks in worlds.items()}
    moj_records = len(worlds["with"]["moj"])
    name_right, date_right = moj_records - 2, moj_records - 1
    # MoJ's view, which of its records share a key, is the same with her and without her.
    seen = [partition(results[world].clusters["moj"]) for world in ("with", "without")]
    assert seen[0] == seen[1]
    assert not any({name_right, date_right} <= group for group in seen[0])
    # It is exactly what deduplicating MoJ's extract alone gives.
    alone = link({"moj": worlds["with"]["moj"]}, settings)
    assert partition(alone.clusters["moj"]) == seen[0]
    # She really is found in one world: she links to a probe (so DfE's and the operator's
    # view differ), to one probe only.
    with_person = results["with"].clusters
    person = with_person["dfe"][-1]
    probes = (name_right, date_right)
    assert sum(with_person["moj"][probe] == person for probe in probes) == 1


@pytest.mark.parametrize("threshold", [0.3, None], ids=["operator", "automatic"])
def test_with_the_model_moj_cannot_tell_either(tmp_path: Path, threshold: float | None) -> None:
    # A grouped encoding is scored by the Fellegi-Sunter model: MoJ's own pairs by a model of
    # its records alone (its own random pairs, candidate cut and training), so nothing DfE
    # uploads moves the probabilities that decide which of MoJ's records share a key.
    schema = load_schema(GROUPED)
    worlds = encoded_worlds(tmp_path, schema)
    settings = MatchSettings(threshold=threshold, deduplicated=frozenset({"moj"}), blocking_seed=5)
    results = {world: link(clks, settings, layout=schema.layout) for world, clks in worlds.items()}
    assert {result.threshold_method for result in results.values()} == {"fellegi-sunter"}
    moj_records = len(worlds["with"]["moj"])
    seen = [partition(results[world].clusters["moj"]) for world in ("with", "without")]
    assert seen[0] == seen[1]
    assert not any({moj_records - 2, moj_records - 1} <= group for group in seen[0])
    assert any(len(group) > 1 for group in seen[0])  # MoJ's repeat users are grouped
    alone = link({"moj": worlds["with"]["moj"]}, settings, layout=schema.layout)
    assert partition(alone.clusters["moj"]) == seen[0]

"""The unkeyed-encoding check through the real encoder run and the known-key re-encoder: an
extract encoded under the placeholder key is caught whatever the schema (v1, grouped,
salted, diffused, balanced, or with BLIP flipping bits differently each encode), and one
encoded under a real secret passes (missing groups, all zero on both sides, do not look like
agreement)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from party.encoder_run import encode_extract
from party.known_keys import KNOWN_KEY, known_key_reencoder
from party.leak_scan import scan_encoded_file
from party.mapping import shipped_mapping
from protocol.schema import LinkageSchema, default_schema, load_schema
from protocol.secret import LinkageSecret
from tests.party.test_encoder_run import person, write_csv

SCHEMAS = Path(__file__).resolve().parents[2] / "benchmarks" / "schemas"


def schema_named(name: str) -> LinkageSchema:
    return default_schema() if name == "default" else load_schema(SCHEMAS / name)


@pytest.mark.parametrize(
    "name",
    [
        "default",
        "grouped_salted.toml",
        "grouped_diffusion_w4.toml",
        "grouped_balance.toml",
        "grouped_blip_p1.toml",
        "grouped_diffusion_w3_blip_p02.toml",
    ],
)
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "placeholder-key"])
def test_the_placeholder_key_is_caught_and_a_real_key_passes(
    tmp_path: Path, name: str, keyed: bool
) -> None:
    schema = schema_named(name)
    rows = [person(index * 37 + 11) for index in range(240)]
    for index in range(0, 240, 5):
        rows[index][3] = ""  # no date of birth: the birth group is empty for these
    extract = write_csv(tmp_path / "moj.csv", rows)
    secret = LinkageSecret(bytes(range(1, 33)) if keyed else KNOWN_KEY)
    summary = encode_extract(
        extract_path=extract,
        mapping=shipped_mapping("moj"),
        schema=schema,
        secret=secret,
        project_id="demo",
        encoded_path=tmp_path / "moj.clk",
        positions_path=tmp_path / "moj.positions.csv",
    )
    reencoder = known_key_reencoder(
        encoded_path=summary.encoded_path,
        positions_path=summary.positions_path,
        extract_path=extract,
        mapping=shipped_mapping("moj"),
        schema=schema,
    )
    report = scan_encoded_file(
        summary.encoded_path,
        [],
        unkeyed_reencoder=reencoder,
        sample_size=200,
        rng=np.random.default_rng(1),
    )
    kinds = [finding.kind for finding in report.findings]
    assert kinds == ([] if keyed else ["unkeyed-encoding"])

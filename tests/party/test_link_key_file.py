"""The link-key join: the array join writes the bytes the row-by-row reference writes, and
refuses what it refuses with the same message, for any ids, order and mismatch."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from party.link_key_file import join_link_keys, reference_join_link_keys
from protocol.errors import ExtractError

# Ids as a department's extract has them, quoting cases included; no control characters
# (the encoder refuses those), but commas, quotes and spaces.
IDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=8)


def _positions_file(path: Path, rows: list[tuple[str, str]], *, bound: bool) -> Path:
    text = io.StringIO()
    if bound:
        text.write(f"# bloomlink-positions-v2 project=p1 payload_sha256={'0' * 64} records=1\n")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["record_id", "position"])
    writer.writerows(rows)
    path.write_text(text.getvalue(), encoding="utf-8")
    return path


def _outcome(join, positions_path: Path, positions, keys, out: Path) -> tuple[str, bytes | str]:  # type: ignore[no-untyped-def]
    try:
        count = join(positions_path, positions, keys, out)
    except ExtractError as error:
        return "refused", error.message
    return str(count), out.read_bytes()


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(IDS, max_size=30),
    seed=st.integers(0, 2**32 - 1),
    mismatch=st.sampled_from(
        ["none", "row-missing", "key-missing", "row-twice", "key-twice", "stranger", "not-a-number"]
    ),  # fmt: skip
    bound=st.booleans(),
)
def test_the_array_join_agrees_with_the_row_by_row_reference(
    ids: list[str], seed: int, mismatch: str, bound: bool
) -> None:
    rng = np.random.default_rng(seed)
    count = len(ids)
    position_of = rng.permutation(count).tolist()
    rows = [
        (record_id, str(position)) for record_id, position in zip(ids, position_of, strict=True)
    ]
    release = rng.permutation(count).tolist()
    keys = [f"{rng.integers(2**62):026d}"[-26:] for _ in range(count)]
    if mismatch == "row-missing" and rows:
        rows.pop(int(rng.integers(len(rows))))
    elif mismatch == "key-missing" and release:
        index = int(rng.integers(len(release)))
        release.pop(index)
        keys.pop(index)
    elif mismatch == "row-twice" and rows:
        rows.insert(int(rng.integers(len(rows) + 1)), rows[int(rng.integers(len(rows)))])
    elif mismatch == "key-twice" and release:
        index = int(rng.integers(len(release)))
        release.append(release[index])
        keys.append("z" * 26)  # the later key for a position wins, in both
    elif mismatch == "stranger":
        rows.append(("stranger", str(count + int(rng.integers(5)))))
    elif mismatch == "not-a-number" and rows:
        rows[int(rng.integers(len(rows)))] = ("x", "1.5")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        positions_path = _positions_file(directory / "p.csv", rows, bound=bound)
        fast = _outcome(join_link_keys, positions_path, release, keys, directory / "fast.csv")
        slow = _outcome(reference_join_link_keys, positions_path, release, keys, directory / "slow.csv")  # fmt: skip
    assert fast == slow


def test_a_join_writes_every_record_its_key_and_names_the_line_of_a_stranger(
    tmp_path: Path,
) -> None:
    rows = [("MJ-1", "2"), ('id, "quoted"', "0"), ("MJ-3", "1")]
    positions_path = _positions_file(tmp_path / "p.csv", rows, bound=True)
    keys = ["b" * 26, "c" * 26, "a" * 26]
    assert join_link_keys(positions_path, [1, 2, 0], keys, tmp_path / "keys.csv") == 3
    assert (tmp_path / "keys.csv").read_text(encoding="utf-8") == (
        f'own_record_id,link_key\nMJ-1,{"c" * 26}\n"id, ""quoted""",{"a" * 26}\nMJ-3,{"b" * 26}\n'
    )
    _positions_file(positions_path, [*rows, ("MJ-4", "7")], bound=True)
    with pytest.raises(ExtractError, match="line 6: no link key for its position"):
        join_link_keys(positions_path, [1, 2, 0], keys, tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()

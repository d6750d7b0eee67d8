"""The encoder run on bad extracts, its bad-row policies, its outputs (atomic, shuffled,
joinable through the positions file) and its parallel path."""

from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

import party.encoder_run
from party import positions_file
from party.encoder_run import (
    BadRowLimit,
    BadRowPolicy,
    EncodeProgress,
    EncodeSummary,
    encode_extract,
)
from party.id_digests import line_digests, line_digests_reference
from party.mapping import DepartmentMapping, shipped_mapping
from party.sensitive_strings import RowSample
from protocol.clk_file import ClkFileHeader, read_clks
from protocol.encoding import ClkEncoder
from protocol.errors import ConfigurationError, ExtractError, RecordError
from protocol.schema import LinkageSchema, default_schema, load_schema, parse_schema
from protocol.secret import LinkageSecret

SECRET = LinkageSecret(bytes(range(32)))
HEADER = ["person_id", "forename", "surname", "date_of_birth", "gender", "postcode"]
FORENAMES = ["Ann", "Zoë", "Bill", "Mohammed", "Siobhán", "Jo", "Émile", "Li", "Ola", "Tom"]
SURNAMES = ["O’Brien", "Smith-Jones", "Ng", "Kowalski", "Ó Súilleabháin", "Lee", "Ali"]


def person(index: int) -> list[str]:
    return [
        f"P{index:05d}",
        FORENAMES[index % len(FORENAMES)],
        SURNAMES[index % len(SURNAMES)],
        f"{index % 28 + 1:02d}/{index % 12 + 1:02d}/{1950 + index % 50}",
        ("Male", "Female", "Unknown")[index % 3],
        ("SW1A 1AA", "M1 1AE", "", "EH1 1YZ")[index % 4],
    ]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run(extract: Path, out: Path, *, seed: int | None = 7, **options: object) -> EncodeSummary:
    generator = np.random.default_rng(seed) if seed is not None else None
    return encode_extract(
        extract_path=extract,
        mapping=shipped_mapping("moj"),
        secret=SECRET,
        project_id="demo",
        encoded_path=out / "moj.clk",
        positions_path=out / "moj.positions.csv",
        generator=generator,
        **{"schema": default_schema(), **options},  # type: ignore[arg-type]
    )


def read_positions(path: Path) -> dict[str, int]:
    return {record_id: position for _, record_id, position in positions_file.read_positions(path)}


def expected_clks(rows: list[list[str]]) -> dict[str, bytes]:
    """Each record's CLK computed directly: mapping normalisation + ClkEncoder."""
    bound = shipped_mapping("moj").bind(default_schema(), HEADER)
    encoder = ClkEncoder(default_schema(), SECRET, project_id="demo")
    return {row[0]: encoder.encode(bound.normalise(row, row_number=1)) for row in rows}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    return source, out


def assert_nothing_written(out: Path) -> None:
    assert list(out.iterdir()) == []  # no encoded file, no positions file, no scratch


def test_positions_join_gives_each_record_its_clk(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(60)]
    summary = run(write_csv(source / "moj.csv", rows), out)
    assert (summary.rows_read, summary.records_encoded, summary.rows_skipped) == (60, 60, 0)
    header, clks = read_clks(out / "moj.clk")
    assert header.record_count == 60 and header.clk_bits == default_schema().encoded_bits
    assert header.kcv.hex() == summary.kcv
    positions = read_positions(out / "moj.positions.csv")
    assert sorted(positions) == sorted(row[0] for row in rows)
    assert sorted(positions.values()) == list(range(60))  # distinct, dense
    for record_id, clk in expected_clks(rows).items():
        assert clks[positions[record_id]].tobytes() == clk
    assert (out / "moj.positions.csv").stat().st_mode & 0o077 == 0
    assert sorted(path.name for path in out.iterdir()) == ["moj.clk", "moj.positions.csv"]


def test_shuffle_is_fresh_each_run_and_never_the_input_order(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(index) for index in range(40)])
    orders = []
    for _ in range(2):
        run(extract, out, seed=None)
        positions = read_positions(out / "moj.positions.csv")
        orders.append([positions[f"P{index:05d}"] for index in range(40)])
    assert orders[0] != orders[1]
    assert all(order != list(range(40)) for order in orders)


def test_fixed_generator_gives_identical_files(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(index) for index in range(30)])
    run(extract, out, seed=3)
    first = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    run(extract, out, seed=3)
    assert ((out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()) == first


def test_parallel_path_matches_in_process_path(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(index) for index in range(90)])
    single = run(extract, out, seed=11, chunk_rows=25)
    single_bytes = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    parallel = run(extract, out, seed=11, chunk_rows=25, workers=2)
    assert single.workers == 1 and parallel.workers == 2
    assert ((out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()) == (
        single_bytes
    )


def test_a_quoted_value_mid_file_leaves_the_files_independent_of_the_process_count(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte ranges are queued ahead of the one being taken (how many depends on the process
    count); a range holding a quote sends the rest to the csv module and the queued ones are
    dropped. Each chunk's bucket seed was drawn as it was queued, so the dropped draws made
    the .clk and positions files differ between 1, 2 and 3 processes for one seed."""
    source, out = dirs
    rows = [person(index) for index in range(300)]
    rows[249][2] = 'Smith, "Jr"'
    extract = write_csv(source / "moj.csv", rows)
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    files = {}
    for workers in (1, 2, 3):
        summary = run(extract, out, seed=11, chunk_rows=20, workers=workers)
        assert summary.workers == workers and summary.records_encoded == 300
        files[workers] = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    assert files[1] == files[2] == files[3]
    positions = read_positions(out / "moj.positions.csv")
    _, clks = read_clks(out / "moj.clk")
    assert all(clks[positions[rid]].tobytes() == clk for rid, clk in expected_clks(rows).items())


def test_workers_do_not_replay_the_blip_stream(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under BLIP each encoder process must draw its own random bytes, or one range would
    carry another's flips (every record here is the same person, so equal random bytes
    would give equal encodings)."""
    source, out = dirs
    blip = load_schema(
        Path(__file__).resolve().parents[2] / "benchmarks/schemas/grouped_blip_p05.toml"
    )
    assert ClkEncoder(blip, SECRET, project_id="demo").draws_random_bytes
    assert not ClkEncoder(default_schema(), SECRET, project_id="demo").draws_random_bytes
    rows = [[f"P{index:05d}", *person(1)[1:]] for index in range(400)]
    extract = write_csv(source / "moj.csv", rows)
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    run(extract, out, chunk_rows=20, workers=2, schema=blip)
    _, clks = read_clks(out / "moj.clk")
    assert len({row.tobytes() for row in clks}) == len(rows)


def test_parallel_path_reports_a_bad_row_and_writes_nothing(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = dirs
    rows = [person(index) for index in range(30)]
    rows[17][3] = "31/02/1990"
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    with pytest.raises(RecordError) as raised:
        run(write_csv(source / "moj.csv", rows), out, chunk_rows=10, workers=2)
    assert (raised.value.row, raised.value.field) == (18, "date_of_birth")
    assert_nothing_written(out)


def test_parquet_gives_the_same_clks_as_csv(dirs: tuple[Path, Path]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, out = dirs
    rows = [person(index) for index in range(25)]
    run(write_csv(source / "moj.csv", rows), out, seed=5)
    from_csv = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(HEADER)})
    pq.write_table(table, source / "moj.parquet")
    run(source / "moj.parquet", out, seed=5)
    assert ((out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()) == from_csv


def test_parquet_binary_column_with_bad_bytes_names_row_and_field(
    dirs: tuple[Path, Path],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, out = dirs
    rows = [person(index) for index in range(3)]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(HEADER)}
    surnames = [row[2].encode("utf-8") for row in rows]
    surnames[1] = b"Sm\xefth"
    columns["surname"] = surnames  # type: ignore[assignment]
    pq.write_table(pa.table(columns), source / "moj.parquet")
    with pytest.raises(RecordError) as raised:
        run(source / "moj.parquet", out)
    assert (raised.value.row, raised.value.field) == (2, "surname")
    assert_nothing_written(out)


def test_empty_and_header_only_files(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    empty = source / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ExtractError, match="file is empty"):
        run(empty, out)
    with pytest.raises(ExtractError, match="header but no data rows"):
        run(write_csv(source / "header.csv", []), out)
    blank_lines = source / "blank.csv"
    blank_lines.write_text(",".join(HEADER) + "\n\n\n", encoding="utf-8")
    with pytest.raises(ExtractError, match="header but no data rows"):
        run(blank_lines, out)
    assert_nothing_written(out)


def test_trailing_blank_lines_are_not_records(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(0), person(1)])
    with extract.open("a", encoding="utf-8") as handle:
        handle.write("\r\n\r\n")
    assert run(extract, out).records_encoded == 2


def test_undecodable_bytes_name_row_and_field_not_the_bytes(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(0), person(1), person(2)])
    data = extract.read_bytes().replace(b"Bill", b"B\xefll")
    extract.write_bytes(data)
    with pytest.raises(RecordError) as raised:
        run(extract, out)
    assert (raised.value.row, raised.value.field) == (3, "forename")
    assert "UTF-8" in str(raised.value) and "ll" not in str(raised.value)
    assert_nothing_written(out)


def test_ten_thousand_character_name(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(0), person(1)]
    rows[1][2] = "Featherstonehaugh" * 600
    with pytest.raises(RecordError) as raised:
        run(write_csv(source / "moj.csv", rows), out)
    assert (raised.value.row, raised.value.field) == (2, "surname")
    assert "Featherstone" not in str(raised.value)


def test_wrong_cell_count_and_unclosed_quote(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    short = write_csv(source / "short.csv", [person(0), person(1)[:4], person(2)])
    with pytest.raises(RecordError, match="row 2: has 4 cells but the header has 6"):
        run(short, out)
    unclosed = source / "unclosed.csv"
    unclosed.write_text(
        ",".join(HEADER) + '\nP1,Ann,Lee,01/02/1990,Female,M1 1AE\nP2,"Bob,Lee,01/02/1990\n',
        encoding="utf-8",
    )
    with pytest.raises(ExtractError, match="row 2 is not valid CSV"):
        run(unclosed, out)
    assert_nothing_written(out)


def test_duplicate_and_empty_record_ids(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(5)]
    rows[3][0] = rows[1][0]
    with pytest.raises(RecordError, match="row 4: record id repeats the id of row 2"):
        run(write_csv(source / "dup.csv", rows), out)
    assert_nothing_written(out)  # found while the encoded file was written: not committed
    rows = [person(index) for index in range(5)]
    rows[2][0] = "   "
    with pytest.raises(RecordError, match="row 3: record id is empty"):
        run(write_csv(source / "empty_id.csv", rows), out)
    assert_nothing_written(out)


def test_fail_policy_reports_the_first_bad_row_whatever_its_field(
    dirs: tuple[Path, Path],
) -> None:
    source, out = dirs
    rows = [person(index) for index in range(10)]
    rows[6][1] = "x" * 2000  # forename, checked first, but a later row
    rows[2][5] = "q" * 2000  # postcode, checked last, but the earlier row
    with pytest.raises(RecordError) as raised:
        run(write_csv(source / "moj.csv", rows), out)
    assert (raised.value.row, raised.value.field) == (3, "postcode")
    assert_nothing_written(out)


def test_skip_and_blank_policies_count_what_they_did(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(10)]
    rows[2][3] = "31/02/1990"
    rows[5][4] = "Xyzzy"
    rows[7] = rows[7][:3]
    extract = write_csv(source / "moj.csv", rows)

    limit = BadRowLimit(rows=3)
    skipped = run(extract, out, bad_rows="skip", max_bad_rows=limit)
    assert (skipped.rows_read, skipped.records_encoded, skipped.rows_skipped) == (10, 7, 3)
    assert skipped.problems_by_field == {"date_of_birth": 1, "sex": 1, "(row)": 1}
    assert set(read_positions(out / "moj.positions.csv")) == {
        row[0] for index, row in enumerate(rows) if index not in (2, 5, 7)
    }

    blanked = run(extract, out, bad_rows="blank", max_bad_rows=limit)
    assert (blanked.records_encoded, blanked.rows_skipped, blanked.values_blanked) == (9, 1, 2)
    _, clks = read_clks(out / "moj.clk")
    positions = read_positions(out / "moj.positions.csv")
    bound = shipped_mapping("moj").bind(default_schema(), HEADER)
    encoder = ClkEncoder(default_schema(), SECRET, project_id="demo")
    values = bound.normalise(rows[2], row_number=3, blanked=[])
    assert values[2] is None
    assert clks[positions[rows[2][0]]].tobytes() == encoder.encode(values)


def test_all_rows_skipped_writes_nothing(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index)[:3] for index in range(4)]
    with pytest.raises(ExtractError, match="none of the 4 rows could be encoded"):
        run(
            write_csv(source / "moj.csv", rows),
            out,
            bad_rows="skip",
            max_bad_rows=BadRowLimit(percent=100),
        )
    assert_nothing_written(out)


def test_failure_writing_positions_leaves_no_encoded_file(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(0), person(1)])
    (out / "moj.positions.csv").mkdir()  # cannot be replaced by a file
    with pytest.raises(OSError):
        run(extract, out)
    assert sorted(path.name for path in out.iterdir()) == ["moj.positions.csv"]
    assert (out / "moj.positions.csv").is_dir()


def test_outputs_replace_earlier_ones_only_on_success(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    good = write_csv(source / "good.csv", [person(0), person(1)])
    run(good, out)
    before = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    bad = write_csv(source / "bad.csv", [person(0), person(1)[:2]])
    with pytest.raises(RecordError):
        run(bad, out)
    assert ((out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()) == before


def test_settings_are_checked_before_any_work(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(0)])
    with pytest.raises(ConfigurationError, match="project id"):
        encode_extract(
            extract_path=extract,
            mapping=shipped_mapping("moj"),
            schema=default_schema(),
            secret=SECRET,
            project_id="Not A Label",
            encoded_path=out / "a.clk",
            positions_path=out / "a.csv",
        )
    with pytest.raises(ConfigurationError, match="bad-row policy"):
        run(extract, out, bad_rows="ignore")
    with pytest.raises(ConfigurationError, match="workers"):
        run(extract, out, workers=0)
    with pytest.raises(ConfigurationError, match="different paths"):
        encode_extract(
            extract_path=extract,
            mapping=shipped_mapping("moj"),
            schema=default_schema(),
            secret=SECRET,
            project_id="demo",
            encoded_path=out / "same",
            positions_path=out / "same",
        )
    with pytest.raises(ConfigurationError, match="the extract itself"):
        encode_extract(
            extract_path=extract,
            mapping=shipped_mapping("moj"),
            schema=default_schema(),
            secret=SECRET,
            project_id="demo",
            encoded_path=extract,
            positions_path=out / "p.csv",
        )
    assert_nothing_written(out)
    assert extract.read_text(encoding="utf-8").startswith("person_id")


def test_missing_output_directory_is_created(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    extract = write_csv(source / "moj.csv", [person(0)])
    summary = encode_extract(
        extract_path=extract,
        mapping=shipped_mapping("moj"),
        schema=default_schema(),
        secret=SECRET,
        project_id="demo",
        encoded_path=out / "new" / "moj.clk",
        positions_path=out / "new" / "moj.positions.csv",
    )
    assert summary.encoded_path.is_file()


def test_progress_and_summary_carry_counts_not_values(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(12)]
    seen: list[EncodeProgress] = []
    extract = write_csv(source / "moj.csv", rows)
    summary = run(extract, out, chunk_rows=5, progress=seen.append)
    # One report per byte range of about chunk_rows rows (cut at line ends, by length).
    counts = [item.rows_read for item in seen]
    assert len(counts) >= 2 and counts == sorted(set(counts)) and counts[-1] == 12
    assert all(abs(later - earlier - 5) <= 2 for earlier, later in itertools.pairwise(counts[:-1]))
    # The total is the file's size: a bar can show a percentage and an ETA from the start.
    assert all(item.read is not None and item.read.total == extract.stat().st_size for item in seen)
    assert seen[-1].read is not None and seen[-1].read.done == extract.stat().st_size
    line = summary.one_line()
    assert "encoded 12 of 12 rows" in line
    for row in rows:
        for value in row[1:]:
            if len(value) > 3:
                assert value not in line


def test_small_mask_tables_and_shuffle_buckets_change_no_bit(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table smaller than a chunk's distinct values, and chunks mixing remembered and new
    # values, as at a million rows with near-unique postcodes (this once crashed there).
    source, out = dirs
    rows = [person(index) for index in range(60)]
    for index, row in enumerate(rows):
        row[5] = f"N{index % 9 + 1} {index % 7}AB"
    extract = write_csv(source / "moj.csv", rows)
    run(extract, out, seed=5, chunk_rows=13)
    expected = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    monkeypatch.setattr(party.encoder_run, "_TABLE_ROWS", 6)
    run(extract, out, seed=5, chunk_rows=13)
    assert ((out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()) == expected
    # Many shuffle buckets (each of a few records) give another order, never another CLK.
    monkeypatch.setattr(party.encoder_run, "_BUCKET_BYTES", 7 * 320)
    run(extract, out, seed=5, chunk_rows=13)
    _, clks = read_clks(out / "moj.clk")
    positions = read_positions(out / "moj.positions.csv")
    assert sorted(positions.values()) == list(range(len(rows)))
    direct = expected_clks(rows)
    assert all(clks[position].tobytes() == direct[rid] for rid, position in positions.items())


def test_the_bucketed_shuffle_is_uniform(tmp_path: Path) -> None:
    """Random buckets drawn chunk by chunk, then a random order within each bucket: every
    permutation of four records in two chunks, over three buckets, about equally often."""
    generator = np.random.default_rng(3)
    seen: collections.Counter[tuple[int, ...]] = collections.Counter()
    trials = 4_800
    chunk = np.zeros((2, 1), dtype=np.uint64)
    for _ in range(trials):
        scratch = party.encoder_run._BucketedScratch(
            tmp_path, clk_bytes=8, buckets=3, generator=generator
        )
        # Two byte ranges, keyed by their start bytes as the run keys them.
        for start in (0, 57):
            draw = scratch.draw((party.encoder_run._RANGE_START, start))
            scratch.add(party.encoder_run._to_scratch(chunk, draw))
        position_of, _ = scratch.positions()
        seen[tuple(position_of.tolist())] += 1
    assert len(seen) == 24
    expected = trials / 24  # 200; a count outside 130-270 is 5 standard deviations out
    assert all(abs(count - expected) < 70 for count in seen.values())


@pytest.mark.parametrize("count", [1, 3, 1 << 15, (1 << 15) + 1, 1 << 20])
def test_stable_bucket_order_is_numpys_stable_argsort(count: int) -> None:
    # Bucket numbers go to a radix sort as int16 where they fit; the order must be the
    # stable argsort's exactly (it decides where each record lands).
    buckets = np.random.default_rng(count).integers(0, count, 5_000, dtype=np.int32)
    order = party.encoder_run._stable_order(buckets, count)
    assert np.array_equal(order, np.argsort(buckets, kind="stable"))


def test_tables_that_stop_remembering_change_no_bit(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Postcodes nearly all distinct: after _DIRECT_AFTER lookups its table stops remembering
    # and holds each chunk's masks only, and later ranges read its column plain (not
    # dictionary-encoded: a repeat is listed twice), while repeating fields' tables keep
    # theirs; bad values are still reported with their rows.
    source, out = dirs
    rows = [person(index) for index in range(80)]
    for index, row in enumerate(rows):
        row[5] = f"N{index % 9 + 1} {index % 10}{chr(65 + index % 26)}{chr(65 + index // 26)}"
    rows[61][3] = "31/02/1990"
    rows[71][5] = rows[70][5]  # a repeat in one range, and a missing postcode
    rows[72][5] = ""
    extract = write_csv(source / "moj.csv", rows)
    run(extract, out, seed=5, chunk_rows=13, bad_rows="skip", max_bad_rows=BadRowLimit(rows=1))
    expected = (out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()
    monkeypatch.setattr(party.encoder_run, "_DIRECT_AFTER", 20)
    tables: list[object] = []
    original = party.encoder_run._MaskTable.note

    def note(table: party.encoder_run._MaskTable, lookups: int, hits: int) -> None:
        original(table, lookups, hits)
        tables.append((id(table), table.remember))

    monkeypatch.setattr(party.encoder_run._MaskTable, "note", note)
    plain_reads: list[int] = []
    read_range = party.encoder_run.read_csv_range

    def read_csv_range(*args: Any, **kwargs: Any) -> Any:
        plain_reads.extend(kwargs.get("plain", ()))
        return read_range(*args, **kwargs)

    monkeypatch.setattr(party.encoder_run, "read_csv_range", read_csv_range)
    summary = run(
        extract, out, seed=5, chunk_rows=13, bad_rows="skip", max_bad_rows=BadRowLimit(rows=1)
    )
    assert ((out / "moj.clk").read_bytes(), (out / "moj.positions.csv").read_bytes()) == expected
    # Postcodes and sex, whose (sex, date) table stopped too; never the dates, which salt.
    assert set(plain_reads) == {4, 5}
    assert summary.rows_skipped == 1
    stopped = {table for table, remember in tables if not remember}
    kept = {table for table, remember in tables if remember} - stopped
    # Names repeat (10 forenames, 7 surnames) and stay remembered; dates of birth, their
    # (sex, date) pairs and postcodes are all distinct here and stop.
    assert (len(kept), len(stopped)) == (2, 3)


def test_equal_id_digests_are_confirmed_on_the_ids(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\nc\nb\nd\n", encoding="utf-8")
    colliding = np.array([5, 5, 7, 8, 9], dtype=np.int64)  # a and b share a digest only
    assert party.encoder_run._first_repeated_id(colliding, ids) is None
    repeated = np.array([1, 2, 3, 2, 4], dtype=np.int64)
    assert party.encoder_run._first_repeated_id(repeated, ids) == (1, 3)


@pytest.mark.parametrize("hardening", ["none", "xor-fold", "balance"])
def test_every_token_method_and_hardening_match_the_per_value_encoder(
    dirs: tuple[Path, Path], hardening: str
) -> None:
    # The run's column path against ClkEncoder.encode, record by record, on a schema that
    # uses every tokeniser, a key group, blake2b and each hardening.
    source, out = dirs
    document = {
        "schema_version": 1,
        "name": "every-method",
        "clk_bits": 512,
        "hashing": "blake2b",
        "hardening": hardening,
        "fields": [
            {
                "name": "forename",
                "kind": "person_name",
                "key_group": "names",
                "tokens": [
                    {"method": "ngram", "size": 3, "padded": False, "bits_per_token": 3},
                    {"method": "phonetic", "algorithm": "soundex", "bits": 20},
                ],
            },
            {
                "name": "surname",
                "kind": "person_name",
                "key_group": "names",
                "tokens": [{"method": "ngram", "size": 2, "positional": True, "bits": 90}],
            },
            {
                "name": "date_of_birth",
                "kind": "date",
                "tokens": [{"method": "date_parts", "bits": 60}],
            },
            {"name": "sex", "kind": "sex", "tokens": [{"method": "exact", "bits": 20}]},
            {
                "name": "postcode",
                "kind": "postcode",
                "tokens": [{"method": "ngram", "size": 1, "bits_per_token": 2}],
            },
        ],
    }
    schema = parse_schema(document)
    encode_matching_the_per_value_encoder(
        dirs, schema, [person(index) for index in range(40)], chunk_rows=16
    )


GROUPED_SCHEMAS = Path(__file__).resolve().parents[2] / "benchmarks" / "schemas"


def encode_matching_the_per_value_encoder(
    dirs: tuple[Path, Path], schema: LinkageSchema, rows: list[list[str]], **run: Any
) -> tuple[ClkFileHeader, npt.NDArray[np.uint64], dict[str, int]]:
    """Encode ``rows`` as MoJ's extract through the run's column path (``run``: chunking,
    bad-row policy) and check every record's bits against the per-value encoder,
    ``ClkEncoder.encode``, its slow and obvious twin. The file's header, records and
    positions, for what a test checks beyond that."""
    source, out = dirs
    encode_extract(
        extract_path=write_csv(source / "moj.csv", rows),
        mapping=shipped_mapping("moj"),
        schema=schema,
        secret=SECRET,
        project_id="demo",
        encoded_path=out / "moj.clk",
        positions_path=out / "moj.positions.csv",
        **run,
    )
    header, clks = read_clks(out / "moj.clk")
    positions = read_positions(out / "moj.positions.csv")
    bound = shipped_mapping("moj").bind(schema, HEADER)
    encoder = ClkEncoder(schema, SECRET, project_id="demo")
    for row in rows:
        expected = encoder.encode(bound.normalise(row, row_number=1, blanked=[]))
        assert clks[positions[row[0]]].tobytes() == expected
    return header, clks, positions


@pytest.mark.parametrize(
    "name", ["grouped_salted.toml", "grouped_diffusion_w3.toml", "grouped_balance.toml"]
)
@pytest.mark.parametrize("bad_rows", ["fail", "blank"])
def test_a_grouped_schema_writes_format_2_matching_the_per_value_encoder(
    dirs: tuple[Path, Path], name: str, bad_rows: str
) -> None:
    # Schema v2 through the run's column path (salted sex keyed by its date, every group in
    # its own words, each group hardened, a missing group all zero) against ClkEncoder.encode.
    source, out = dirs
    schema = load_schema(GROUPED_SCHEMAS / name)
    rows = [person(index) for index in range(50)]
    rows[3][3] = ""  # no date: the salted sex sets nothing, the birth group is all zero
    rows[4][3] = "31/02/1990"  # not a date: blanked, so again no salt
    if bad_rows == "fail":
        rows[4][3] = "01/02/1990"
    header, clks, positions = encode_matching_the_per_value_encoder(
        dirs,
        schema,
        rows,
        chunk_rows=16,
        bad_rows=bad_rows,
        max_bad_rows=BadRowLimit(rows=1),  # the one blanked date (2 %, over the 1 % default)
    )
    assert header.format_version == 2 and header.layout == schema.layout
    birth = slice(*schema.layout.word_range(1))
    assert not clks[positions[rows[3][0]], birth].any()


@pytest.mark.parametrize("limit", [2, 3, 40])
@pytest.mark.parametrize("changing", ["dates", "sexes"])
def test_salted_keys_packed_from_ids_that_start_again_change_no_bit(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, limit: int, changing: str
) -> None:
    # The salted sex field's table keys are packed from stable ids of its raw values and of
    # the dates salting it. Each block of 36 rows (about three chunks) has 3 dates and 2
    # sexes, and either the dates or the sexes are other ones than the block before: at a
    # limit of 3 that id space starts again while the table still remembers keys packed
    # from the old ids (which it must forget); at 2 (and in a chunk across two blocks) a
    # chunk has more new values than the space holds and takes (value, salts) tuple keys
    # instead; at 40 nothing starts again. None of it may change a bit: the per-value
    # encoder says what each record's bits are.
    monkeypatch.setattr(party.encoder_run, "_STABLE_ID_LIMIT", limit)
    source, out = dirs
    schema = load_schema(GROUPED_SCHEMAS / "grouped_salted.toml")
    rows = [person(index) for index in range(216)]
    for index, row in enumerate(rows):
        block = index // 36
        dates, sexes = (block % 3, 0) if changing == "dates" else (0, block % 2)
        row[3] = f"0{dates * 3 + index % 3 + 1}/03/1961"
        row[4] = (("Male", "Female"), ("Unknown", ""))[sexes][index % 2]
    encode_matching_the_per_value_encoder(dirs, schema, rows, chunk_rows=12)


def test_positions_file_quotes_ids_across_blocks(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of 7 bytes cut record ids (and their UTF-8 characters) mid-way, so every id crosses a block boundary
    # somewhere; ids with commas and quotes must come back whole from a CSV reader.
    monkeypatch.setattr(positions_file, "_IDS_BLOCK_BYTES", 7)
    source, out = dirs
    rows = [person(index) for index in range(30)]
    odd_ids = ["A,1", 'B"2', 'C,"3"', "Dé4", "E 5", "F☃6"]
    for row, record_id in zip(rows, odd_ids, strict=False):
        row[0] = record_id
    run(write_csv(source / "moj.csv", rows), out)
    positions = read_positions(out / "moj.positions.csv")
    assert sorted(positions) == sorted(row[0] for row in rows)
    assert sorted(positions.values()) == list(range(30))
    _, clks = read_clks(out / "moj.clk")
    for record_id, clk in expected_clks(rows).items():
        assert clks[positions[record_id]].tobytes() == clk


@pytest.mark.parametrize(
    ("text", "limit"),
    [("0", BadRowLimit(rows=0)), ("25", BadRowLimit(rows=25)), ("2.5%", BadRowLimit(percent=2.5)),
     (" 1 % ", BadRowLimit(percent=1.0))],
)  # fmt: skip
def test_bad_row_limits_parse(text: str, limit: BadRowLimit) -> None:
    assert BadRowLimit.parse(text) == limit


@pytest.mark.parametrize("text", ["", "-1", "1.5", "x%", "101%", "ten"])
def test_malformed_bad_row_limits_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="max-bad-rows|percentage|whole number"):
        BadRowLimit.parse(text)


@pytest.mark.parametrize("policy", [BadRowPolicy.SKIP, BadRowPolicy.BLANK])
def test_more_bad_rows_than_the_default_one_percent_stop_the_run(
    dirs: tuple[Path, Path], policy: BadRowPolicy
) -> None:
    """A wrong date format under skip or blank once gave 'encoded 7 of 300 rows' and exit 0."""
    source, out = dirs
    rows = [person(index) for index in range(300)]
    for row in rows[7:]:
        row[3] = row[3].replace("/", "-")  # 13-07-1985 against %d/%m/%Y
    with pytest.raises(ExtractError) as raised:
        run(write_csv(source / "moj.csv", rows), out, bad_rows=policy)
    message = raised.value.message
    assert "293 of 300 rows read were unusable" in message
    assert "--max-bad-rows 1%" in message and "date_of_birth 293" in message
    assert "row 8, field 'date_of_birth'" in message
    assert rows[9][3] not in message
    assert_nothing_written(out)


def test_bad_rows_within_the_limit_are_counted_per_field(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(200)]
    rows[3][3] = "31/02/1990"  # rejected date: blanked
    rows[4][5] = "NULL"  # a null marker: missing, not bad
    summary = run(write_csv(source / "moj.csv", rows), out, bad_rows="blank")
    counts = {item.field: item for item in summary.fields}
    assert summary.rows_blanked == 1 and summary.values_blanked == 1
    assert (counts["date_of_birth"].blanked, counts["date_of_birth"].missing) == (1, 1)
    assert counts["postcode"].missing == 50 + 1 and counts["postcode"].blanked == 0  # "" and NULL
    assert counts["forename"].fill_rate == 1.0
    assert counts["date_of_birth"].fill_rate == pytest.approx(199 / 200)
    record = summary.to_record()
    assert record["fields"][2] == {  # type: ignore[index]
        "field": "date_of_birth", "missing": 1, "blanked": 1, "skipped_rows": 0,
        "fill_rate": 0.995,
    }  # fmt: skip
    text = "\n".join(summary.field_lines())
    assert "date_of_birth" in text and "99.50%" in text and "31/02/1990" not in text


def test_a_count_limit_stops_early_and_says_so(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(40)]
    for row in rows[:5]:
        row[4] = "Xyzzy"
    # Stopped after the first range of about 10 rows, not at the end of the file.
    with pytest.raises(ExtractError, match="5 of 1[0-2] rows read were unusable"):
        run(write_csv(source / "moj.csv", rows), out, bad_rows="skip", chunk_rows=10,
            max_bad_rows=BadRowLimit(rows=4))  # fmt: skip
    assert_nothing_written(out)


def test_the_positions_file_names_its_project_and_payload(dirs: tuple[Path, Path]) -> None:
    source, out = dirs
    rows = [person(index) for index in range(5)]
    rows[1][0] = 'MJ-"quoted", id'
    summary = run(write_csv(source / "moj.csv", rows), out)
    binding = positions_file.read_binding(out / "moj.positions.csv")
    header = read_clks(out / "moj.clk")[0]
    assert binding == positions_file.PositionsBinding(
        project_id="demo", payload_sha256=header.payload_sha256.hex(), record_count=5
    )
    assert summary.payload_sha256 == header.payload_sha256.hex()
    text = (out / "moj.positions.csv").read_text(encoding="utf-8")
    assert text.splitlines()[1] == "record_id,position"
    assert '"MJ-""quoted"", id",' in text  # the csv module's quoting
    assert set(read_positions(out / "moj.positions.csv")) == {row[0] for row in rows}


def test_version_one_positions_files_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text('record_id,position\nA,1\n"B,2",0\n', encoding="utf-8")
    assert positions_file.read_binding(path) is None
    assert list(positions_file.read_positions(path)) == [(2, "A", 1), (3, "B,2", 0)]


def test_typed_parquet_dates_need_no_format(dirs: tuple[Path, Path]) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    source, out = dirs
    rows = [person(index) for index in range(4)]
    births = [dt.datetime.strptime(row[3], "%d/%m/%Y") for row in rows]
    table = pa.table(
        {
            "person_id": [row[0] for row in rows],
            "forename": [row[1] for row in rows],
            "surname": [row[2] for row in rows],
            "date_of_birth": pa.array([birth.date() for birth in births], type=pa.date32()),
            "gender": [row[4] for row in rows],
            "postcode": [row[5] for row in rows],
        }
    )
    pq.write_table(table, source / "moj.parquet")
    mapping = replace_source(shipped_mapping("moj"), "date_of_birth", date_formats=())
    summary = encode_extract(
        extract_path=source / "moj.parquet", mapping=mapping, schema=default_schema(),
        secret=SECRET, project_id="demo", encoded_path=out / "moj.clk",
        positions_path=out / "moj.positions.csv",
    )  # fmt: skip
    assert summary.records_encoded == 4
    _, clks = read_clks(out / "moj.clk")
    positions = read_positions(out / "moj.positions.csv")
    direct = expected_clks(rows)
    assert all(clks[position].tobytes() == direct[rid] for rid, position in positions.items())
    # A timestamp column reads as its date too.
    stamped = table.set_column(3, "date_of_birth", pa.array(births, type=pa.timestamp("us")))
    pq.write_table(stamped, source / "moj.parquet")
    encode_extract(
        extract_path=source / "moj.parquet", mapping=mapping, schema=default_schema(),
        secret=SECRET, project_id="demo", encoded_path=out / "moj.clk",
        positions_path=out / "moj.positions.csv",
    )  # fmt: skip
    _, clks = read_clks(out / "moj.clk")
    positions = read_positions(out / "moj.positions.csv")
    assert all(clks[position].tobytes() == direct[rid] for rid, position in positions.items())


def replace_source(
    mapping: DepartmentMapping, field_name: str, **changes: object
) -> DepartmentMapping:
    sources = tuple(
        dataclasses.replace(source, **changes) if source.field_name == field_name else source  # type: ignore[arg-type]
        for source in mapping.sources
    )
    return dataclasses.replace(mapping, sources=sources)


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=12)))
def test_record_id_digests_agree_with_their_reference(ids: list[str]) -> None:
    text = "".join(f"{record_id}\n" for record_id in ids).encode("utf-8", "surrogatepass")
    assert line_digests(text).tolist() == line_digests_reference(text).tolist()
    # Process-independent and unequal for unequal ids (a collision would be confirmed on
    # the ids; none is expected among a handful).
    if len(set(ids)) == len(ids):
        assert len(set(line_digests(text).tolist())) == len(ids)


def quoted_rows() -> list[list[str]]:
    rows = [person(index) for index in range(90)]
    rows[41][1] = "Ann, Jr"  # the csv module quotes it: byte ranges stop here
    rows[63][2] = "Mary\nJane"  # a quoted value spanning two lines
    return rows


@pytest.mark.parametrize("workers", [1, 2])
def test_a_quote_hands_the_rest_of_the_file_to_the_csv_module(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    source, out = dirs
    rows = quoted_rows()
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    seen: list[EncodeProgress] = []
    extract = write_csv(source / "moj.csv", rows)
    summary = run(extract, out, chunk_rows=10, workers=workers, progress=seen.append)
    assert (summary.rows_read, summary.records_encoded) == (90, 90)
    # Progress is in bytes of the file throughout, ranges and csv-module chunks alike.
    assert all(item.read is not None and item.read.unit == "B" for item in seen)
    assert seen[-1].read is not None and seen[-1].read.done == extract.stat().st_size
    assert [item.rows_read for item in seen] == sorted({item.rows_read for item in seen})
    _, clks = read_clks(out / "moj.clk")
    positions = read_positions(out / "moj.positions.csv")
    expected = expected_clks(rows)
    assert all(clks[positions[rid]].tobytes() == clk for rid, clk in expected.items())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_row_of_the_wrong_width_is_named_by_its_row_in_the_file(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    source, out = dirs
    rows = [person(index) for index in range(90)]
    rows[56].append("extra")  # Arrow refuses its range; the csv module reads it
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    with pytest.raises(RecordError) as raised:
        run(write_csv(source / "moj.csv", rows), out, chunk_rows=10, workers=workers)
    assert (raised.value.row, raised.value.field) == (57, None)
    assert "7 cells" in raised.value.message and "extra" not in raised.value.message
    summary = run(
        write_csv(source / "moj.csv", rows),
        out,
        chunk_rows=10,
        workers=workers,
        bad_rows="skip",
        max_bad_rows=BadRowLimit(rows=1),
    )
    assert (summary.rows_read, summary.records_encoded, summary.rows_skipped) == (90, 89, 1)
    assert "P00056" not in read_positions(out / "moj.positions.csv")


@pytest.mark.parametrize(("quoted", "workers"), [(False, 1), (False, 2), (True, 2)])
def test_the_row_sample_sees_the_rows_it_chose(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, quoted: bool, workers: int
) -> None:
    # The sample draws row numbers in the parent; where workers read the file, the parent
    # reads just the chosen rows again. Each sampled row must be the extract's row.
    source, out = dirs
    rows = quoted_rows() if quoted else [person(index) for index in range(90)]
    monkeypatch.setattr(party.encoder_run, "PARALLEL_FROM_BYTES", 0)
    sample = RowSample(12, np.random.default_rng(4))
    run(write_csv(source / "moj.csv", rows), out, chunk_rows=10, workers=workers, observer=sample)
    assert sample.rows_read == 90 and len(sample.rows) == 12
    assert len(set(sample.row_numbers)) == 12 and max(sample.row_numbers) > 12  # replaced
    assert all(
        row == rows[number - 1] for row, number in zip(sample.rows, sample.row_numbers, strict=True)
    )
    positions = read_positions(out / "moj.positions.csv")
    assert sample.positions == {
        number: positions[rows[number - 1][0]] for number in sample.row_numbers
    }

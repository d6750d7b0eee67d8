"""The leak scanner: seeded leaks are found in every form, clean random payloads pass."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from party.leak_scan import (
    TRUNCATED_KIND,
    PayloadGeometry,
    distinct_contexts,
    distinct_contexts_naive,
    find_occurrences,
    find_occurrences_naive,
    scan_encoded_file,
    sensitive_patterns,
    unkeyed_encoding_check,
)
from protocol.clk_file import HEADER_LENGTH, ClkFileHeader, ClkFileWriter
from protocol.clk_layout import ClkLayout, GroupLayout
from tests.service_helpers import write_clk_file
from tests.strategies import random_clks

NAMES = ["Thornton", "Margaret", "Okonkwo-Hughes", "1984-02-29", "Siobhan", "Wilkinson"]
RECORDS = 2000
CLK_BYTES = 128


def random_clks_bytes(seed: int = 7) -> npt.NDArray[np.uint8]:
    generator = np.random.default_rng(seed)
    return random_clks(generator, RECORDS, words=CLK_BYTES // 8, density=0.5).view(np.uint8)


def write_scan_file(path: Path, clks: npt.NDArray[np.uint8]) -> Path:
    return write_clk_file(
        path,
        clks,
        project_id="moj-dfe-2026",
        schema_fingerprint=bytes(32),
        kcv=bytes(16),
        clk_bits=CLK_BYTES * 8,
    )


def seeded(tmp_path: Path, leak: bytes, *, record: int = 321, at: int = 17) -> Path:
    clks = random_clks_bytes()
    flat = clks.reshape(-1)
    start = record * CLK_BYTES + at
    flat[start : start + len(leak)] = np.frombuffer(leak, dtype=np.uint8)
    return write_scan_file(tmp_path / "seeded.clk", clks)


def test_clean_random_payload_passes(tmp_path: Path) -> None:
    path = write_scan_file(tmp_path / "clean.clk", random_clks_bytes())
    report = scan_encoded_file(path, NAMES)
    assert report.clean, report.findings
    assert report.strings_checked == len(NAMES) and report.patterns_checked > 20 * len(NAMES)


@pytest.mark.parametrize(
    ("leak", "kind"),
    [
        (b"Thornton", "raw-utf-8"),
        ("Margaret".encode("utf-16-le"), "raw-utf-16-le"),
        ("Siobhan".encode("utf-16-be"), "raw-utf-16-be"),
        (b"WILKINSON", "raw-utf-8"),
        (base64.b64encode(b"1984-02-29"), "base64"),
        (base64.b64encode(b"xy:Okonkwo-Hughes"), "base64"),  # misaligned inside longer text
        (hashlib.md5(b"Thornton").digest(), "md5-raw"),
        (hashlib.md5(b"Margaret").hexdigest().encode(), "md5-hex"),
        (hashlib.sha1(b"Siobhan").digest(), "sha1-raw"),
        (hashlib.sha256(b"Wilkinson").digest(), "sha256-raw"),
        (hashlib.sha256(b"1984-02-29").hexdigest().upper().encode(), "sha256-hex"),
    ],
)
def test_seeded_leak_is_found_without_echoing_it(tmp_path: Path, leak: bytes, kind: str) -> None:
    path = seeded(tmp_path, leak)
    report = scan_encoded_file(path, NAMES)
    assert not report.clean
    finding = next(finding for finding in report.findings if finding.kind == kind)
    assert (
        finding.offset is not None
        and HEADER_LENGTH + 321 * CLK_BYTES
        <= finding.offset
        <= HEADER_LENGTH + 321 * CLK_BYTES + 17 + len(leak)
    )
    for name in NAMES:
        assert name.lower() not in finding.message.lower()


def test_short_value_repeated_in_every_record_is_found(tmp_path: Path) -> None:
    clks = random_clks_bytes()
    clks[:, 40:44] = np.frombuffer(b"Bell", dtype=np.uint8)
    path = write_scan_file(tmp_path / "short.clk", clks)
    report = scan_encoded_file(path, ["Bell"])
    assert [finding.kind for finding in report.findings] == ["raw-utf-8"]
    assert report.findings[0].occurrences == RECORDS


def test_single_short_value_counts_as_undetectable(tmp_path: Path) -> None:
    path = write_scan_file(tmp_path / "clean.clk", random_clks_bytes())
    assert scan_encoded_file(path, ["Ng"]).undetectable == 1
    assert scan_encoded_file(path, ["Thornton"]).undetectable == 0


def test_trailing_bytes_are_found(tmp_path: Path) -> None:
    path = write_scan_file(tmp_path / "clean.clk", random_clks_bytes())
    path.write_bytes(path.read_bytes() + b"\0\0\0\0")
    report = scan_encoded_file(path, NAMES)
    assert [finding.kind for finding in report.findings] == ["container-length"]
    assert report.findings[0].offset == HEADER_LENGTH + RECORDS * CLK_BYTES


@pytest.mark.parametrize("keep", [0, 5, 30, HEADER_LENGTH + 3 * CLK_BYTES])
def test_a_cut_off_file_is_truncated_not_a_leak(tmp_path: Path, keep: int) -> None:
    path = write_scan_file(tmp_path / "clean.clk", random_clks_bytes())
    path.write_bytes(path.read_bytes()[:keep])
    report = scan_encoded_file(path, NAMES)
    assert [finding.kind for finding in report.findings] == [TRUNCATED_KIND]
    assert report.truncated_only and not report.clean
    assert f"it has {keep} bytes" in report.findings[0].message


def test_a_truncated_file_with_raw_values_is_still_a_leak(tmp_path: Path) -> None:
    data = write_scan_file(tmp_path / "clean.clk", random_clks_bytes()).read_bytes()
    path = tmp_path / "cut.clk"
    path.write_bytes(data[: HEADER_LENGTH + CLK_BYTES] + b"Thornton Margaret " * 20)
    report = scan_encoded_file(path, NAMES)
    assert "raw-utf-8" in {finding.kind for finding in report.findings}
    assert not report.truncated_only


def test_payload_edited_after_encoding_is_found(tmp_path: Path) -> None:
    path = write_scan_file(tmp_path / "clean.clk", random_clks_bytes())
    data = bytearray(path.read_bytes())
    data[HEADER_LENGTH + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [finding.kind for finding in scan_encoded_file(path, NAMES).findings] == [
        "container-digest"
    ]


def test_not_a_clk_file_is_found(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    path.write_bytes(b"surname,given\nThornton,Margaret\n" * 10)
    kinds = {finding.kind for finding in scan_encoded_file(path, NAMES).findings}
    assert "container-header" in kinds and "raw-utf-8" in kinds


def fake_encode(values: npt.NDArray[np.int64], salt: int) -> npt.NDArray[np.uint64]:
    """A stand-in encoding: 30 bits per value chosen by a (salted) hash of the value."""
    out = np.zeros((values.size, 16), dtype=np.uint64)
    for row, value in enumerate(values.tolist()):
        for bit in range(30):
            position = (
                int.from_bytes(hashlib.sha256(f"{salt}:{value}:{bit}".encode()).digest()[:2]) % 1024
            )
            out[row, position // 64] |= np.uint64(1) << np.uint64(position % 64)
    return out


def test_unkeyed_encoding_is_flagged_and_keyed_passes() -> None:
    values = np.arange(300, dtype=np.int64) * 7919
    unkeyed = fake_encode(values, salt=0)
    keyed = fake_encode(values, salt=12345)

    def reencode(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        return fake_encode(values[positions], salt=0)

    rng = np.random.default_rng(3)
    finding = unkeyed_encoding_check(unkeyed, reencode, sample_size=100, rng=rng)
    assert finding is not None and finding.kind == "unkeyed-encoding"
    assert unkeyed_encoding_check(keyed, reencode, sample_size=100, rng=rng) is None


def test_scan_runs_the_unkeyed_check(tmp_path: Path) -> None:
    values = np.arange(RECORDS, dtype=np.int64)
    path = write_scan_file(tmp_path / "unkeyed.clk", fake_encode(values, salt=0).view(np.uint8))
    report = scan_encoded_file(
        path,
        NAMES,
        unkeyed_reencoder=lambda positions: fake_encode(values[positions], salt=0),
        sample_size=50,
    )
    assert [finding.kind for finding in report.findings] == ["unkeyed-encoding"]


@given(
    background=st.binary(min_size=0, max_size=600),
    words=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4),
    places=st.lists(st.integers(min_value=0, max_value=600), max_size=4),
)
def test_fast_search_agrees_with_naive(
    background: bytes, words: list[str], places: list[int]
) -> None:
    patterns, _ = sensitive_patterns(words)
    data = bytearray(background)
    for number, place in enumerate(places):
        if patterns:
            piece = patterns[(number * 7) % len(patterns)].data
            data[place:place] = piece
    assert find_occurrences(bytes(data), patterns) == find_occurrences_naive(bytes(data), patterns)


def test_chunk_boundaries_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import party.leak_scan as leak_scan

    monkeypatch.setattr(leak_scan, "_CHUNK_BYTES", 5)
    patterns, _ = sensitive_patterns(["Thornton", "Siobhan"])
    data = bytes(range(50)) + b"Thornton" + bytes(3) + "Siobhan".encode("utf-16-le") + b"THORNTON"
    found = find_occurrences(data, patterns)
    # UTF-8, both UTF-16 orders (the zero byte before it completes the big-endian form), upper.
    assert found == find_occurrences_naive(data, patterns) and len(found) == 4


def test_a_small_keyed_file_never_false_alarms_and_a_small_unkeyed_one_is_caught() -> None:
    # Three records: the means of three scores wander, so the check asks for standard errors
    # beyond its margin. Over many independent keys none is flagged; unkeyed ones all are.
    values = np.arange(3, dtype=np.int64) * 104729

    def reencode(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        return fake_encode(values[positions], salt=0)

    rng = np.random.default_rng(11)
    for salt in range(1, 201):
        keyed = fake_encode(values, salt=salt)
        assert unkeyed_encoding_check(keyed, reencode, rng=rng) is None
    assert unkeyed_encoding_check(fake_encode(values, salt=0), reencode, rng=rng) is not None


# The shipped default's shape: name 512 bits, birth 512 bits, postcode 256 bits.
GROUPED = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=512),
        GroupLayout(name="birth", bits=512),
        GroupLayout(name="postcode", bits=256),
    )
)
GROUPED_BYTES = GROUPED.total_bits // 8  # 160; groups at bytes 0, 64, 128


def write_grouped_file(path: Path, clks: npt.NDArray[np.uint8]) -> Path:
    with ClkFileWriter(
        path,
        project_id="moj-dfe-2026",
        schema_fingerprint=bytes(32),
        kcv=bytes(16),
        clk_bits=GROUPED.total_bits,
        layout=GROUPED,
    ) as writer:
        writer.write(clks)
    return path


def random_grouped_bytes(seed: int = 7) -> npt.NDArray[np.uint8]:
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, size=(RECORDS, GROUPED_BYTES), dtype=np.uint8)


def test_a_chance_match_in_a_shared_group_encoding_is_one_event(tmp_path: Path) -> None:
    # 30 records share a postcode, so their postcode group bytes are identical; a 4-byte
    # match inside that one group encoding is one chance event, not 30.
    clks = random_grouped_bytes()
    shared = clks[5, 128:160].copy()
    shared[9:13] = np.frombuffer(b"Bell", dtype=np.uint8)
    rows = np.arange(30) * 61
    clks[rows, 128:160] = shared
    path = write_grouped_file(tmp_path / "grouped.clk", clks)
    report = scan_encoded_file(path, ["Bell", *NAMES])
    assert report.clean, report.findings
    # The same 30 copies in 30 different group encodings are 30 events: a leak.
    clks[rows, 128 + 9 : 128 + 13] = np.frombuffer(b"Bell", dtype=np.uint8)
    clks[rows, 150] = np.arange(30, dtype=np.uint8)
    leaked = scan_encoded_file(write_grouped_file(tmp_path / "leaked.clk", clks), ["Bell"])
    assert [(finding.kind, finding.occurrences) for finding in leaked.findings] == [
        ("raw-utf-8", 30)
    ]


def leaked_values(count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [letters[n % 26] + letters[(n // 26) % 26] + letters[n % 7] + "e" for n in range(count)]


def test_values_written_into_their_group_encodings_are_found(tmp_path: Path) -> None:
    # A broken encoder writes each record's normalised name into its name group, whose bytes
    # are otherwise a function of the name: each value shows once per distinct group, too
    # rare alone (4 bytes), but 300 of 300 values showing is no chance.
    values = leaked_values(300)
    assert len(set(values)) == 300
    generator = np.random.default_rng(5)
    groups = generator.integers(0, 256, size=(300, 64), dtype=np.uint8)
    for number, value in enumerate(values):
        groups[number, 20:24] = np.frombuffer(value.encode(), dtype=np.uint8)
    clks = random_grouped_bytes()
    holder = generator.integers(0, 300, size=RECORDS)
    clks[:, 0:64] = groups[holder]
    path = write_grouped_file(tmp_path / "names.clk", clks)
    report = scan_encoded_file(path, values)
    assert [finding.kind for finding in report.findings] == ["many-strings"]
    finding = report.findings[0]
    # Counted in the band (decade of chance) where the leak is least likely: most values.
    assert 150 <= finding.occurrences <= len(set(holder.tolist()))
    assert finding.expected_by_chance is not None and finding.expected_by_chance < 1
    assert finding.source_index is not None and 0 <= finding.source_index < 300
    assert HEADER_LENGTH <= (finding.offset or 0) < HEADER_LENGTH + RECORDS * GROUPED_BYTES
    for value in values:
        assert value not in finding.message.lower()
    # The same file with the values written nowhere: clean.
    assert scan_encoded_file(
        write_grouped_file(tmp_path / "clean.clk", random_grouped_bytes()), values
    ).clean


def test_header_geometry_follows_the_layout(tmp_path: Path) -> None:
    path = write_grouped_file(tmp_path / "grouped.clk", random_grouped_bytes())
    header = ClkFileHeader.from_bytes(path.read_bytes()[:4096])
    geometry = PayloadGeometry.from_header(header)
    assert geometry.group_starts == (0, 64, 128, 160)
    assert geometry.start == header.header_length and geometry.record_count == RECORDS
    assert geometry.covering(60, 4) == (0, 64)
    assert geometry.covering(62, 4) == (0, 128)  # spans name and birth
    assert geometry.covering(158, 4) is None  # runs into the next record


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, list[int], int, PayloadGeometry]:
    widths = draw(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=3))
    starts = [0]
    for width in widths:
        starts.append(starts[-1] + width)
    records = draw(st.integers(min_value=0, max_value=12))
    # Few distinct group contents, so identical covering bytes are common.
    pool = draw(
        st.lists(st.binary(min_size=starts[-1], max_size=starts[-1]), min_size=1, max_size=3)
    )
    rows = [draw(st.sampled_from(pool)) for _ in range(records)]
    flip: bool = draw(st.booleans())
    if rows and flip:
        changed = bytearray(rows[0])
        changed[draw(st.integers(0, len(changed) - 1))] ^= 1
        rows[0] = bytes(changed)
    head = draw(st.binary(max_size=8))
    tail = draw(st.binary(max_size=8))
    data = head + b"".join(rows) + tail
    length = draw(st.integers(min_value=1, max_value=5))
    offsets = (
        draw(
            st.lists(
                st.integers(min_value=0, max_value=max(len(data) - length, 0)),
                unique=True,
                max_size=20,
            )
        )
        if len(data) >= length
        else []
    )
    geometry = PayloadGeometry(
        start=len(head), record_count=records, record_bytes=starts[-1], group_starts=tuple(starts)
    )
    return data, sorted(offsets), length, geometry


@given(payloads(), st.booleans())
def test_fast_context_count_agrees_with_naive(
    case: tuple[bytes, list[int], int, PayloadGeometry], without_header: bool
) -> None:
    data, offsets, length, geometry = case
    chosen = None if without_header else geometry
    assert distinct_contexts(data, offsets, length, chosen) == distinct_contexts_naive(
        data, offsets, length, chosen
    )


@given(
    words=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5),
    background=st.binary(min_size=1, max_size=300),
)
def test_all_expectations_at_once_agree_with_one_at_a_time(
    words: list[str], background: bytes
) -> None:
    import party.leak_scan as leak_scan

    patterns, _ = sensitive_patterns(words)
    frequencies = leak_scan._byte_frequencies(background)
    together = leak_scan._expectations(patterns, frequencies, len(background))
    one_by_one = [
        leak_scan._expected_by_chance(pattern.data, frequencies, len(background))
        for pattern in patterns
    ]
    assert np.allclose(together, one_by_one, rtol=1e-9, atol=0.0)

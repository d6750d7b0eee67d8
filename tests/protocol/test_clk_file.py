"""The encoded-file container: round trip, and every corruption refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from protocol.clk_file import (
    HEADER_LENGTH,
    ClkFileHeader,
    ClkFileWriter,
    iter_payload,
    read_clks,
    read_header,
)
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import ClkFileError, ConfigurationError


def write_sample(path: Path, count: int = 5) -> np.ndarray:
    rng = np.random.default_rng(1)
    clks = rng.integers(0, 2**63, size=(count, 16), dtype=np.uint64)
    with ClkFileWriter(
        path, project_id="p1", schema_fingerprint=bytes(range(32)), kcv=b"k" * 16, clk_bits=1024
    ) as writer:
        writer.write(clks[:2])
        writer.write(clks[2:])
    return clks


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.clk"
    clks = write_sample(path)
    header, read = read_clks(path)
    assert header.record_count == 5 and header.clk_bits == 1024 and header.project_id == "p1"
    assert np.array_equal(np.asarray(read), clks)
    assert path.stat().st_size == HEADER_LENGTH + 5 * 128


def test_truncated_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.clk"
    write_sample(path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ClkFileError, match="truncated"):
        read_header(path)


def test_corrupted_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.clk"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[HEADER_LENGTH + 3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ClkFileError, match="digest"):
        read_clks(path)


def test_corrupted_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.clk"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ClkFileError, match="header"):
        read_header(path)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.clk"
    with pytest.raises(RuntimeError):
        with ClkFileWriter(
            path, project_id="p1", schema_fingerprint=bytes(32), kcv=bytes(16), clk_bits=1024
        ) as writer:
            writer.write(np.zeros((1, 16), dtype=np.uint64))
            raise RuntimeError("bad row")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bits", [0, 100, 1000, 65600])
def test_bad_clk_length_is_refused(bits: int) -> None:
    with pytest.raises(ConfigurationError):
        ClkFileHeader(
            project_id="p1",
            schema_fingerprint=bytes(32),
            kcv=bytes(16),
            clk_bits=bits,
            record_count=0,
            payload_sha256=bytes(32),
        )


LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=512, hardening="diffusion:width=3,output_bits=512"),
        GroupLayout(name="birth", bits=256, hardening="none"),
        GroupLayout(name="postcode", bits=256, hardening="balance+blip:flip_per_65536=2048"),
    )
)


def write_grouped(path: Path, count: int = 7) -> np.ndarray:
    clks = np.random.default_rng(2).integers(0, 2**63, size=(count, 16), dtype=np.uint64)
    with ClkFileWriter(
        path,
        project_id="p1",
        schema_fingerprint=bytes(range(32)),
        kcv=b"k" * 16,
        clk_bits=1024,
        layout=LAYOUT,
    ) as writer:
        writer.write(clks)
    return clks


def test_format_2_round_trip_carries_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "g.clk"
    clks = write_grouped(path)
    header, read = read_clks(path)
    assert header.format_version == 2 and header.layout == LAYOUT
    assert header.header_length == 204 + 192 * 3
    assert path.stat().st_size == header.header_length + 7 * 128
    assert np.array_equal(np.asarray(read), clks)
    assert b"".join(iter_payload(path)) == clks.tobytes()
    assert read_header(path) == header


def test_format_1_reads_as_one_record_group(tmp_path: Path) -> None:
    path = tmp_path / "a.clk"
    write_sample(path)
    header = read_header(path)
    assert header.format_version == 1 and header.layout == ClkLayout.single(1024)
    assert header.header_length == HEADER_LENGTH


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (172, "group bits"),
        (172 + 5, "group name"),
        (172 + 192 + 69, "hardening descriptor"),
        (168, "group count"),
    ],
)
def test_a_changed_layout_byte_is_refused(tmp_path: Path, offset: int, what: str) -> None:
    path = tmp_path / "g.clk"
    write_grouped(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ClkFileError):
        read_header(path)


def test_a_re_signed_header_with_a_bad_descriptor_is_refused(tmp_path: Path) -> None:
    # The digest covers the layout; a header whose digest was recomputed over a descriptor
    # outside the grammar is still refused, by the descriptor check.
    path = tmp_path / "g.clk"
    write_grouped(path)
    data = bytearray(path.read_bytes())
    length = 204 + 192 * 3
    start = 172 + 192 + 69
    data[start : start + 4] = b"NONE"
    data[length - 32 : length] = hashlib.sha256(bytes(data[: length - 32])).digest()
    path.write_bytes(bytes(data))
    with pytest.raises(ClkFileError, match="hardening"):
        read_header(path)


def test_a_layout_that_disagrees_with_the_bits_is_refused() -> None:
    fields = dict(
        project_id="p1",
        schema_fingerprint=bytes(32),
        kcv=bytes(16),
        record_count=0,
        payload_sha256=bytes(32),
    )
    with pytest.raises(ConfigurationError, match="add up"):
        ClkFileHeader(clk_bits=512, format_version=2, layout=LAYOUT, **fields)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="format 2"):
        ClkFileHeader(clk_bits=1024, format_version=1, layout=LAYOUT, **fields)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="layout"):
        ClkFileHeader(clk_bits=1024, format_version=2, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", [None, LAYOUT])
def test_a_key_context_travels_in_either_format_and_its_absence_reads_as_before(
    tmp_path: Path, layout: ClkLayout | None
) -> None:
    clks = np.random.default_rng(3).integers(0, 2**63, size=(4, 16), dtype=np.uint64)
    paths = {}
    for context in (None, "spine:people"):
        paths[context] = tmp_path / f"{context is None}.clk"
        with ClkFileWriter(
            paths[context], project_id="p1", schema_fingerprint=bytes(range(32)),
            kcv=b"k" * 16, clk_bits=1024, layout=layout, key_context=context,
        ) as writer:  # fmt: skip
            writer.write(clks)
    plain, spined = read_header(paths[None]), read_header(paths["spine:people"])
    assert plain.key_context is None and spined.key_context == "spine:people"
    # A 72-byte block before the digest; a file without it is the format as it always was.
    assert spined.header_length == plain.header_length + 72
    assert plain.header_length == (HEADER_LENGTH if layout is None else 204 + 192 * 3)
    assert np.array_equal(np.asarray(read_clks(paths["spine:people"])[1]), clks)
    assert spined.layout == plain.layout
    # The digest covers it: one changed byte of the context is refused.
    data = bytearray(paths["spine:people"].read_bytes())
    data[spined.header_length - 32 - 71] ^= 1
    paths["spine:people"].write_bytes(bytes(data))
    with pytest.raises(ClkFileError, match="digest"):
        read_header(paths["spine:people"])


@pytest.mark.parametrize("context", ["people", "spine:", "spine:People", "project:p1", "spine:a b"])
def test_a_key_context_is_a_spine_name(context: str) -> None:
    with pytest.raises(ConfigurationError, match="key context"):
        ClkFileHeader(
            project_id="p1", schema_fingerprint=bytes(32), kcv=bytes(16), clk_bits=1024,
            record_count=0, payload_sha256=bytes(32), key_context=context,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("size", "text", "problem"),
    [
        (0, b"", "key context field is malformed"),  # a block that names nothing
        (72, b"spine:people", "key context field is malformed"),  # longer than its field
        (12, b"spine:people\x00\x01", "key context field is malformed"),  # padding not zero
        (6, b"people", "key context"),  # not a spine's context
        (14, b"spine:Jane Doe", "key context"),  # free text
    ],
)
def test_a_malformed_key_context_block_is_refused_even_under_a_good_digest(
    tmp_path: Path, size: int, text: bytes, problem: str
) -> None:
    path = tmp_path / "spined.clk"
    with ClkFileWriter(
        path, project_id="p1", schema_fingerprint=bytes(range(32)), kcv=b"k" * 16,
        clk_bits=1024, key_context="spine:people",
    ) as writer:  # fmt: skip
        writer.write(np.zeros((2, 16), dtype=np.uint64))
    length = read_header(path).header_length
    data = bytearray(path.read_bytes())
    block = bytes([size]) + text.ljust(71, b"\0")[:71]
    data[length - 32 - 72 : length - 32] = block
    data[length - 32 : length] = hashlib.sha256(bytes(data[: length - 32])).digest()
    path.write_bytes(bytes(data))
    with pytest.raises(ClkFileError, match=problem) as refused:
        read_header(path)
    assert b"Jane" not in text or "Jane" not in str(refused.value)

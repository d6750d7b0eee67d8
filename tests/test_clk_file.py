"""The encoded-file container: round trip, and every corruption refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.clk_file import HEADER_LENGTH, ClkFileHeader, ClkFileWriter, read_clks, read_header
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

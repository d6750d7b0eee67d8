"""The encoded (CLK) file: the one artefact a party sends to the linkage unit.

Format version 1, all integers little-endian. A fixed 200-byte header, then the payload:

    offset  size  field
    0       8     magic b"BLOOMCLK"
    8       2     format version (1)
    10      2     header length in bytes (200)
    12      4     CLK bits (a multiple of 64, 64..65536)
    16      8     record count
    24      32    schema fingerprint (SHA-256 of the canonical schema)
    56      16    key check value (KCV)
    72      32    SHA-256 of the payload
    104     1     project id length n
    105     63    project id (ASCII label, zero padded)
    168     32    SHA-256 of header bytes 0..167
    200     ...   payload: record count x CLK bits / 8 bytes, one CLK after another

CLK bit i is bit (i % 8) of byte (i // 8) of its record, so a record read as little-endian
uint64 words has bit i at bit (i % 64) of word (i // 64): the layout the Dice kernel uses.
Records are in shuffled order; nothing else (no ids, no counts per field) is in the file.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from protocol.atomic_file import atomic_output
from protocol.errors import ClkFileError, ConfigurationError
from protocol.labels import check_label

__all__ = [
    "FORMAT_VERSION",
    "HEADER_LENGTH",
    "MAGIC",
    "ClkFileHeader",
    "ClkFileWriter",
    "check_clk_bits",
    "iter_payload",
    "read_clks",
    "read_header",
]

MAGIC = b"BLOOMCLK"
FORMAT_VERSION = 1
HEADER_LENGTH = 200
_BODY = struct.Struct("<8sHHIQ32s16s32sB63s")  # bytes 0..167
assert _BODY.size == 168
MIN_CLK_BITS = 64
MAX_CLK_BITS = 65536


def check_clk_bits(clk_bits: int) -> int:
    """Return ``clk_bits`` if usable as a CLK length (a multiple of 64 in 64..65536)."""
    if not (MIN_CLK_BITS <= clk_bits <= MAX_CLK_BITS) or clk_bits % 64:
        raise ConfigurationError(
            f"CLK length must be a multiple of 64 between {MIN_CLK_BITS} and {MAX_CLK_BITS} bits"
        )
    return clk_bits


@dataclass(frozen=True, slots=True, kw_only=True)
class ClkFileHeader:
    """Everything an encoded file says about itself; the LU checks it before any comparison."""

    project_id: str
    schema_fingerprint: bytes
    kcv: bytes
    clk_bits: int
    record_count: int
    payload_sha256: bytes
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_label(self.project_id, what="project id")
        check_clk_bits(self.clk_bits)
        if len(self.schema_fingerprint) != 32:
            raise ConfigurationError("schema fingerprint must be 32 bytes (SHA-256)")
        if len(self.kcv) != 16:
            raise ConfigurationError("key check value must be 16 bytes")
        if len(self.payload_sha256) != 32:
            raise ConfigurationError("payload digest must be 32 bytes (SHA-256)")
        if self.record_count < 0:
            raise ConfigurationError("record count cannot be negative")
        if self.format_version != FORMAT_VERSION:
            raise ConfigurationError(f"unsupported CLK file format version {self.format_version}")

    @property
    def clk_bytes(self) -> int:
        """Bytes per CLK."""
        return self.clk_bits // 8

    @property
    def payload_length(self) -> int:
        """Bytes of payload the header promises."""
        return self.record_count * self.clk_bytes

    def to_bytes(self) -> bytes:
        """The 200-byte header, including its own digest."""
        project = self.project_id.encode("ascii")
        body = _BODY.pack(
            MAGIC,
            self.format_version,
            HEADER_LENGTH,
            self.clk_bits,
            self.record_count,
            self.schema_fingerprint,
            self.kcv,
            self.payload_sha256,
            len(project),
            project,
        )
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str | None = None) -> ClkFileHeader:
        """Parse and check a header; any inconsistency is a :class:`ClkFileError`."""
        if len(data) < HEADER_LENGTH:
            raise ClkFileError("file is shorter than a CLK file header", path=path)
        if data[:8] != MAGIC:
            raise ClkFileError("not a bloomlink CLK file (bad magic bytes)", path=path)
        body, digest = data[:168], data[168:HEADER_LENGTH]
        if hashlib.sha256(body).digest() != digest:
            raise ClkFileError("header is corrupted (header digest does not match)", path=path)
        (_, version, length, bits, count, fingerprint, kcv, payload_digest, n, project) = (
            _BODY.unpack(body)
        )
        if version != FORMAT_VERSION or length != HEADER_LENGTH:
            raise ClkFileError(
                f"unsupported CLK file format version {version}; this build reads version "
                f"{FORMAT_VERSION}",
                path=path,
            )
        if n > 63 or project[n:].strip(b"\0"):
            raise ClkFileError("header project id field is malformed", path=path)
        try:
            return cls(
                project_id=project[:n].decode("ascii"),
                schema_fingerprint=fingerprint,
                kcv=kcv,
                clk_bits=bits,
                record_count=count,
                payload_sha256=payload_digest,
                format_version=version,
            )
        except (ConfigurationError, UnicodeDecodeError) as error:
            raise ClkFileError(f"header is invalid: {error}", path=path) from None


class ClkFileWriter:
    """Streams packed CLKs into a new encoded file, atomically.

    Use as a context manager; call :meth:`write` with ``(n, clk_bits // 8)`` uint8 arrays (or
    the same bytes as ``(n, clk_bits // 64)`` uint64). The file appears only when the block
    exits cleanly, with the header's record count and payload digest filled in.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        project_id: str,
        schema_fingerprint: bytes,
        kcv: bytes,
        clk_bits: int,
    ) -> None:
        self._path = Path(path)
        self._fields = {
            "project_id": project_id,
            "schema_fingerprint": schema_fingerprint,
            "kcv": kcv,
            "clk_bits": clk_bits,
        }
        # Validate early, before any work, with a placeholder count and digest.
        ClkFileHeader(record_count=0, payload_sha256=bytes(32), **self._fields)  # type: ignore[arg-type]
        self._clk_bytes = clk_bits // 8
        self._digest = hashlib.sha256()
        self._count = 0
        self._output: BinaryIO | None = None
        self._context: object = None
        self.header: ClkFileHeader | None = None

    def __enter__(self) -> ClkFileWriter:
        self._context = atomic_output(self._path, mode=0o644)
        self._output = self._context.__enter__()
        self._output.write(bytes(HEADER_LENGTH))  # placeholder, rewritten on close
        return self

    def write(self, clks: npt.NDArray[np.uint8] | npt.NDArray[np.uint64]) -> None:
        """Append a block of packed CLKs."""
        assert self._output is not None, "use ClkFileWriter as a context manager"
        data = np.ascontiguousarray(clks).view(np.uint8)
        if data.ndim != 2 or data.shape[1] != self._clk_bytes:
            raise ClkFileError(f"expected CLKs of {self._clk_bytes} bytes each")
        raw = data.tobytes()
        self._digest.update(raw)
        self._output.write(raw)
        self._count += data.shape[0]

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        assert self._output is not None
        if exc_type is None:
            self.header = ClkFileHeader(
                record_count=self._count,
                payload_sha256=self._digest.digest(),
                **self._fields,  # type: ignore[arg-type]
            )
            self._output.seek(0)
            self._output.write(self.header.to_bytes())
        self._context.__exit__(exc_type, exc, traceback)  # type: ignore[attr-defined]


def read_header(path: Path | str) -> ClkFileHeader:
    """Read and check the header of an encoded file, and that the payload length fits it."""
    file_path = Path(path)
    try:
        with file_path.open("rb") as handle:
            header = ClkFileHeader.from_bytes(handle.read(HEADER_LENGTH), path=str(path))
    except OSError as error:
        raise ClkFileError(f"cannot read encoded file: {error.strerror}", path=str(path)) from None
    actual = file_path.stat().st_size - HEADER_LENGTH
    if actual != header.payload_length:
        raise ClkFileError(
            f"payload is {actual} bytes but the header promises {header.payload_length} "
            f"({header.record_count} CLKs of {header.clk_bits} bits); the file is truncated or "
            "padded",
            path=str(path),
        )
    return header


def iter_payload(path: Path | str, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Yield the payload in chunks (for uploads and digests), without loading it whole."""
    with Path(path).open("rb") as handle:
        handle.seek(HEADER_LENGTH)
        while chunk := handle.read(chunk_bytes):
            yield chunk


def read_clks(
    path: Path | str, *, verify: bool = True
) -> tuple[ClkFileHeader, npt.NDArray[np.uint64]]:
    """Return the header and the CLKs as a read-only ``(records, clk_bits // 64)`` uint64 map.

    With ``verify`` the payload digest is checked first, so a corrupted file is refused.
    """
    header = read_header(path)
    if verify:
        digest = hashlib.sha256()
        for chunk in iter_payload(path):
            digest.update(chunk)
        if digest.digest() != header.payload_sha256:
            raise ClkFileError(
                "payload digest does not match the header: the file is corrupted", path=str(path)
            )
    words = header.clk_bits // 64
    if header.record_count == 0:
        return header, np.zeros((0, words), dtype=np.uint64)
    clks = np.memmap(
        path, dtype="<u8", mode="r", offset=HEADER_LENGTH, shape=(header.record_count, words)
    )
    return header, clks

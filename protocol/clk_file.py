"""The encoded (CLK) file: the one artefact a party sends to the linkage unit.

All integers little-endian. A header, then the payload: record count x CLK bits / 8 bytes,
one record after another. Format version 1 (a single record-level CLK, schema v1) has a
fixed 200-byte header:

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
    200     ...   payload

Format version 2 (field groups, schema v2) keeps bytes 0..167 (version 2; bits = the whole
record, every group) and then says which bits are which group and how each was hardened:

    168     2     group count G (1..16)
    170     2     zero
    172     192G  one entry per group, in order:
                    +0    4    the group's bits (after hardening; a multiple of 64)
                    +4    1    name length
                    +5    63   name (ASCII label, zero padded)
                    +68   1    hardening descriptor length
                    +69   123  hardening descriptor (ASCII, protocol/hardening.py, zero padded)
    172+192G 32   SHA-256 of header bytes 0..171+192G
                  (header length H = 204 + 192G)

so the header digest covers the layout, and a reader of either version finds the payload at
the header length (bytes 10..11).

Either version may carry a **key context** (``encode --spine NAME``): what the field keys
and the KCV were derived for in place of the project id, a spine's ``spine:NAME``. It is a
72-byte block just before the header digest (which covers it):

    +0    1     key context length (1..71)
    +1    71    key context (ASCII, ``spine:`` and a label, zero padded)

so the header length is 272 for version 1 and 276 + 192G for version 2; a header without
the block (every file written before it, and every encoding for a project's own context)
reads as before. A name, never secret material: it lets the linkage unit refuse an encoding
made for another context than the project's spine before any byte is stored.

A record's bit i is bit (i % 8) of byte (i // 8) of its record, so a record read as
little-endian uint64 words has bit i at bit (i % 64) of word (i // 64): the layout the Dice
kernel uses, group g in the words ``ClkLayout.word_range(g)``. Records are in shuffled
order; nothing else (no ids, no counts per field) is in the file.
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
from protocol.clk_layout import MAX_GROUPS, ClkLayout, GroupLayout
from protocol.errors import ClkFileError, ConfigurationError, InvariantError
from protocol.labels import check_key_context, check_label

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "GROUPED_FORMAT_VERSION",
    "HEADER_LENGTH",
    "MAGIC",
    "MAX_HEADER_LENGTH",
    "ClkFileHeader",
    "ClkFileWriter",
    "check_clk_bits",
    "iter_payload",
    "read_clks",
    "read_header",
]

MAGIC = b"BLOOMCLK"
FORMAT_VERSION = 1
"""A single record-level CLK (schema v1)."""
GROUPED_FORMAT_VERSION = 2
"""Field groups with their hardening (schema v2)."""
FORMAT_VERSIONS = (FORMAT_VERSION, GROUPED_FORMAT_VERSION)
HEADER_LENGTH = 200
"""The header length of format version 1; version 2's is ``ClkFileHeader.header_length``."""
_BODY = struct.Struct("<8sHHIQ32s16s32sB63s")  # bytes 0..167
if _BODY.size != 168:  # pragma: no cover - the format itself
    raise InvariantError("the CLK file header body must be 168 bytes")
_GROUP_COUNT = struct.Struct("<HH")
_GROUP = struct.Struct("<IB63sB123s")
if _GROUP.size != 192:  # pragma: no cover - the format itself
    raise InvariantError("a CLK file group entry must be 192 bytes")
_KEY_CONTEXT = struct.Struct("<B71s")
MAX_HEADER_LENGTH = (
    _BODY.size + _GROUP_COUNT.size + MAX_GROUPS * _GROUP.size + _KEY_CONTEXT.size + 32
)
MIN_CLK_BITS = 64
MAX_CLK_BITS = 65536


def check_clk_bits(clk_bits: int) -> int:
    """Return ``clk_bits`` if usable as a CLK length (a multiple of 64 in 64..65536)."""
    if not (MIN_CLK_BITS <= clk_bits <= MAX_CLK_BITS) or clk_bits % 64:
        raise ConfigurationError(
            f"CLK length must be a multiple of 64 between {MIN_CLK_BITS} and {MAX_CLK_BITS} bits"
        )
    return clk_bits


def _header_length(version: int, groups: int, *, key_context: bool = False) -> int:
    context = _KEY_CONTEXT.size if key_context else 0
    if version == FORMAT_VERSION:
        return HEADER_LENGTH + context
    return _BODY.size + _GROUP_COUNT.size + groups * _GROUP.size + context + 32


@dataclass(frozen=True, slots=True, kw_only=True)
class ClkFileHeader:
    """Everything an encoded file says about itself; the LU checks it before any comparison.

    ``layout`` is the record's groups (format 2); a format 1 header's is
    ``ClkLayout.single(clk_bits)``, filled in when not given. ``key_context``: what the keys
    and KCV were derived for in place of the project id (a spine's, ``spine:NAME``); None:
    the project id (and every file written before the field).
    """

    project_id: str
    schema_fingerprint: bytes
    kcv: bytes
    clk_bits: int
    record_count: int
    payload_sha256: bytes
    format_version: int = FORMAT_VERSION
    layout: ClkLayout | None = None
    key_context: str | None = None

    def __post_init__(self) -> None:
        check_label(self.project_id, what="project id")
        if self.key_context is not None:
            check_key_context(self.key_context)
        check_clk_bits(self.clk_bits)
        if len(self.schema_fingerprint) != 32:
            raise ConfigurationError("schema fingerprint must be 32 bytes (SHA-256)")
        if len(self.kcv) != 16:
            raise ConfigurationError("key check value must be 16 bytes")
        if len(self.payload_sha256) != 32:
            raise ConfigurationError("payload digest must be 32 bytes (SHA-256)")
        if self.record_count < 0:
            raise ConfigurationError("record count cannot be negative")
        if self.format_version not in FORMAT_VERSIONS:
            raise ConfigurationError(f"unsupported CLK file format version {self.format_version}")
        single = ClkLayout.single(self.clk_bits)
        if self.layout is None:
            if self.format_version == GROUPED_FORMAT_VERSION:
                raise ConfigurationError("a format 2 header needs the record's layout")
            object.__setattr__(self, "layout", single)  # filled in once, at construction
        elif not isinstance(self.layout, ClkLayout):
            raise ConfigurationError("layout must be a ClkLayout")
        elif self.format_version == FORMAT_VERSION and self.layout != single:
            raise ConfigurationError("a format 1 file holds one record-level CLK; use format 2")
        elif self.layout.total_bits != self.clk_bits:
            raise ConfigurationError("the layout's groups must add up to the CLK bits")

    @property
    def clk_layout(self) -> ClkLayout:
        """The record's layout (never None once constructed)."""
        if self.layout is None:
            raise InvariantError("a constructed header always has a layout")
        return self.layout

    @property
    def header_length(self) -> int:
        """Bytes before the payload."""
        return _header_length(
            self.format_version,
            len(self.clk_layout.groups),
            key_context=self.key_context is not None,
        )

    @property
    def clk_bytes(self) -> int:
        """Bytes per CLK."""
        return self.clk_bits // 8

    @property
    def payload_length(self) -> int:
        """Bytes of payload the header promises."""
        return self.record_count * self.clk_bytes

    def to_bytes(self) -> bytes:
        """The header, including its own digest."""
        project = self.project_id.encode("ascii")
        body = _BODY.pack(
            MAGIC,
            self.format_version,
            self.header_length,
            self.clk_bits,
            self.record_count,
            self.schema_fingerprint,
            self.kcv,
            self.payload_sha256,
            len(project),
            project,
        )
        if self.format_version == GROUPED_FORMAT_VERSION:
            groups = self.clk_layout.groups
            body += _GROUP_COUNT.pack(len(groups), 0)
            for group in groups:
                name, hardening = group.name.encode("ascii"), group.hardening.encode("ascii")
                body += _GROUP.pack(group.bits, len(name), name, len(hardening), hardening)
        if self.key_context is not None:
            context = self.key_context.encode("ascii")
            body += _KEY_CONTEXT.pack(len(context), context)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str | None = None) -> ClkFileHeader:
        """Parse and check a header at the start of ``data`` (bytes after it are ignored);
        any inconsistency is a :class:`ClkFileError`."""
        if len(data) < HEADER_LENGTH:
            raise ClkFileError("file is shorter than a CLK file header", path=path)
        if data[:8] != MAGIC:
            raise ClkFileError("not a bloomlink CLK file (bad magic bytes)", path=path)
        version, length = struct.unpack_from("<HH", data, 8)
        groups = 0
        if version == GROUPED_FORMAT_VERSION and len(data) >= _BODY.size + _GROUP_COUNT.size:
            groups = _GROUP_COUNT.unpack_from(data, _BODY.size)[0]
        if version not in FORMAT_VERSIONS:
            raise ClkFileError(
                f"unsupported CLK file format version {version}; this build reads versions "
                f"{', '.join(map(str, FORMAT_VERSIONS))}",
                path=path,
            )
        if not (version == FORMAT_VERSION or 1 <= groups <= MAX_GROUPS) or length not in (
            _header_length(version, groups),
            _header_length(version, groups, key_context=True),
        ):
            raise ClkFileError("header length or group count is malformed", path=path)
        has_context = length == _header_length(version, groups, key_context=True)
        if len(data) < length:
            raise ClkFileError("file is shorter than its CLK file header", path=path)
        body, digest = data[: length - 32], data[length - 32 : length]
        if hashlib.sha256(body).digest() != digest:
            raise ClkFileError("header is corrupted (header digest does not match)", path=path)
        (_, _, _, bits, count, fingerprint, kcv, payload_digest, n, project) = _BODY.unpack_from(
            body
        )
        if n > 63 or project[n:].strip(b"\0"):
            raise ClkFileError("header project id field is malformed", path=path)
        try:
            layout = None
            if version == GROUPED_FORMAT_VERSION:
                if _GROUP_COUNT.unpack_from(body, _BODY.size)[1] != 0:
                    raise ConfigurationError("reserved header bytes must be zero")
                entries = []
                for index in range(groups):
                    group_bits, name_length, name, descriptor_length, descriptor = (
                        _GROUP.unpack_from(
                            body, _BODY.size + _GROUP_COUNT.size + index * _GROUP.size
                        )
                    )
                    if name_length > 63 or name[name_length:].strip(b"\0"):
                        raise ConfigurationError("a group name field is malformed")
                    if descriptor_length > 123 or descriptor[descriptor_length:].strip(b"\0"):
                        raise ConfigurationError("a group hardening field is malformed")
                    entries.append(
                        GroupLayout(
                            name=name[:name_length].decode("ascii"),
                            bits=group_bits,
                            hardening=descriptor[:descriptor_length].decode("ascii"),
                        )
                    )
                layout = ClkLayout(groups=tuple(entries))
            key_context = None
            if has_context:
                size, context = _KEY_CONTEXT.unpack_from(body, len(body) - _KEY_CONTEXT.size)
                if not 1 <= size <= 71 or context[size:].strip(b"\0"):
                    raise ConfigurationError("the key context field is malformed")
                key_context = context[:size].decode("ascii")
            return cls(
                project_id=project[:n].decode("ascii"),
                schema_fingerprint=fingerprint,
                kcv=kcv,
                clk_bits=bits,
                record_count=count,
                payload_sha256=payload_digest,
                format_version=version,
                layout=layout,
                key_context=key_context,
            )
        except (ConfigurationError, UnicodeDecodeError) as error:
            message = error.message if isinstance(error, ConfigurationError) else str(error)
            raise ClkFileError(f"header is invalid: {message}", path=path) from None


class ClkFileWriter:
    """Streams packed CLKs into a new encoded file, atomically.

    Use as a context manager; call :meth:`write` with ``(n, clk_bits // 8)`` uint8 arrays (or
    the same bytes as ``(n, clk_bits // 64)`` uint64). The file appears only when the block
    exits cleanly, with the header's record count and payload digest filled in. Give
    ``layout`` (a schema v2 encoding's groups) for a format 2 file, and ``key_context`` when
    the keys were derived for a spine's context, not the project id.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        project_id: str,
        schema_fingerprint: bytes,
        kcv: bytes,
        clk_bits: int,
        layout: ClkLayout | None = None,
        key_context: str | None = None,
    ) -> None:
        self._path = Path(path)
        self._fields = {
            "key_context": key_context,
            "project_id": project_id,
            "schema_fingerprint": schema_fingerprint,
            "kcv": kcv,
            "clk_bits": clk_bits,
            "layout": layout,
            "format_version": FORMAT_VERSION if layout is None else GROUPED_FORMAT_VERSION,
        }
        # Validate early, before any work, with a placeholder count and digest.
        placeholder = ClkFileHeader(record_count=0, payload_sha256=bytes(32), **self._fields)  # type: ignore[arg-type]
        self._header_length = placeholder.header_length
        self._clk_bytes = clk_bits // 8
        self._digest = hashlib.sha256()
        self._count = 0
        self._output: BinaryIO | None = None
        self._context: object = None
        self.header: ClkFileHeader | None = None

    def __enter__(self) -> ClkFileWriter:
        self._context = atomic_output(self._path, mode=0o644)
        self._output = self._context.__enter__()
        self._output.write(bytes(self._header_length))  # placeholder, rewritten on close
        return self

    def write(self, clks: npt.NDArray[np.uint8] | npt.NDArray[np.uint64]) -> None:
        """Append a block of packed CLKs."""
        if self._output is None:
            raise InvariantError("use ClkFileWriter as a context manager")
        data = np.ascontiguousarray(clks).view(np.uint8)
        if data.ndim != 2 or data.shape[1] != self._clk_bytes:
            raise ClkFileError(f"expected CLKs of {self._clk_bytes} bytes each")
        flat = data.reshape(-1).data  # hashed and written from the array, not a copy
        self._digest.update(flat)
        self._output.write(flat)
        self._count += data.shape[0]

    def payload_sha256(self) -> bytes:
        """SHA-256 of the CLKs written so far (the header's digest, once the block exits)."""
        return self._digest.copy().digest()

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if self._output is None:
            raise InvariantError("use ClkFileWriter as a context manager")
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
            header = ClkFileHeader.from_bytes(handle.read(MAX_HEADER_LENGTH), path=str(path))
    except OSError as error:
        raise ClkFileError(f"cannot read encoded file: {error.strerror}", path=str(path)) from None
    actual = file_path.stat().st_size - header.header_length
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
        handle.seek(ClkFileHeader.from_bytes(handle.read(MAX_HEADER_LENGTH)).header_length)
        while chunk := handle.read(chunk_bytes):
            yield chunk


def read_clks(
    path: Path | str, *, verify: bool = True
) -> tuple[ClkFileHeader, npt.NDArray[np.uint64]]:
    """Return the header and the CLKs as a read-only ``(records, clk_bits // 64)`` uint64 map.

    ``header.layout`` says which words are which group (``ClkLayout.single`` for format 1).
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
        path,
        dtype="<u8",
        mode="r",
        offset=header.header_length,
        shape=(header.record_count, words),
    )
    return header, clks

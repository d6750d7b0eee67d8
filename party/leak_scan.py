"""The leak scanner: checks an encoded file for identifiers before it leaves the department.

Stage: audit, department side (run after encoding, before upload; an auditor can re-run it
on the archived file). Given the file and the sensitive strings (raw values, normalised
values, tokens), it looks for each string, in its given, lower- and upper-case spellings, as

* UTF-8, UTF-16-LE, UTF-16-BE, hex (both cases) and base64 (standard and URL-safe, at all
  three byte alignments, so a value inside a longer base64 text is found too);
* MD5, SHA-1 and SHA-256 digests of its UTF-8 bytes as given, raw and hex (both cases): the
  classic "we hashed it, so it is anonymous" mistake;

and checks the container holds only what the format allows (header parses, payload exactly
the promised length, payload digest matches). Optionally it compares a sample of CLKs with
the caller's *unkeyed* re-encoding of the same records: sharing more bits than chance means the
key was not used.

**Search cost.** Every pattern is at least 4 bytes long. All patterns are indexed by their
first 4 bytes; the file is read through a memory map in 8 MiB chunks, each chunk's 4-byte
windows screened by a compiled pass over a 2^24-bit table (:func:`_screen`), then looked up
among the sorted prefixes; only true prefix hits are compared in full. That is O(file size +
patterns) with small constants: 128 MB against 100k strings (~31 patterns each) takes about
25 s on a Zen 3, half of it building the patterns (docs/audit.md, benchmarks/leak_scan.py),
against O(file size x patterns) for ``bytes.find`` per pattern
(:func:`find_occurrences_naive`, the slow twin kept for tests).

**Chance.** CLK bytes look random, so short patterns occur by chance: a 5-byte name appears
in 128 MB of random bytes with probability ~1e-4. Each pattern's count is compared with a
Poisson expectation from the file's own byte frequencies; a pattern is a finding when its
count is that unlikely (tail probability below ``false_alarm_rate / patterns``). A value
repeated in many records is caught however short; a single occurrence of a very short value
in a large file cannot be told from chance: strings whose plain UTF-8 spelling, seen once,
would pass as chance are counted in ``undetectable`` (their digests are still checked).

**Copies are not evidence.** With field groups, every record sharing a value (a postcode, a
date of birth and sex) carries a byte-identical group encoding, so one chance match inside
it repeats once per such record. The count tested is therefore of distinct *contexts*: an
occurrence inside the payload is placed, through the header, at (record, byte within the
record); two occurrences at the same byte within their records whose covering bytes (the
group encoding or encodings the pattern spans) are identical are one chance event
(:func:`distinct_contexts`, with :func:`distinct_contexts_naive` its slow twin). Anything
outside the payload (the header, trailing bytes) counts once per occurrence, as does a
match across two records. That would also fold a real leak written into group bytes (each
leaked value counted once per distinct group content), so a second test looks across
strings: how many sensitive strings occur at all, against the sum of each string's chance of
occurring (from the same per-pattern expectations), in bands by the decade of that chance
(so many short strings occurring by chance cannot drown a few long ones); a finding of kind
``many-strings`` when a band's count is less likely than ``false_alarm_rate / bands``
(Poisson tail, which bounds the tail of a sum of independent rare events from above). The two tests together false-alarm
at most about twice ``false_alarm_rate``.

Findings name the kind of leak, the byte offset and the index of the sensitive string in
the caller's list, never the value. This is the one module allowed MD5 and SHA-1 (it must
recompute the mistakes it looks for; see the ruff per-file ignore in pyproject.toml).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import dataclasses
import hashlib
import math
import mmap
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import numpy.typing as npt

from protocol.clk_file import MAGIC, MAX_HEADER_LENGTH, ClkFileHeader
from protocol.clk_layout import ClkLayout
from protocol.errors import ClkFileError, ConfigurationError

__all__ = [
    "MIN_PATTERN_BYTES",
    "TRUNCATED_KIND",
    "LeakFinding",
    "LeakScanReport",
    "Pattern",
    "ScanProgress",
    "PayloadGeometry",
    "UnkeyedReencoder",
    "distinct_contexts",
    "distinct_contexts_naive",
    "find_occurrences",
    "find_occurrences_naive",
    "scan_encoded_file",
    "sensitive_patterns",
    "unkeyed_encoding_check",
]

MIN_PATTERN_BYTES = 4
_CHUNK_BYTES = 8 << 20
_TABLE_BITS = 24
_STRING_BANDS = 13  # decades of a string's chance of occurring: 1e-0 .. below 1e-12
_MULTIPLIER = np.uint32(0x9E3779B1)  # Knuth's multiplicative hash: spreads prefixes over the table

# Given the CLKs' record positions, return the caller's unkeyed re-encodings of those records.
TRUNCATED_KIND = "container-truncated"
"""The finding of a file shorter than its header promises: damaged, not a leak."""

UnkeyedReencoder = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.uint64]]
ScanProgress = Callable[[int, int], None]
"""``progress(bytes_searched, bytes_total)`` while the scan searches the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pattern:
    """One byte form of one sensitive string (``source_index`` = its place in the input)."""

    kind: str
    data: bytes
    source_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeakFinding:
    """One problem: what kind, where (first byte offset), how often. Never the value."""

    kind: str
    message: str
    offset: int | None = None
    occurrences: int = 0
    source_index: int | None = None
    expected_by_chance: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LeakScanReport:
    path: str
    file_bytes: int
    strings_checked: int
    patterns_checked: int
    undetectable: int
    findings: tuple[LeakFinding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def truncated_only(self) -> bool:
        """The file is cut off and nothing else was found: a damaged file, not a leak."""
        return bool(self.findings) and all(f.kind == TRUNCATED_KIND for f in self.findings)

    def to_record(self) -> dict[str, object]:
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "strings_checked": self.strings_checked,
            "patterns_checked": self.patterns_checked,
            "undetectable": self.undetectable,
            "clean": self.clean,
            "findings": [
                {
                    "kind": finding.kind,
                    "message": finding.message,
                    "offset": finding.offset,
                    "occurrences": finding.occurrences,
                    "source_index": finding.source_index,
                    "expected_by_chance": finding.expected_by_chance,
                }
                for finding in self.findings
            ],
        }


def _base64_forms(data: bytes) -> list[tuple[str, bytes]]:
    """Base64 text that must appear wherever ``data`` is base64-encoded, at any alignment.

    With ``k`` bytes before it, only the characters whose 6 bits all come from ``data`` are
    fixed; those are the slice kept for each alignment.
    """
    forms: list[tuple[str, bytes]] = []
    for lead in range(3):
        encoded = base64.b64encode(bytes(lead) + data)
        start = -(-8 * lead // 6)
        stop = (8 * (lead + len(data))) // 6
        piece = encoded[start:stop]
        forms.append(("base64", piece))
        urlsafe = piece.translate(bytes.maketrans(b"+/", b"-_"))
        if urlsafe != piece:
            forms.append(("base64-urlsafe", urlsafe))
    return forms


def sensitive_patterns(strings: Iterable[str]) -> tuple[list[Pattern], int]:
    """Every byte form searched for, and the number of strings they came from.

    Forms shorter than :data:`MIN_PATTERN_BYTES` are dropped (random bytes contain them
    anyway). Duplicate forms keep the first string's index.
    """
    patterns: list[Pattern] = []
    seen: set[bytes] = set()
    count = 0
    for index, value in enumerate(strings):
        count += 1
        if not isinstance(value, str):
            raise ConfigurationError(f"sensitive string {index} is not text")
        if not value:
            continue
        forms: list[tuple[str, bytes]] = []
        # Digests of the string as given (the caller passes raw and normalised spellings);
        # text forms in all three cases, since a careless export may change case.
        given = value.encode("utf-8", "surrogatepass")
        for name, function in (
            ("md5", hashlib.md5),
            ("sha1", hashlib.sha1),
            ("sha256", hashlib.sha256),
        ):
            digest = function(given).digest()
            forms.append((f"{name}-raw", digest))
            forms.append((f"{name}-hex", digest.hex().encode("ascii")))
            forms.append((f"{name}-hex", digest.hex().upper().encode("ascii")))
        for variant in dict.fromkeys((value, value.lower(), value.upper())):
            utf8 = variant.encode("utf-8", "surrogatepass")
            forms.extend(
                [
                    ("raw-utf-8", utf8),
                    ("raw-utf-16-le", variant.encode("utf-16-le", "surrogatepass")),
                    ("raw-utf-16-be", variant.encode("utf-16-be", "surrogatepass")),
                    ("hex", utf8.hex().encode("ascii")),
                    ("hex", utf8.hex().upper().encode("ascii")),
                    *_base64_forms(utf8),
                ]
            )
        for kind, data in forms:
            if len(data) >= MIN_PATTERN_BYTES and data not in seen:
                seen.add(data)
                patterns.append(Pattern(kind=kind, data=data, source_index=index))
    return patterns, count


def find_occurrences_naive(data: bytes, patterns: Sequence[Pattern]) -> dict[int, list[int]]:
    """Every offset of every pattern, by ``bytes.find`` per pattern: the slow obvious twin."""
    found: dict[int, list[int]] = {}
    for number, pattern in enumerate(patterns):
        start = data.find(pattern.data)
        while start != -1:
            found.setdefault(number, []).append(start)
            start = data.find(pattern.data, start + 1)
    return found


class _PrefixIndex:
    """Patterns grouped by their first 4 bytes, with a fast screening table."""

    def __init__(self, patterns: Sequence[Pattern]) -> None:
        if any(len(pattern.data) < MIN_PATTERN_BYTES for pattern in patterns):
            raise ConfigurationError("leak-scan patterns must be at least 4 bytes")
        # Arrays, not a dict of lists: ~130 bytes less per pattern at millions of patterns.
        first_words = np.fromiter(
            (int.from_bytes(pattern.data[:4], "little") for pattern in patterns),
            dtype=np.uint32,
            count=len(patterns),
        )
        self.order = np.argsort(first_words, kind="stable")
        self.sorted_words = first_words[self.order]
        self.prefixes = np.unique(self.sorted_words)
        # A bitset, not a bool per slot: at 2 MiB it stays in cache, where 16 MiB of bools
        # made every byte of the file a trip to memory (26 against 8 ns a byte, Zen 3).
        slots = self._slots(self.prefixes).astype(np.uint64)
        self.table = np.zeros(1 << (_TABLE_BITS - 6), dtype=np.uint64)
        np.bitwise_or.at(self.table, slots >> np.uint64(6), np.uint64(1) << (slots & np.uint64(63)))

    def group(self, prefix: int) -> list[int]:
        """Numbers of the patterns starting with these 4 bytes."""
        word = np.uint32(prefix)
        low = int(np.searchsorted(self.sorted_words, word, side="left"))
        high = int(np.searchsorted(self.sorted_words, word, side="right"))
        return [int(number) for number in self.order[low:high]]

    @staticmethod
    def _slots(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        return (words * _MULTIPLIER) >> np.uint32(32 - _TABLE_BITS)

    def candidates(
        self, buffer: bytes | mmap.mmap, start: int, count: int
    ) -> npt.NDArray[np.int64]:
        """Offsets in ``[start, start + count)`` whose next 4 bytes are some pattern's prefix."""
        data = np.frombuffer(buffer, dtype=np.uint8, count=start + count + 3)
        parts: list[npt.NDArray[np.int64]] = []
        out = np.empty(min(count, _SCREEN_CAPACITY), np.int64)
        position, stop = start, start + count
        while True:
            kept, position = _screen(data, position, stop, self.table, self.prefixes, out)
            parts.append(out[:kept].copy())
            if position >= stop:
                return np.concatenate(parts)


_SCREEN_CAPACITY = 1 << 16
"""Prefix hits kept per call of the screen (random bytes give about one per 16 KiB)."""


@numba.njit(nogil=True, cache=True)
def _screen(  # pragma: no cover - compiled; the naive twin checks it (tests/party)
    data: npt.NDArray[np.uint8],
    start: int,
    stop: int,
    table: npt.NDArray[np.uint64],
    prefixes: npt.NDArray[np.uint32],
    out: npt.NDArray[np.int64],
) -> tuple[int, int]:
    """The offsets in ``[start, stop)`` whose 4 bytes (little-endian) are in ``prefixes``,
    into ``out``: (how many, where it stopped; ``stop`` unless ``out`` filled up). One pass,
    the table screening out nearly every offset before the binary search: numpy's version
    made five whole-chunk temporaries and read a 16 MiB table, 7.6 s of a 1M-record scan."""
    kept = 0
    shift = np.uint64(32 - _TABLE_BITS)
    mask = np.uint64(0xFFFFFFFF)
    multiplier = np.uint64(_MULTIPLIER)
    last = prefixes.size
    for offset in range(start, stop):
        word = (
            np.uint64(data[offset])
            | (np.uint64(data[offset + 1]) << np.uint64(8))
            | (np.uint64(data[offset + 2]) << np.uint64(16))
            | (np.uint64(data[offset + 3]) << np.uint64(24))
        )
        slot = ((word * multiplier) & mask) >> shift
        if not (table[slot >> np.uint64(6)] >> (slot & np.uint64(63))) & np.uint64(1):
            continue
        low, high = 0, last
        while low < high:
            middle = (low + high) // 2
            if np.uint64(prefixes[middle]) < word:
                low = middle + 1
            else:
                high = middle
        if low < last and np.uint64(prefixes[low]) == word:
            if kept == out.size:
                return kept, offset
            out[kept] = offset
            kept += 1
    return kept, stop


def find_occurrences(
    buffer: bytes | mmap.mmap,
    patterns: Sequence[Pattern],
    *,
    progress: ScanProgress | None = None,
) -> dict[int, list[int]]:
    """Every offset of every pattern in ``buffer`` (same answer as the naive twin, fast)."""
    found: dict[int, list[int]] = {}
    size = len(buffer)
    if not patterns or size < MIN_PATTERN_BYTES:
        return found
    index = _PrefixIndex(patterns)
    windows = size - MIN_PATTERN_BYTES + 1
    for start in range(0, windows, _CHUNK_BYTES):
        if progress:
            progress(start, windows)
        count = min(_CHUNK_BYTES, windows - start)
        for offset in index.candidates(buffer, start, count).tolist():
            prefix = int.from_bytes(buffer[offset : offset + 4], "little")
            for number in index.group(prefix):
                data = patterns[number].data
                if buffer[offset : offset + len(data)] == data:
                    found.setdefault(number, []).append(offset)
    if progress:
        progress(windows, windows)
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadGeometry:
    """Where the records lie in an encoded file: ``record_count`` records of
    ``record_bytes`` bytes from byte ``start``; ``group_starts`` is each group's first byte
    within a record, then ``record_bytes``."""

    start: int
    record_count: int
    record_bytes: int
    group_starts: tuple[int, ...]

    def __post_init__(self) -> None:
        starts = self.group_starts
        if (
            self.start < 0
            or self.record_count < 0
            or self.record_bytes < 1
            or len(starts) < 2
            or starts[0] != 0
            or starts[-1] != self.record_bytes
            or any(low >= high for low, high in zip(starts, starts[1:], strict=False))
        ):
            raise ConfigurationError("payload geometry must describe whole, ordered groups")

    @classmethod
    def from_header(cls, header: ClkFileHeader) -> PayloadGeometry:
        return cls(
            start=header.header_length,
            record_count=header.record_count,
            record_bytes=header.clk_bytes,
            group_starts=tuple(8 * word for word in header.clk_layout.word_offsets()),
        )

    @property
    def end(self) -> int:
        return self.start + self.record_count * self.record_bytes

    def covering(self, within: int, length: int) -> tuple[int, int] | None:
        """Bytes ``(first, stop)`` within a record of the groups that a pattern of ``length``
        bytes at byte ``within`` spans; None if it runs past the record's end."""
        if within + length > self.record_bytes:
            return None
        first = bisect.bisect_right(self.group_starts, within) - 1
        last = bisect.bisect_right(self.group_starts, within + length - 1) - 1
        return self.group_starts[first], self.group_starts[last + 1]


def distinct_contexts_naive(
    buffer: bytes | mmap.mmap,
    offsets: Sequence[int],
    length: int,
    geometry: PayloadGeometry | None,
) -> int:
    """How many distinct chance events ``offsets`` (occurrences of a ``length``-byte pattern)
    are: the slow obvious twin of :func:`distinct_contexts`, one key per occurrence."""
    keys: set[tuple[int, int, bytes]] = set()
    for offset in offsets:
        if geometry is None or offset < geometry.start or offset + length > geometry.end:
            keys.add((-1, offset, b""))
            continue
        record, within = divmod(offset - geometry.start, geometry.record_bytes)
        covering = geometry.covering(within, length)
        if covering is None:
            keys.add((-1, offset, b""))
            continue
        base = geometry.start + record * geometry.record_bytes
        keys.add((within, 0, bytes(buffer[base + covering[0] : base + covering[1]])))
    return len(keys)


def distinct_contexts(
    buffer: bytes | mmap.mmap,
    offsets: Sequence[int],
    length: int,
    geometry: PayloadGeometry | None,
) -> int:
    """How many distinct chance events ``offsets`` are: occurrences at the same byte within
    their records whose covering group bytes are identical count once; the rest count once
    each (same answer as :func:`distinct_contexts_naive`, with numpy)."""
    places = np.asarray(offsets, dtype=np.int64)
    if geometry is None or places.size == 0 or geometry.record_count == 0:
        return int(np.unique(places).size)
    inside = (places >= geometry.start) & (places + length <= geometry.end)
    records, within = np.divmod(places - geometry.start, geometry.record_bytes)
    inside &= within + length <= geometry.record_bytes
    total = int(np.unique(places[~inside]).size)
    if not inside.any():
        return total
    payload = np.ndarray(
        shape=(geometry.record_count, geometry.record_bytes),
        dtype=np.uint8,
        buffer=buffer,
        offset=geometry.start,
    )
    records, within = records[inside], within[inside]
    for place in np.unique(within).tolist():
        covering = geometry.covering(place, length)
        if covering is None:  # excluded above; kept for the type checker
            raise ConfigurationError("an occurrence inside a record must lie in its groups")
        rows = np.unique(records[within == place])
        block = np.ascontiguousarray(payload[rows, covering[0] : covering[1]])
        total += int(np.unique(block.view(f"V{block.shape[1]}").reshape(-1)).size)
    return total


def _header_geometry(buffer: bytes | mmap.mmap) -> PayloadGeometry | None:
    """The records' places as the header gives them (only whole records the file holds);
    None when the header does not parse (then every occurrence counts on its own)."""
    try:
        geometry = PayloadGeometry.from_header(
            ClkFileHeader.from_bytes(bytes(buffer[:MAX_HEADER_LENGTH]))
        )
    except (ClkFileError, ConfigurationError):
        return None
    held = max(len(buffer) - geometry.start, 0) // geometry.record_bytes
    return dataclasses.replace(geometry, record_count=min(geometry.record_count, held))


def _byte_frequencies(buffer: bytes | mmap.mmap) -> npt.NDArray[np.float64]:
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(buffer), _CHUNK_BYTES):
        chunk = np.frombuffer(
            buffer, dtype=np.uint8, count=min(_CHUNK_BYTES, len(buffer) - start), offset=start
        )
        counts += np.bincount(chunk, minlength=256)
    total = max(int(counts.sum()), 1)
    # A byte never seen still gets a small chance, so no pattern is "impossible".
    return np.maximum(counts, 0.5) / total


def _expected_by_chance(data: bytes, frequencies: npt.NDArray[np.float64], size: int) -> float:
    log_probability = float(np.log(frequencies[np.frombuffer(data, dtype=np.uint8)]).sum())
    return max(size - len(data) + 1, 0) * math.exp(log_probability)


def _poisson_tail(count: int, expected: float) -> float:
    """P(X >= count) for X ~ Poisson(expected), accurate for tiny tails."""
    if count <= 0:
        return 1.0
    if expected <= 0:
        return 0.0
    if expected >= count:
        return 1.0  # not surprising; the exact value does not matter here
    term = math.exp(-expected + count * math.log(expected) - math.lgamma(count + 1))
    total = 0.0
    for step in range(count, count + 200):
        total += term
        term *= expected / (step + 1)
        if term < total * 1e-16:
            break
    return min(total, 1.0)


def _cut_off_header(buffer: bytes | mmap.mmap) -> bool:
    """The file is the start of a CLK file header and ends before it does."""
    head = bytes(buffer[: len(MAGIC) + 4])
    if head[: len(MAGIC)] != MAGIC[: len(head)]:
        return False
    if len(head) < len(MAGIC) + 4:
        return True
    header_length = int(struct.unpack_from("<HH", head, len(MAGIC))[1])
    return len(buffer) < header_length


def _container_findings(buffer: bytes | mmap.mmap) -> list[LeakFinding]:
    try:
        header = ClkFileHeader.from_bytes(bytes(buffer[:MAX_HEADER_LENGTH]))
    except ClkFileError as error:
        if _cut_off_header(buffer):
            return [
                LeakFinding(
                    kind=TRUNCATED_KIND,
                    message=f"the file is truncated: it has {len(buffer)} bytes, less than "
                    "its CLK file header",
                    offset=len(buffer),
                )
            ]
        return [LeakFinding(kind="container-header", message=error.message, offset=0)]
    findings: list[LeakFinding] = []
    start_of_payload = header.header_length
    expected_end = start_of_payload + header.payload_length
    if len(buffer) > expected_end:
        # Bytes the format has no place for could carry anything: a finding.
        findings.append(
            LeakFinding(
                kind="container-length",
                message=f"the file has trailing bytes after the {header.record_count} CLKs its "
                "header promises",
                offset=expected_end,
            )
        )
    elif len(buffer) < expected_end:
        # A cut-off file (an interrupted copy) is damaged, not evidence of a leak; it is still
        # not clean, and the scan command reports it as a bad file (TRUNCATED_KIND).
        findings.append(
            LeakFinding(
                kind=TRUNCATED_KIND,
                message=f"the file is truncated: it has {len(buffer)} bytes, its header promises "
                f"{expected_end} ({header.record_count} CLKs)",
                offset=len(buffer),
            )
        )
    else:
        digest = hashlib.sha256()
        for start in range(start_of_payload, len(buffer), _CHUNK_BYTES):
            digest.update(buffer[start : min(start + _CHUNK_BYTES, len(buffer))])
        if digest.digest() != header.payload_sha256:
            findings.append(
                LeakFinding(
                    kind="container-digest",
                    message="the payload does not match the digest in the header",
                    offset=start_of_payload,
                )
            )
    return findings


def _excess_sharing(
    left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64]
) -> npt.NDArray[np.float64]:
    """Per row, how many standard deviations more bits ``left`` and ``right`` share than two
    independent random sets of their sizes would (hypergeometric mean and variance). Rows
    where either side is empty or full are left out (they say nothing)."""
    bits = left.shape[1] * 64
    ones_left = np.bitwise_count(left).sum(axis=1, dtype=np.int64).astype(np.float64)
    ones_right = np.bitwise_count(right).sum(axis=1, dtype=np.int64).astype(np.float64)
    shared = np.bitwise_count(left & right).sum(axis=1, dtype=np.int64).astype(np.float64)
    usable = (ones_left > 0) & (ones_right > 0) & (ones_left < bits) & (ones_right < bits)
    mean = ones_left * ones_right / bits
    variance = (
        ones_left
        * ones_right
        * (bits - ones_left)
        * (bits - ones_right)
        / (bits * bits * (bits - 1))
    )
    scores = (shared - mean) / np.sqrt(np.where(usable, variance, 1.0))
    kept: npt.NDArray[np.float64] = np.asarray(scores[usable], dtype=np.float64)
    return kept


def unkeyed_encoding_check(
    clks: npt.NDArray[np.uint64],
    reencode: UnkeyedReencoder,
    *,
    layout: ClkLayout | None = None,
    sample_size: int = 1000,
    margin: float = 1.0,
    rng: np.random.Generator | None = None,
    candidates: npt.NDArray[np.int64] | None = None,
) -> LeakFinding | None:
    """Compare a sample of CLKs with their unkeyed re-encodings; a finding if they are alike.

    Under the key, a CLK's bits are positions no one without the key can predict, so a CLK
    shares about as many bits with its own unkeyed re-encoding as with an unrelated record's.
    Each pair's sharing is scored as standard deviations above what two random sets of their
    sizes share (:func:`_excess_sharing`, so dense and sparse records weigh alike), for the
    records' own pairs and for unrelated pairs (each CLK against the next record's
    re-encoding); the finding is raised when the own pairs score ``margin`` (plus four
    standard errors of the difference) above the unrelated ones on average. An unkeyed
    encoding scores tens above; BLIP's random flips shrink that by about
    ``(1 - 2 * flip probability) ** 2``, still far above the margin below a flip probability
    of about 0.4. Groups are compared one by one (``layout``), and only where set on both
    sides, so a missing group, all zero on both sides, never looks like agreement.

    The sample is drawn from every position, or from ``candidates`` (positions of records the
    caller sampled already, e.g. :func:`party.prepare.prepare_upload`'s one-pass row sample)
    when given.
    """
    pool = np.arange(clks.shape[0], dtype=np.int64) if candidates is None else candidates
    count = len(pool)
    if count < 2:
        return None
    generator = rng if rng is not None else np.random.default_rng()
    positions = np.sort(
        pool[generator.choice(count, size=min(sample_size, count), replace=False)]
    ).astype(np.int64)
    reencoded = np.asarray(reencode(positions), dtype=np.uint64)
    sample = np.asarray(clks[positions], dtype=np.uint64)
    if reencoded.shape != sample.shape:
        raise ConfigurationError(
            "the unkeyed re-encoding must return one CLK per requested position"
        )
    groups = layout or ClkLayout.single(64 * sample.shape[1])
    ranges = [groups.word_range(index) for index in range(len(groups.groups))]
    unrelated = np.roll(reencoded, 1, axis=0)
    own = np.concatenate([_excess_sharing(sample[:, a:b], reencoded[:, a:b]) for a, b in ranges])
    other = np.concatenate([_excess_sharing(sample[:, a:b], unrelated[:, a:b]) for a, b in ranges])
    if own.size == 0 or other.size == 0:
        return None
    own_mean, other_mean = float(own.mean()), float(other.mean())
    # A small sample's means wander: ask for the margin plus four standard errors (variances
    # floored at 1, a score's variance under the key, so three records cannot false-alarm).
    spread = np.sqrt(
        max(float(own.var()), 1.0) / own.size + max(float(other.var()), 1.0) / other.size
    )
    if own_mean - other_mean <= margin + 4.0 * spread:
        return None
    return LeakFinding(
        kind="unkeyed-encoding",
        message=(
            f"CLKs share far more bits with an unkeyed encoding of the same records than with "
            f"unrelated records' ({own_mean:.1f} vs {other_mean:.1f} standard deviations above "
            "chance): the linkage secret was not applied"
        ),
        occurrences=int(positions.size),
    )


def _expectations(
    patterns: Sequence[Pattern], frequencies: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.float64]:
    """Every pattern's chance count (:func:`_expected_by_chance`, for all at once)."""
    if not patterns:
        return np.zeros(0, dtype=np.float64)
    lengths = np.fromiter((len(p.data) for p in patterns), dtype=np.int64, count=len(patterns))
    joined = np.frombuffer(b"".join(p.data for p in patterns), dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    log_probability = np.add.reduceat(np.log(frequencies)[joined], starts)
    expected: npt.NDArray[np.float64] = np.maximum(size - lengths + 1, 0) * np.exp(log_probability)
    return expected


def _pattern_findings(
    buffer: bytes | mmap.mmap,
    patterns: Sequence[Pattern],
    string_count: int,
    false_alarm_rate: float,
    progress: ScanProgress | None = None,
) -> tuple[list[LeakFinding], int]:
    """Findings, and how many strings could hide in plain UTF-8 (one occurrence = chance).

    Per pattern, the Poisson tail of its distinct contexts (:func:`distinct_contexts`);
    across strings, the tail of how many strings occur at all (``many-strings``)."""
    size = len(buffer)
    frequencies = _byte_frequencies(buffer)
    threshold = false_alarm_rate / max(len(patterns), 1)
    detectable: set[int] = set()
    for pattern in patterns:
        if pattern.kind != "raw-utf-8":
            continue
        if _poisson_tail(1, _expected_by_chance(pattern.data, frequencies, size)) < threshold:
            detectable.add(pattern.source_index)
    geometry = _header_geometry(buffer)
    findings: list[LeakFinding] = []
    first_offset: dict[int, int] = {}
    for number, offsets in sorted(find_occurrences(buffer, patterns, progress=progress).items()):
        pattern = patterns[number]
        source = pattern.source_index
        first_offset[source] = min(first_offset.get(source, offsets[0]), offsets[0])
        expected = _expected_by_chance(pattern.data, frequencies, size)
        # Contexts never outnumber copies: only a count surprising as copies needs counting.
        if _poisson_tail(len(offsets), expected) >= threshold:
            continue
        contexts = distinct_contexts(buffer, offsets, len(pattern.data), geometry)
        if _poisson_tail(contexts, expected) >= threshold:
            continue
        findings.append(
            LeakFinding(
                kind=pattern.kind,
                message=(
                    f"sensitive string {source} appears as {pattern.kind} in {contexts} "
                    f"distinct place(s), {len(offsets)} copies (chance would give "
                    f"{expected:.2g})"
                ),
                offset=offsets[0],
                occurrences=contexts,
                source_index=source,
                expected_by_chance=expected,
            )
        )
    aggregate = _many_strings_finding(
        patterns, _expectations(patterns, frequencies, size), first_offset, false_alarm_rate
    )
    if aggregate is not None:
        findings.append(aggregate)
    return findings, string_count - len(detectable)


def _many_strings_finding(
    patterns: Sequence[Pattern],
    expected: npt.NDArray[np.float64],
    first_offset: dict[int, int],
    false_alarm_rate: float,
) -> LeakFinding | None:
    """A finding when more sensitive strings occur at all than chance makes believable.

    Each string occurs by chance with probability ``1 - exp(-sum of its patterns'
    expectations)``. Strings are banded by the decade of that probability (so the many short
    strings that occur by chance anyway cannot drown a few long ones that should not occur
    at all); in each band, the number that occur is compared with the Poisson tail of the
    sum of their probabilities (the Poisson bounds a sum of independent rare events from
    above), at ``false_alarm_rate`` over the bands.
    """
    if not first_offset:
        return None
    sources = np.fromiter((p.source_index for p in patterns), dtype=np.int64, count=len(patterns))
    chances = -np.expm1(-np.bincount(sources, weights=expected))
    with np.errstate(divide="ignore"):
        decades = np.floor(-np.log10(chances))
    bands = np.clip(np.nan_to_num(decades, posinf=_STRING_BANDS), 0, _STRING_BANDS - 1)
    bands = bands.astype(np.int64)
    chance_by_band = np.bincount(bands, weights=chances, minlength=_STRING_BANDS)
    found = np.array(sorted(first_offset), dtype=np.int64)
    found_by_band = np.bincount(bands[found], minlength=_STRING_BANDS)
    tails = [
        _poisson_tail(int(count), float(chance))
        for count, chance in zip(found_by_band, chance_by_band, strict=True)
    ]
    band = int(np.argmin(tails))
    if tails[band] >= false_alarm_rate / _STRING_BANDS:
        return None
    in_band = [int(index) for index in found[bands[found] == band]]
    source = min(in_band, key=lambda index: (first_offset[index], index))
    count, chance = int(found_by_band[band]), float(chance_by_band[band])
    return LeakFinding(
        kind="many-strings",
        message=(
            f"{count} distinct sensitive strings each with a chance of about 1e-{band} "
            f"occur in the file (chance would give {chance:.2g}): values are spread through "
            f"it, each too few times to stand out alone; the earliest is sensitive string "
            f"{source}"
        ),
        offset=first_offset[source],
        occurrences=count,
        source_index=source,
        expected_by_chance=chance,
    )


def scan_encoded_file(
    path: Path | str,
    sensitive_strings: Iterable[str],
    *,
    false_alarm_rate: float = 1e-6,
    unkeyed_reencoder: UnkeyedReencoder | None = None,
    sample_size: int = 1000,
    rng: np.random.Generator | None = None,
    unkeyed_positions: npt.NDArray[np.int64] | None = None,
    progress: ScanProgress | None = None,
) -> LeakScanReport:
    """Scan one encoded file; the report is clean only if nothing was found.

    ``unkeyed_positions``: the positions ``unkeyed_reencoder`` can re-encode (default: all).
    """
    if not 0 < false_alarm_rate < 1:
        raise ConfigurationError("false alarm rate must be between 0 and 1")
    if progress:
        progress(0, max(Path(path).stat().st_size - MIN_PATTERN_BYTES + 1, 0))
    patterns, string_count = sensitive_patterns(sensitive_strings)
    file_path = Path(path)
    try:
        handle = file_path.open("rb")
    except OSError as error:
        raise ClkFileError(f"cannot read encoded file: {error.strerror}", path=str(path)) from None
    with handle:
        size = file_path.stat().st_size
        if size == 0:
            buffer: bytes | mmap.mmap = b""
        else:
            buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            findings = _container_findings(buffer)
            container_ok = not findings
            pattern_findings, undetectable = _pattern_findings(
                buffer, patterns, string_count, false_alarm_rate, progress
            )
            findings.extend(pattern_findings)
            if unkeyed_reencoder is not None and container_ok:
                header = ClkFileHeader.from_bytes(bytes(buffer[:MAX_HEADER_LENGTH]))
                clks = np.frombuffer(
                    buffer,
                    dtype="<u8",
                    offset=header.header_length,
                    count=header.payload_length // 8,
                ).reshape(header.record_count, header.clk_bits // 64)
                finding = unkeyed_encoding_check(
                    clks,
                    unkeyed_reencoder,
                    layout=header.clk_layout,
                    sample_size=sample_size,
                    rng=rng,
                    candidates=unkeyed_positions,
                )
                del clks
                if finding is not None:
                    findings.append(finding)
        finally:
            if isinstance(buffer, mmap.mmap):
                # An exception can leave a numpy view alive; the map then closes when collected.
                with contextlib.suppress(BufferError):
                    buffer.close()
    return LeakScanReport(
        path=str(path),
        file_bytes=size,
        strings_checked=string_count,
        patterns_checked=len(patterns),
        undetectable=undetectable,
        findings=tuple(findings),
    )

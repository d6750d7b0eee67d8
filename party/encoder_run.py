"""An encoder run: extract -> normalise -> tokenise -> encode -> shuffle -> encoded file.

Reads the extract in chunks, encodes them on every core (separate processes, each with its
own encoder built from the secret), keeps at most a few chunks in flight so memory stays flat
however large the file, then writes the CLKs in a fresh random order with the encoded file's
header, and a private positions file (``record_id,position``) that maps each shuffled
position back to the department's own record id. The positions file never leaves the
department. Both files appear only if the whole run succeeds.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import operator
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from party.extract import ExtractChunk, open_extract
from party.mapping import BoundMapping, DepartmentMapping
from protocol.atomic_file import atomic_output
from protocol.clk_file import ClkFileWriter
from protocol.encoding import ClkEncoder
from protocol.errors import ConfigurationError, ExtractError, RecordError, ValueRejectedError
from protocol.labels import check_label
from protocol.schema import LinkageSchema
from protocol.secret import LinkageSecret

__all__ = ["BAD_ROW_POLICIES", "EncodeSummary", "encode_extract"]

BAD_ROW_POLICIES = ("fail", "skip", "blank")
Progress = Callable[[int], None]
"""Called with the number of rows read so far."""

PARALLEL_FROM_BYTES = 4 << 20  # smaller extracts encode in-process: workers cost ~0.5 s to start
_TABLE_ROWS = 1 << 16  # distinct raw values remembered per field (8 MiB at 1024 bits)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeSummary:
    """What an encoder run produced: counts, digests and where the files are (no values)."""

    rows_read: int
    records_encoded: int
    rows_skipped: int
    values_blanked: int
    problems_by_field: dict[str, int] = field(default_factory=dict)
    clk_bits: int
    schema_fingerprint: str
    kcv: str
    payload_sha256: str
    encoded_path: Path
    positions_path: Path
    seconds: float
    workers: int

    @property
    def records_per_second(self) -> float:
        return self.records_encoded / self.seconds if self.seconds > 0 else 0.0

    def one_line(self) -> str:
        """A summary a person can paste into a ticket."""
        skipped = f", {self.rows_skipped} rows skipped" if self.rows_skipped else ""
        blanked = f", {self.values_blanked} values blanked" if self.values_blanked else ""
        return (
            f"encoded {self.records_encoded} of {self.rows_read} rows{skipped}{blanked} into "
            f"{self.encoded_path} ({self.clk_bits}-bit CLKs, schema {self.schema_fingerprint[:12]}, "
            f"KCV {self.kcv[:8]}, payload sha256 {self.payload_sha256[:12]}) in "
            f"{self.seconds:.1f}s ({self.records_per_second:,.0f} records/s on {self.workers} "
            f"process{'es' if self.workers != 1 else ''})"
        )


class _MaskTable:
    """One field's raw value (or, for a salted field, raw value and salt values) -> row of a
    bit-mask table of the field's group, bounded so memory stays flat.

    Row 0 is the empty mask (a missing value). The array grows by doubling up to
    ``capacity`` rows (a field with few distinct values, or a small file, never pays for the
    whole table); when a chunk's new values would not fit, the table starts again (a chunk's
    own distinct values always fit). Rejected values are never remembered, so each
    occurrence is reported.
    """

    __slots__ = ("capacity", "masks", "rows", "used")

    def __init__(self, words: int) -> None:
        self.capacity = _TABLE_ROWS
        self.rows: dict[Any, int] = {}
        self.masks = np.zeros((min(1024, self.capacity), words), dtype=np.uint64)
        self.used = 1

    def make_room(self, count: int) -> bool:
        """Ensure ``count`` more rows fit; True if that meant forgetting every value."""
        forget = self.used + count > self.capacity
        if forget:
            self.capacity = max(self.capacity, count + 1)
            self.rows.clear()
            self.used = 1
        if self.used + count > len(self.masks):
            size = min(self.capacity, max(2 * len(self.masks), self.used + count))
            grown = np.zeros((size, self.masks.shape[1]), dtype=np.uint64)
            grown[: self.used] = self.masks[: self.used]
            self.masks = grown
        return forget

    def add(self, raws: list[Any], masks: npt.NDArray[np.uint64]) -> None:
        """Remember ``raws`` with their masks (call :meth:`make_room` for them first)."""
        start = self.used
        self.masks[start : start + len(raws)] = masks
        self.rows.update(zip(raws, range(start, start + len(raws)), strict=True))
        self.used += len(raws)


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    clks: bytes
    record_ids: list[str]
    row_numbers: list[int]
    skipped: list[tuple[int, str | None, str]]
    blanked: list[tuple[int, str | None, str]]
    # Under the "fail" policy: the first unusable row (row, field, reason). Carried as data,
    # not raised in the worker: our errors take keyword-only context and do not survive
    # pickling back from a worker process (the pool would report a broken process instead).
    failure: tuple[int, str | None, str] | None = None


class _ChunkEncoder:
    """Everything one process needs to encode chunks. Built once per worker."""

    def __init__(
        self,
        schema: LinkageSchema,
        mapping: DepartmentMapping,
        header: list[str],
        secret_material: bytes,
        project_id: str,
        policy: str,
        source: str,
    ) -> None:
        self.bound: BoundMapping = mapping.bind(schema, header, source=source)
        self.encoder = ClkEncoder(schema, LinkageSecret(secret_material), project_id=project_id)
        self.policy = policy
        ranges = [self.encoder.field_word_range(index) for index in range(len(schema.fields))]
        self._tables = [_MaskTable(stop - start) for start, stop in ranges]
        self._ranges = ranges
        # Schema v2 salting: a salted field's bits depend on another field's normalised value,
        # so that field's values are worked out per chunk and the salted field's table is
        # keyed by (raw value, salt values).
        position = {spec.name: index for index, spec in enumerate(schema.fields)}
        self._salt_fields = {
            name: position[name]
            for index in range(len(schema.fields))
            for name in self.encoder.field_salts(index)
        }
        self._salt_cache: dict[str, dict[str, str | None]] = {
            name: {} for name in self._salt_fields
        }

    def _salt_column(self, name: str, column: list[str]) -> list[str | None]:
        """Normalised values of salt field ``name`` (None where missing or rejected: such a
        value salts nothing, and its own field reports it)."""
        cache = self._salt_cache[name]
        fresh = [raw for raw in dict.fromkeys(column) if raw not in cache]
        if fresh:
            if len(cache) + len(fresh) > _TABLE_ROWS:
                cache.clear()
                fresh = list(dict.fromkeys(column))
            field_index = self._salt_fields[name]
            normalise = self.bound.readers[field_index][2]
            try:
                cache.update(
                    zip(fresh, self.bound.batch_normalisers[field_index](fresh), strict=True)
                )
            except ValueRejectedError:
                for raw in fresh:
                    try:
                        cache[raw] = normalise(raw)
                    except ValueRejectedError:
                        cache[raw] = None
        return list(map(cache.__getitem__, column))

    def encode(self, chunk: ExtractChunk) -> _ChunkResult:
        """Encode a chunk column by column: per-row interpreter work is what limits a Python
        encoder, so each field's raw values become rows of a mask table (each distinct new
        value normalised once, all of them encoded in one column call) and the CLKs are the
        OR of the fields' table rows, gathered in numpy."""
        rows = chunk.rows
        first = chunk.first_row
        width = self.bound.width
        problems: dict[int, tuple[str | None, str]] = {}  # row offset -> (field, reason)
        blanked: list[tuple[int, str | None, str]] = []
        if set(map(len, rows)) - {width}:
            blank_row = [""] * width
            fixed = []
            for offset, row in enumerate(rows):
                if len(row) != width:
                    self._reject(
                        problems,
                        offset,
                        first,
                        None,
                        f"has {len(row)} cells but the header has {width}",
                    )
                    row = blank_row
                fixed.append(row)
            rows = fixed
        # Columns by C-level maps (a Python loop indexing every row per field costs more).
        wanted = {self.bound.record_id_index} | {
            index for _, index, _ in self.bound.readers if index is not None
        }
        columns = {index: list(map(operator.itemgetter(index), rows)) for index in wanted}
        record_ids = list(map(str.strip, columns[self.bound.record_id_index]))
        if "" in record_ids or not all(map(str.isprintable, record_ids)):
            for offset, record_id in enumerate(record_ids):
                if not record_id or not record_id.isprintable():
                    self._reject(
                        problems,
                        offset,
                        first,
                        None,
                        "record id is empty or has control characters",
                    )
        clks = np.zeros((len(rows), self.encoder.input_layout.total_words), dtype=np.uint64)
        salt_values = {
            name: (
                self._salt_column(name, columns[column_index])
                if (column_index := self.bound.readers[index][1]) is not None
                else [None] * len(rows)
            )
            for name, index in self._salt_fields.items()
        }
        for field_index, (name, column_index, normalise) in enumerate(self.bound.readers):
            normalise_many = self.bound.batch_normalisers[field_index]
            if column_index is None:
                continue
            table = self._tables[field_index]
            column: list[Any] = columns[column_index]
            salts = self.encoder.field_salts(field_index)
            if salts:  # the table remembers (raw value, salt values) pairs
                column = list(zip(column, *(salt_values[salt] for salt in salts), strict=True))
            codes = list(map(table.rows.get, column))
            if None in codes:
                # Work out each distinct new value once, then look the column up again in C.
                fresh = dict.fromkeys(
                    itertools.compress(column, map(operator.is_, codes, itertools.repeat(None)))
                )
                if table.make_room(len(fresh)):
                    fresh = dict.fromkeys(column)  # forgotten: the whole column is new
                    table.make_room(len(fresh))
                rejected: dict[Any, str] = {}
                raws = list(fresh)  # raw values, or (raw value, salt values) keys
                texts: list[str] = [key[0] for key in raws] if salts else raws
                try:  # normalised as a batch; a rejected value sends us the long way
                    values: list[str | None] = normalise_many(texts)
                except ValueRejectedError:
                    values = []
                    for raw, text in zip(raws, texts, strict=True):
                        try:
                            values.append(normalise(text))
                        except ValueRejectedError as error:
                            rejected[raw] = error.message
                            values.append(None)
                    kept = [raw for raw in raws if raw not in rejected]
                    values = [
                        value
                        for raw, value in zip(raws, values, strict=True)
                        if raw not in rejected
                    ]
                    raws = kept
                present = list(map(operator.is_not, values, itertools.repeat(None)))
                table.rows.update(
                    dict.fromkeys(itertools.compress(raws, map(operator.not_, present)), 0)
                )
                new_raws = list(itertools.compress(raws, present))
                new_values: list[str] = list(itertools.compress(values, present))  # type: ignore[arg-type]
                if new_values:
                    salt_columns = {
                        salt: [key[1 + place] for key in new_raws]
                        for place, salt in enumerate(salts)
                    }
                    table.add(
                        new_raws,
                        self.encoder.field_masks(field_index, new_values, salt_columns or None),
                    )
                codes = list(map(table.rows.get, column))
                if rejected:
                    blank_allowed = (
                        self.policy == "blank" and name not in self.bound.required_fields
                    )
                    for offset in [i for i, code in enumerate(codes) if code is None]:
                        reason = rejected[column[offset]]
                        if blank_allowed:
                            blanked.append((first + offset, name, reason))
                        else:
                            self._reject(problems, offset, first, name, reason)
                        codes[offset] = 0
            start, stop = self._ranges[field_index]
            clks[:, start:stop] |= table.masks[np.asarray(codes, dtype=np.intp)]
        if problems:
            keep = [offset for offset in range(len(rows)) if offset not in problems]
            clks = clks[np.asarray(keep, dtype=np.intp)]
            record_ids = [record_ids[offset] for offset in keep]
            row_numbers = [first + offset for offset in keep]
        else:
            row_numbers = list(range(first, first + len(rows)))
        skipped = [
            (first + offset, field, reason) for offset, (field, reason) in sorted(problems.items())
        ]
        if self.policy == "fail" and skipped:
            # Report the chunk's first bad row, whichever field or check found it.
            return _ChunkResult(b"", [], [], [], [], failure=skipped[0])
        return _ChunkResult(
            self.encoder.harden(clks).tobytes(), record_ids, row_numbers, skipped, blanked
        )

    def _reject(
        self,
        problems: dict[int, tuple[str | None, str]],
        offset: int,
        first: int,
        field_name: str | None,
        reason: str,
    ) -> None:
        problems.setdefault(offset, (field_name, reason))


_worker: _ChunkEncoder | None = None


def _start_worker(*args: object) -> None:
    global _worker
    _worker = _ChunkEncoder(*args)  # type: ignore[arg-type]


def _encode_in_worker(chunk: ExtractChunk) -> _ChunkResult:
    assert _worker is not None
    return _worker.encode(chunk)


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _fresh_generator() -> np.random.Generator:
    # The shuffle only has to be unpredictable to the linkage unit, which never sees it; a
    # PCG64 stream seeded with 128 bits from the OS CSPRNG gives that at numpy speed.
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _first_repeated_id(digests: npt.NDArray[np.int64], ids_scratch: Path) -> tuple[int, int] | None:
    """The record indices (earlier, later) of the first record whose id repeats an earlier
    one, or None. Equal digests are only candidates: their ids are compared to confirm."""
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(same) == 0:
        return None
    candidates = set(order[same].tolist()) | set(order[same + 1].tolist())
    last = max(candidates)
    first_seen: dict[str, int] = {}
    best: tuple[int, int] | None = None
    with ids_scratch.open("r", encoding="utf-8", newline="\n") as ids:
        for index, line in enumerate(ids):
            if index > last:
                break
            if index in candidates:
                earlier = first_seen.setdefault(line, index)
                if earlier != index and (best is None or index < best[1]):
                    best = (earlier, index)
    return best


_BUCKET_BYTES = 8 << 20  # CLKs per shuffle bucket: what the shuffle holds at once


def _write_shuffled(
    writer: ClkFileWriter, clk_scratch: Path, position_of: npt.NDArray[np.int64], clk_bytes: int
) -> None:
    """Write the scratch CLKs (extract order) so that record i lands at ``position_of[i]``,
    holding one bucket of CLKs at a time however large the file.

    Random reads of the scratch file would map all of it (the kernel faults pages in around
    each read), so the shuffle goes through buckets of consecutive output positions: pass 1
    reads the scratch file in order and appends each record to its bucket's region of a
    second scratch file; pass 2 reads one region at a time and puts its records in order.
    """
    count = len(position_of)
    bucket_rows = max(1, _BUCKET_BYTES // clk_bytes)
    buckets = position_of // bucket_rows
    bucketed = clk_scratch.with_name("bucketed.bin")
    # Within a region, records are in extract order, so a stable sort names them.
    order = np.argsort(buckets, kind="stable")
    cursor = np.arange(0, count, bucket_rows, dtype=np.int64)  # next free row per bucket
    with clk_scratch.open("rb") as source, bucketed.open("w+b") as regions:
        descriptor = regions.fileno()
        for start in range(0, count, bucket_rows):
            block = np.fromfile(source, dtype=np.uint8, count=bucket_rows * clk_bytes)
            block = block.reshape(-1, clk_bytes)
            block_buckets = buckets[start : start + len(block)]
            within = np.argsort(block_buckets, kind="stable")
            grouped = block[within]
            present, first, sizes = np.unique(
                block_buckets[within], return_index=True, return_counts=True
            )
            for bucket, low, size in zip(
                present.tolist(), first.tolist(), sizes.tolist(), strict=True
            ):
                os.pwrite(
                    descriptor,
                    grouped[low : low + size].tobytes(),
                    int(cursor[bucket]) * clk_bytes,
                )
                cursor[bucket] += size
        for low in range(0, count, bucket_rows):
            high = min(count, low + bucket_rows)
            region = os.pread(descriptor, (high - low) * clk_bytes, low * clk_bytes)
            rows = np.frombuffer(region, dtype=np.uint8).reshape(-1, clk_bytes)
            shuffled = np.empty_like(rows)
            shuffled[position_of[order[low:high]] - low] = rows
            writer.write(shuffled)


_IDS_BLOCK_CHARS = 1 << 20  # record id text read per positions-file block


def _write_positions(
    positions_path: Path, ids_scratch: Path, position_of: npt.NDArray[np.int64]
) -> None:
    """The private ``record_id,position`` file, in extract order, written atomically."""
    with (
        atomic_output(positions_path, mode=0o600) as positions_out,
        ids_scratch.open("r", encoding="utf-8", newline="\n") as ids_in,
    ):
        positions_out.write(b"record_id,position\n")
        done = 0
        rest = ""
        # Whole lines per block, cut at the last newline; the lines are laid out by slice
        # assignment and one join, not a format call per record.
        while block := ids_in.read(_IDS_BLOCK_CHARS):
            block = rest + block
            cut = block.rfind("\n") + 1
            block, rest = block[:cut], block[cut:]
            record_ids = block.split("\n")
            record_ids.pop()  # what follows the last newline: nothing
            if "," in block or '"' in block:
                record_ids = [
                    '"' + record_id.replace('"', '""') + '"'
                    if "," in record_id or '"' in record_id
                    else record_id
                    for record_id in record_ids
                ]
            count = len(record_ids)
            pieces = [","] * (4 * count)  # id , position newline
            pieces[0::4] = record_ids
            pieces[2::4] = map(str, position_of[done : done + count].tolist())
            pieces[3::4] = ["\n"] * count
            done += count
            positions_out.write("".join(pieces).encode("utf-8", "surrogateescape"))
        assert not rest, "every record id in the scratch file ends with a newline"


def encode_extract(
    *,
    extract_path: Path | str,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    secret: LinkageSecret,
    project_id: str,
    encoded_path: Path | str,
    positions_path: Path | str,
    bad_rows: str = "fail",
    workers: int | None = None,
    chunk_rows: int = 20_000,
    progress: Progress | None = None,
    generator: np.random.Generator | None = None,
) -> EncodeSummary:
    """Encode an extract into an encoded file and a private positions file.

    ``bad_rows``: ``fail`` stops at the first unusable row (nothing is written); ``skip``
    leaves such rows out and counts them; ``blank`` treats an unusable value as missing.
    """
    started = time.perf_counter()
    check_label(project_id, what="project id")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ConfigurationError(f"bad-row policy must be one of {', '.join(BAD_ROW_POLICIES)}")
    if workers is not None and workers < 1:
        raise ConfigurationError("workers must be at least 1 (or left out to use every core)")
    encoded_path, positions_path = Path(encoded_path), Path(positions_path)
    if encoded_path.resolve() == positions_path.resolve():
        raise ConfigurationError("the encoded file and the positions file must be different paths")
    if Path(extract_path).resolve() in (encoded_path.resolve(), positions_path.resolve()):
        raise ConfigurationError("an output path is the extract itself; choose another --out")
    reader = open_extract(extract_path, chunk_rows=chunk_rows)
    source = str(extract_path)
    try:  # the extract is closed on every path out, so a bad row does not leave it open
        local = _ChunkEncoder(
            schema, mapping, reader.header, secret.material(), project_id, bad_rows, source
        )
        encoded_path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".bloomlink-encode-", dir=encoded_path.parent))
    except BaseException:
        reader.close()
        raise
    clk_bytes = schema.encoded_bits // 8
    size = Path(extract_path).stat().st_size
    process_count = workers or _default_workers()
    if size < PARALLEL_FROM_BYTES:
        process_count = 1

    try:
        clk_scratch = scratch / "clks.bin"
        ids_scratch = scratch / "ids.txt"
        counts = {"read": 0, "encoded": 0}
        skipped_rows = 0
        blanked_values = 0
        problems: collections.Counter[str] = collections.Counter()
        row_numbers: list[npt.NDArray[np.int64]] = []
        # Python's string hash (SipHash, keyed per process) finds repeated record ids in 8
        # bytes a row; a repeat it reports is confirmed on the ids themselves before failing.
        id_digests: list[npt.NDArray[np.int64]] = []

        with (
            clk_scratch.open("wb") as clk_out,
            ids_scratch.open("w", encoding="utf-8", newline="\n") as ids_out,
        ):

            def collect(result: _ChunkResult, rows_in_chunk: int) -> None:
                nonlocal skipped_rows, blanked_values
                if result.failure is not None:
                    row, field_name, reason = result.failure
                    raise RecordError(reason, row=row, field=field_name)
                clk_out.write(result.clks)
                if result.record_ids:
                    ids_out.write("\n".join(result.record_ids) + "\n")
                counts["read"] += rows_in_chunk
                counts["encoded"] += len(result.record_ids)
                skipped_rows += len(result.skipped)
                blanked_values += len(result.blanked)
                for _, field_name, _ in result.skipped + result.blanked:
                    problems[field_name or "(row)"] += 1
                row_numbers.append(np.asarray(result.row_numbers, dtype=np.int64))
                id_digests.append(
                    np.fromiter(map(hash, result.record_ids), np.int64, len(result.record_ids))
                )
                if progress:
                    progress(counts["read"])

            if process_count == 1:
                for chunk in reader:
                    collect(local.encode(chunk), len(chunk.rows))
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(
                    max_workers=process_count,
                    mp_context=context,
                    initializer=_start_worker,
                    initargs=(
                        schema,
                        mapping,
                        reader.header,
                        secret.material(),
                        project_id,
                        bad_rows,
                        source,
                    ),
                ) as pool:
                    pending: collections.deque[tuple[Future[_ChunkResult], int]] = (
                        collections.deque()
                    )
                    for chunk in reader:
                        pending.append((pool.submit(_encode_in_worker, chunk), len(chunk.rows)))
                        if len(pending) >= 2 * process_count:
                            future, rows = pending.popleft()
                            collect(future.result(), rows)
                    while pending:
                        future, rows = pending.popleft()
                        collect(future.result(), rows)

        record_count = counts["encoded"]
        if record_count == 0:
            raise ExtractError(
                f"none of the {counts['read']} rows could be encoded (all were skipped)",
                path=source,
            )
        repeat = _first_repeated_id(np.concatenate(id_digests), ids_scratch)
        id_digests.clear()  # what the shuffle needs per record is its 8-byte position only
        if repeat is not None:
            all_rows = np.concatenate(row_numbers)
            raise RecordError(
                f"record id repeats the id of row {int(all_rows[repeat[0]])}; record ids must "
                "be unique",
                row=int(all_rows[repeat[1]]),
            )

        permutation = (generator or _fresh_generator()).permutation(record_count)
        position_of = np.empty(record_count, dtype=np.int64)
        position_of[permutation] = np.arange(record_count, dtype=np.int64)
        del permutation
        # Both files or neither: the positions file is committed inside the encoded file's
        # block (so a failure writing it leaves no encoded file), and removed again if the
        # encoded file then fails to commit.
        positions_committed = False
        try:
            with ClkFileWriter(
                encoded_path,
                project_id=project_id,
                schema_fingerprint=schema.fingerprint,
                kcv=local.encoder.kcv,
                clk_bits=schema.encoded_bits,
                layout=schema.layout if schema.grouped else None,
            ) as writer:
                _write_shuffled(writer, clk_scratch, position_of, clk_bytes)
                _write_positions(positions_path, ids_scratch, position_of)
                positions_committed = True
        except BaseException:
            if positions_committed:
                positions_path.unlink(missing_ok=True)
            raise
        assert writer.header is not None
        return EncodeSummary(
            rows_read=counts["read"],
            records_encoded=record_count,
            rows_skipped=skipped_rows,
            values_blanked=blanked_values,
            problems_by_field=dict(problems),
            clk_bits=schema.encoded_bits,
            schema_fingerprint=schema.fingerprint.hex(),
            kcv=local.encoder.kcv.hex(),
            payload_sha256=writer.header.payload_sha256.hex(),
            encoded_path=encoded_path,
            positions_path=positions_path,
            seconds=time.perf_counter() - started,
            workers=process_count,
        )
    finally:
        reader.close()
        shutil.rmtree(scratch, ignore_errors=True)

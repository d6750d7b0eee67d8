"""Storage: the linkage unit's durable state (SQLite, WAL) and payload files.

Everything a restarted linkage unit needs is here: projects, members, uploads with their
committed byte offset, runs with progress and check outcome, link keys. Payloads live
under ``<data dir>/payloads/<project>/``: a ``.partial`` file (the encoded-file header, then
the payload bytes committed so far) becomes ``<party>.clk`` by an fsync'd rename only when
the whole payload hashes to the header's digest, so nothing half-written is ever used.
A chunk is committed when its bytes are fsync'd and the new offset is in the database; a
crash between the two leaves a tail that the next append truncates away.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.atomic_file import fsync_directory
from protocol.clk_file import HEADER_LENGTH
from protocol.errors import (
    AlreadyExistsError,
    ConfigurationError,
    InvalidRequestError,
    ResourceLimitError,
)
from protocol.messages import (
    BlockingMode,
    LinkKeyMode,
    ProjectSettings,
    RunState,
    UploadHeader,
    UploadState,
)

__all__ = ["RunRecord", "Storage", "UploadRecord", "out_of_space"]

_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
SPACE_MARGIN_BYTES = 16 << 20
"""Free space kept beyond a payload's remaining bytes (database, audit log, WAL)."""


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` means the disk (or a file-size or quota limit) is full."""
    if isinstance(error, OSError):
        return error.errno in _OUT_OF_SPACE
    # SQLite reports ENOSPC as "database or disk is full" and EFBIG as "disk I/O error".
    return isinstance(error, sqlite3.OperationalError) and (
        "full" in str(error) or "disk I/O" in str(error)
    )


def _space_error() -> ResourceLimitError:
    return ResourceLimitError(
        "the linkage unit is out of disk space; nothing partial was kept past the last "
        "committed offset. Retry once the operator has freed space"
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id TEXT PRIMARY KEY,
    settings_json TEXT NOT NULL,
    settings_fingerprint TEXT NOT NULL,
    schema_fingerprint BLOB NOT NULL,
    threshold REAL,
    blocking TEXT NOT NULL,
    link_key_mode TEXT NOT NULL,
    retention_days INTEGER NOT NULL,
    auto_run INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    project_id TEXT NOT NULL REFERENCES projects(project_id),
    party TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    PRIMARY KEY (project_id, party)
);
CREATE TABLE IF NOT EXISTS uploads (
    project_id TEXT NOT NULL REFERENCES projects(project_id),
    party TEXT NOT NULL,
    state TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    schema_fingerprint BLOB NOT NULL,
    kcv BLOB NOT NULL,
    clk_bits INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    payload_sha256 BLOB NOT NULL,
    committed_bytes INTEGER NOT NULL,
    completed_at REAL,
    PRIMARY KEY (project_id, party)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(project_id),
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    stage TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    check_party TEXT NOT NULL DEFAULT '',
    check_aspect TEXT NOT NULL DEFAULT '',
    cluster_count INTEGER NOT NULL DEFAULT 0,
    linked_record_count INTEGER NOT NULL DEFAULT 0,
    comparisons INTEGER NOT NULL DEFAULT 0,
    threshold REAL,
    threshold_method TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS key_sets (
    project_id TEXT NOT NULL,
    party TEXT NOT NULL,
    run_id TEXT NOT NULL,
    key_count INTEGER NOT NULL,
    keys_sha256 TEXT NOT NULL,
    PRIMARY KEY (project_id, party)
);
CREATE TABLE IF NOT EXISTS link_keys (
    project_id TEXT NOT NULL,
    party TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    position INTEGER NOT NULL,
    link_key TEXT NOT NULL,
    PRIMARY KEY (project_id, party, ordinal)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_releases (
    project_id TEXT NOT NULL,
    party TEXT NOT NULL,
    released_at REAL NOT NULL,
    PRIMARY KEY (project_id, party)
);
-- Nonces of manifests whose uploads were committed: a manifest vouches for one upload only.
CREATE TABLE IF NOT EXISTS manifest_nonces (
    nonce TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    party TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL
);
"""


# Columns added to ``runs`` after its first release, as (name, declaration).
_ADDED_RUN_COLUMNS = (("threshold", "REAL"), ("threshold_method", "TEXT NOT NULL DEFAULT ''"))


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRecord:
    header: UploadHeader
    state: UploadState
    committed_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    run_id: str
    project_id: str
    state: RunState
    stage: str
    done: int
    total: int
    check_party: str
    check_aspect: str
    cluster_count: int
    linked_record_count: int
    comparisons: int
    finished_at: float | None
    threshold: float | None = None
    threshold_method: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySet:
    run_id: str
    key_count: int
    keys_sha256: str


class Storage:
    """The linkage unit's state under one data directory. Thread-safe (one lock)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
        except OSError as error:
            raise ConfigurationError(
                f"cannot use data directory {self.data_dir}: {error.strerror}"
            ) from None
        self.payload_dir = self.data_dir / "payloads"
        self.payload_dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / "state.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        # A state file from an older release lacks columns added since: add them with their
        # defaults rather than refuse to start an LU that has been running for months.
        present = {str(row[1]) for row in self._db.execute("PRAGMA table_info(runs)")}
        for name, declaration in _ADDED_RUN_COLUMNS:
            if name not in present:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions -----------------------------------------------------------------

    def _write(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, parameters in statements:
                    self._db.execute(sql, parameters)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Rows are Any: SQLite columns are typed by the schema above, and converted on read.
    def _one(self, sql: str, parameters: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, parameters).fetchone()
            return row

    def _all(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())

    # -- projects ---------------------------------------------------------------------

    def create_project(self, settings: ProjectSettings) -> None:
        if self.project(settings.project_id) is not None:
            raise AlreadyExistsError("a project with this id exists; choose another id")
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "INSERT INTO projects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    settings.project_id,
                    settings.canonical_json(),
                    settings.fingerprint,
                    settings.schema_fingerprint,
                    settings.threshold,
                    settings.blocking,
                    str(settings.link_key_mode),
                    settings.retention_days,
                    int(settings.auto_run),
                    time.time(),
                ),
            )
        ]
        statements += [
            ("INSERT INTO members VALUES (?, ?, ?)", (settings.project_id, party, ordinal))
            for ordinal, party in enumerate(settings.members)
        ]
        self._write(statements)

    def project(self, project_id: str) -> ProjectSettings | None:
        row = self._one(
            "SELECT schema_fingerprint, threshold, blocking, link_key_mode, retention_days, "
            "auto_run FROM projects WHERE project_id = ?",
            (project_id,),
        )
        if row is None:
            return None
        members = self._all(
            "SELECT party FROM members WHERE project_id = ? ORDER BY ordinal", (project_id,)
        )
        fingerprint, threshold, blocking, mode, retention, auto_run = row
        return ProjectSettings(
            project_id=project_id,
            members=tuple(str(member[0]) for member in members),
            schema_fingerprint=bytes(fingerprint),
            threshold=None if threshold is None else float(threshold),
            blocking=BlockingMode(str(blocking)),
            link_key_mode=LinkKeyMode(str(mode)),
            retention_days=int(retention),
            auto_run=bool(auto_run),
        )

    # -- uploads ----------------------------------------------------------------------

    def _partial_path(self, project_id: str, party: str) -> Path:
        return self.payload_dir / project_id / f"{party}.partial"

    def payload_path(self, project_id: str, party: str) -> Path:
        """The complete encoded file (header + payload) of a committed upload."""
        return self.payload_dir / project_id / f"{party}.clk"

    def upload(self, project_id: str, party: str) -> UploadRecord | None:
        row = self._one(
            "SELECT state, format_version, schema_fingerprint, kcv, clk_bits, record_count, "
            "payload_sha256, committed_bytes FROM uploads WHERE project_id = ? AND party = ?",
            (project_id, party),
        )
        if row is None:
            return None
        state, version, fingerprint, kcv, bits, count, digest, committed = row
        header = UploadHeader(
            project_id=project_id,
            party_id=party,
            format_version=int(version),
            schema_fingerprint=bytes(fingerprint),
            kcv=bytes(kcv),
            clk_bits=int(bits),
            record_count=int(count),
            payload_sha256=bytes(digest),
        )
        return UploadRecord(
            header=header,
            state=UploadState(str(state)),
            committed_bytes=int(committed),
        )

    def begin_upload(self, header: UploadHeader) -> None:
        """Start a fresh partial upload (replacing any partial one for this party)."""
        path = self._partial_path(header.project_id, header.party_id)
        path.parent.mkdir(exist_ok=True)
        try:
            with path.open("wb") as handle:
                handle.write(header.clk_file_header.to_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            fsync_directory(path.parent)
        except OSError as error:
            if out_of_space(error):
                path.unlink(missing_ok=True)
                raise _space_error() from None
            raise
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL)",
                    (
                        header.project_id,
                        header.party_id,
                        str(UploadState.PARTIAL),
                        header.format_version,
                        header.schema_fingerprint,
                        header.kcv,
                        header.clk_bits,
                        header.record_count,
                        header.payload_sha256,
                    ),
                )
            ]
        )

    def append(self, project_id: str, party: str, *, committed: int, data: bytes) -> int:
        """Durably append ``data`` at payload offset ``committed``; return the new offset."""
        path = self._partial_path(project_id, party)
        # Unbuffered, so a failed write leaves no buffer behind to fail again on close.
        with path.open("r+b", buffering=0) as handle:
            # Drop any tail written before a crash but never committed.
            handle.truncate(HEADER_LENGTH + committed)
            handle.seek(HEADER_LENGTH + committed)
            try:
                view = memoryview(data)
                while view:
                    view = view[handle.write(view) :]
                os.fsync(handle.fileno())
            except OSError as error:
                if not out_of_space(error):
                    raise
                handle.truncate(HEADER_LENGTH + committed)  # give back what was written
                raise _space_error() from None
        new_offset = committed + len(data)
        self._write(
            [
                (
                    "UPDATE uploads SET committed_bytes = ? WHERE project_id = ? AND party = ? "
                    "AND committed_bytes = ?",
                    (new_offset, project_id, party, committed),
                )
            ]
        )
        return new_offset

    def check_free_space(self, needed_bytes: int) -> None:
        """Fail fast (before accepting bytes) when the disk cannot hold ``needed_bytes``."""
        if shutil.disk_usage(self.payload_dir).free < needed_bytes + SPACE_MARGIN_BYTES:
            raise _space_error()

    def complete_upload(
        self,
        project_id: str,
        party: str,
        *,
        before_publish: Callable[[], None] | None = None,
        manifest_nonce: bytes = b"",
        manifest_sha256: str = "",
    ) -> None:
        """Verify the whole payload against the header digest, then publish it atomically,
        recording the manifest's nonce (if any) in the same transaction.

        ``before_publish`` runs once the digest holds and before anything changes (the
        service writes the audit entry there): if it raises, the upload stays PARTIAL with
        all its bytes, so a commit is never published without its record.
        """
        record = self.upload(project_id, party)
        assert record is not None and record.state is UploadState.PARTIAL
        path = self._partial_path(project_id, party)
        digest = hashlib.sha256()
        with path.open("r+b") as handle:
            handle.truncate(HEADER_LENGTH + record.committed_bytes)  # an uncommitted tail
            handle.seek(HEADER_LENGTH)
            while block := handle.read(1 << 20):
                digest.update(block)
        if digest.digest() != record.header.payload_sha256:
            raise InvalidRequestError(
                "the uploaded payload does not hash to the header's payload digest; "
                "re-encode or re-send the file"
            )
        if before_publish is not None:
            before_publish()
        final = self.payload_path(project_id, party)
        os.replace(path, final)
        fsync_directory(final.parent)
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "UPDATE uploads SET state = ?, completed_at = ? WHERE project_id = ? AND party = ?",
                (str(UploadState.COMPLETE), time.time(), project_id, party),
            )
        ]
        if manifest_nonce:
            statements.append(
                (
                    "INSERT OR IGNORE INTO manifest_nonces VALUES (?, ?, ?, ?)",
                    (manifest_nonce.hex(), project_id, party, manifest_sha256),
                )
            )
        self._write(statements)

    def manifest_for_nonce(self, nonce: bytes) -> str | None:
        """The SHA-256 (hex) of the committed manifest that carried ``nonce``, if any."""
        row = self._one(
            "SELECT manifest_sha256 FROM manifest_nonces WHERE nonce = ?", (nonce.hex(),)
        )
        return None if row is None else str(row[0])

    def discard_upload(self, project_id: str, party: str) -> None:
        """Forget an unfinished upload and delete its partial bytes."""
        self._partial_path(project_id, party).unlink(missing_ok=True)
        self._write(
            [
                (
                    "DELETE FROM uploads WHERE project_id = ? AND party = ? AND state = ?",
                    (project_id, party, str(UploadState.PARTIAL)),
                )
            ]
        )

    def delete_payload(self, project_id: str, party: str) -> bool:
        """Delete a complete payload (retention); the upload's header stays for the record."""
        path = self.payload_path(project_id, party)
        existed = path.exists()
        path.unlink(missing_ok=True)
        if existed:
            fsync_directory(path.parent)
        self._write(
            [
                (
                    "UPDATE uploads SET state = ? WHERE project_id = ? AND party = ? AND state = ?",
                    (str(UploadState.DELETED), project_id, party, str(UploadState.COMPLETE)),
                )
            ]
        )
        return existed

    def completed_uploads_before(self, cutoff: float) -> list[tuple[str, str]]:
        rows = self._all(
            "SELECT u.project_id, u.party FROM uploads u JOIN projects p USING (project_id) "
            "WHERE u.state = ? AND u.completed_at + p.retention_days * 86400 < ? AND EXISTS "
            "(SELECT 1 FROM runs r WHERE r.project_id = u.project_id AND r.state = ?)",
            (str(UploadState.COMPLETE), cutoff, str(RunState.FINISHED)),
        )
        return [(str(project), str(party)) for project, party in rows]

    # -- runs -------------------------------------------------------------------------

    def create_run(self, project_id: str, run_id: str) -> None:
        self._write(
            [
                (
                    "INSERT INTO runs (run_id, project_id, state, created_at) VALUES (?, ?, ?, ?)",
                    (run_id, project_id, str(RunState.QUEUED), time.time()),
                )
            ]
        )

    def set_run_state(self, run_id: str, state: RunState, **fields: str | int) -> None:
        allowed = {"stage", "done", "total", "check_party", "check_aspect"}
        assert set(fields) <= allowed
        assignments = "".join(f", {name} = ?" for name in fields)
        finished = time.time() if state in (RunState.REFUSED, RunState.FAILED) else None
        self._write(
            [
                (
                    f"UPDATE runs SET state = ?, finished_at = ?{assignments} WHERE run_id = ?",
                    (str(state), finished, *fields.values(), run_id),
                )
            ]
        )

    def set_progress(self, run_id: str, stage: str, done: int, total: int) -> None:
        self._write(
            [
                (
                    "UPDATE runs SET stage = ?, done = ?, total = ? WHERE run_id = ?",
                    (stage, done, total, run_id),
                )
            ]
        )

    def finish_run(
        self,
        run_id: str,
        project_id: str,
        *,
        cluster_count: int,
        linked_record_count: int,
        comparisons: int,
        keys_by_party: Mapping[str, tuple[list[int], list[str], str]],
        threshold: float | None = None,
        threshold_method: str = "",
    ) -> None:
        """Write every party's link keys and mark the run finished, in one transaction:
        keys are never visible for a run that has not finished."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for party, (positions, keys, digest) in keys_by_party.items():
                    self._db.execute(
                        "DELETE FROM link_keys WHERE project_id = ? AND party = ?",
                        (project_id, party),
                    )
                    self._db.executemany(
                        "INSERT INTO link_keys VALUES (?, ?, ?, ?, ?)",
                        (
                            (project_id, party, ordinal, position, key)
                            for ordinal, (position, key) in enumerate(
                                zip(positions, keys, strict=True)
                            )
                        ),
                    )
                    self._db.execute(
                        "INSERT OR REPLACE INTO key_sets VALUES (?, ?, ?, ?, ?)",
                        (project_id, party, run_id, len(keys), digest),
                    )
                self._db.execute(
                    "UPDATE runs SET state = ?, finished_at = ?, cluster_count = ?, "
                    "linked_record_count = ?, comparisons = ?, threshold = ?, "
                    "threshold_method = ? WHERE run_id = ?",
                    (
                        str(RunState.FINISHED),
                        time.time(),
                        cluster_count,
                        linked_record_count,
                        comparisons,
                        threshold,
                        threshold_method,
                        run_id,
                    ),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    _RUN_COLUMNS = (
        "run_id, project_id, state, stage, done, total, check_party, check_aspect, "
        "cluster_count, linked_record_count, comparisons, finished_at, threshold, "
        "threshold_method"
    )

    @staticmethod
    def _run(row: tuple[Any, ...]) -> RunRecord:
        (
            run_id,
            project,
            state,
            stage,
            done,
            total,
            party,
            aspect,
            clusters,
            linked,
            pairs,
            end,
            threshold,
            threshold_method,
        ) = row
        return RunRecord(
            run_id=str(run_id),
            project_id=str(project),
            state=RunState(str(state)),
            stage=str(stage),
            done=int(done),
            total=int(total),
            check_party=str(party),
            check_aspect=str(aspect),
            cluster_count=int(clusters),
            linked_record_count=int(linked),
            comparisons=int(pairs),
            finished_at=None if end is None else float(end),
            threshold=None if threshold is None else float(threshold),
            threshold_method=str(threshold_method),
        )

    def latest_run(self, project_id: str) -> RunRecord | None:
        row = self._one(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE project_id = ? "
            "ORDER BY rowid DESC LIMIT 1",  # insertion order: a clock jump must not reorder runs
            (project_id,),
        )
        return None if row is None else self._run(row)

    def unfinished_runs(self) -> list[RunRecord]:
        rows = self._all(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE state IN (?, ?) ORDER BY rowid",
            (str(RunState.QUEUED), str(RunState.RUNNING)),
        )
        return [self._run(row) for row in rows]

    # -- link keys --------------------------------------------------------------------

    def key_set(self, project_id: str, party: str) -> KeySet | None:
        row = self._one(
            "SELECT run_id, key_count, keys_sha256 FROM key_sets "
            "WHERE project_id = ? AND party = ?",
            (project_id, party),
        )
        if row is None:
            return None
        return KeySet(run_id=str(row[0]), key_count=int(row[1]), keys_sha256=str(row[2]))

    def record_key_release(self, project_id: str, party: str) -> set[str]:
        """Note that ``party`` fetched its keys; return every party that has, so far."""
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO key_releases (project_id, party, released_at) "
                    "VALUES (?, ?, ?)",
                    (project_id, party, time.time()),
                )
            ]
        )
        rows = self._all("SELECT party FROM key_releases WHERE project_id = ?", (project_id,))
        return {str(row[0]) for row in rows}

    def iter_link_keys(
        self, project_id: str, party: str, *, batch_size: int
    ) -> Iterator[tuple[list[int], list[str]]]:
        """Yield (positions, link keys) batches in release order."""
        ordinal = 0
        while True:
            rows = self._all(
                "SELECT position, link_key FROM link_keys WHERE project_id = ? AND party = ? "
                "AND ordinal >= ? ORDER BY ordinal LIMIT ?",
                (project_id, party, ordinal, batch_size),
            )
            if not rows:
                return
            ordinal += len(rows)
            yield [int(row[0]) for row in rows], [str(row[1]) for row in rows]

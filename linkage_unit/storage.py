"""Storage: the linkage unit's durable state (SQLite, WAL) and payload files.

Everything a restarted linkage unit needs is here: projects, members, uploads with their
committed byte offset, runs with progress and check outcome, link keys. Payloads live
under ``<data dir>/payloads/<project>/``: a ``.partial`` file (the encoded-file header, then
the payload bytes committed so far) becomes ``<party>.clk`` by an fsync'd rename only when
the whole payload hashes to the header's digest, so nothing half-written is ever used.
A chunk is committed when its bytes are fsync'd and the new offset is in the database; a
crash between the two leaves a tail that the next append truncates away. Publishing a
complete upload is marked in the database before the rename and finished after it, so a
crash between the two is completed at start-up (:meth:`Storage.recover_uploads`). A payload
being deleted is recorded as an intent first (:meth:`Storage.intend_retirement`), so the
retention module can finish and audit a deletion a crash interrupted.

The schema is versioned by ``PRAGMA user_version`` and upgraded in place, one migration at a
time (``_MIGRATIONS``), so an LU that has run for months keeps its state. One process holds a
data directory at a time (an exclusive lock on ``<data dir>/lock``). Every time stored is
read from the injected ``clock``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linkage_unit.checkpoints import Checkpoint, Step, no_checkpoint
from linkage_unit.link_keys import KEY_CHARACTERS, PartyLinkKeys
from protocol.atomic_file import fsync_directory
from protocol.clk_layout import ClkLayout
from protocol.errors import (
    AlreadyExistsError,
    ConfigurationError,
    InUseError,
    InvalidRequestError,
    InvariantError,
    PreconditionError,
    ResourceLimitError,
)
from protocol.messages import (
    DEFAULT_MAX_CLUSTER_SIZE,
    UNRUN_HOLD_DAYS,
    BlockingMode,
    LinkKeyMode,
    ProjectSettings,
    RunState,
    UploadHeader,
    UploadState,
)
from protocol.vocabulary import DeletionReason

__all__ = [
    "SCHEMA_VERSION",
    "DueUpload",
    "KeyRows",
    "KeySet",
    "Retirement",
    "RunOutcome",
    "RunQuality",
    "RunRecord",
    "Storage",
    "UploadRecord",
    "out_of_space",
]

_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
SPACE_MARGIN_BYTES = 16 << 20
"""Free space kept beyond a payload's remaining bytes (database, audit log, WAL)."""


def _layout_text(layout: ClkLayout | None) -> str | None:
    return None if layout is None else layout.canonical_json()


def _layout_of(text: object) -> ClkLayout | None:
    return None if text is None else ClkLayout.from_record(json.loads(str(text)))


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


# The first release's tables.
_FIRST_SCHEMA = """
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
    created_at REAL NOT NULL,
    layout TEXT
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
    layout TEXT,
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
    comparisons INTEGER NOT NULL DEFAULT 0
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


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}


def _migrate_threshold(db: sqlite3.Connection, now: float) -> None:
    # Released before user_version was kept, so some state files have these already.
    present = _columns(db, "runs")
    if "threshold" not in present:
        db.execute("ALTER TABLE runs ADD COLUMN threshold REAL")
    if "threshold_method" not in present:
        db.execute("ALTER TABLE runs ADD COLUMN threshold_method TEXT NOT NULL DEFAULT ''")


def _migrate_crash_consistency(db: sqlite3.Connection, now: float) -> None:
    # When an upload began (retention of partial uploads), the manifest that is publishing
    # it (a rename interrupted by a crash is finished at start-up), keys stored but not yet
    # released because run_finished is not logged yet, and payload deletions under way.
    db.execute("ALTER TABLE uploads ADD COLUMN started_at REAL")
    db.execute("UPDATE uploads SET started_at = COALESCE(completed_at, ?)", (now,))
    db.execute("ALTER TABLE uploads ADD COLUMN publishing INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE uploads ADD COLUMN publish_nonce TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE uploads ADD COLUMN publish_manifest_sha256 TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE runs ADD COLUMN keys_ready INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE TABLE retirements (project_id TEXT NOT NULL, party TEXT NOT NULL, "
        "payload_sha256 BLOB NOT NULL, reason TEXT NOT NULL, partial INTEGER NOT NULL, "
        "created_at REAL NOT NULL, PRIMARY KEY (project_id, party, payload_sha256))"
    )


def _migrate_layouts(db: sqlite3.Connection, now: float) -> None:
    # A grouped encoding's layout (ClkLayout.canonical_json; NULL for one record-level CLK):
    # what a project's uploads must have, and what each upload has. Released before this
    # migration existed (without user_version), so a state file may have them already.
    for table in ("projects", "uploads"):
        if "layout" not in _columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN layout TEXT")


def _migrate_link_models(db: sqlite3.Connection, now: float) -> None:
    # Which members are deduplicated and the project's cluster-size cap. A release without
    # this migration kept them only in the fingerprinted settings JSON: read them back from
    # there once, so such a project keeps its link model.
    db.execute("ALTER TABLE members ADD COLUMN deduplicated INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "ALTER TABLE projects ADD COLUMN max_cluster_size INTEGER NOT NULL "
        f"DEFAULT {DEFAULT_MAX_CLUSTER_SIZE}"
    )
    rows = db.execute("SELECT project_id, settings_json FROM projects").fetchall()
    for project_id, settings_json in rows:
        recorded = json.loads(settings_json)
        deduplicated = recorded.get("deduplicated") if isinstance(recorded, dict) else None
        if not deduplicated:
            continue
        for party in deduplicated:
            db.execute(
                "UPDATE members SET deduplicated = 1 WHERE project_id = ? AND party = ?",
                (project_id, str(party)),
            )
        db.execute(
            "UPDATE projects SET max_cluster_size = ? WHERE project_id = ?",
            (int(recorded["max_cluster_size"]), project_id),
        )


def _migrate_model_figures(db: sqlite3.Connection, now: float) -> None:
    # The operator's match-probability cut (grouped projects, scored by the Fellegi-Sunter
    # model; NULL: the model's default) and a model-scored run's expected precision, recall
    # and F1 (NULL for a run with no estimate: a Dice run without the null-model threshold).
    db.execute("ALTER TABLE projects ADD COLUMN match_probability REAL")
    for name in ("estimated_precision", "estimated_recall", "estimated_f1"):
        db.execute(f"ALTER TABLE runs ADD COLUMN {name} REAL")


def _migrate_spines(db: sqlite3.Connection, now: float) -> None:
    # The spine a project links into (docs/spine.md); NULL: a one-off project.
    db.execute("ALTER TABLE projects ADD COLUMN spine TEXT")


def _migrate_run_reports(db: sqlite3.Connection, now: float) -> None:
    # A run's match-quality report (linkage_unit/report.py: aggregates only, no CLK, record
    # position or per-record figure), kept so the operator can ask for it after the run.
    db.execute(
        "CREATE TABLE run_reports (run_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, "
        "report_json TEXT NOT NULL)"
    )


def _migrate_first(db: sqlite3.Connection, now: float) -> None:
    # Statement by statement: executescript would commit the migration's transaction.
    for statement in _FIRST_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_key_contexts(db: sqlite3.Connection, now: float) -> None:
    # What an upload's keys were derived for in place of its project id, as its file header
    # says (a spine's "spine:NAME"); NULL: the project id, and every upload before the field.
    # The stored file's header carries it, so its length depends on it.
    db.execute("ALTER TABLE uploads ADD COLUMN key_context TEXT")


def _migrate_key_batches(db: sqlite3.Connection, now: float) -> None:
    # Keys stored a batch to a row (positions as little-endian int64s, keys as their
    # concatenated 26 ASCII characters): a row a key took 7.5 s for 1M + 1M keys, most of it
    # SQLite's per-row work. Keys already stored move over in release order.
    db.execute(
        "CREATE TABLE link_key_batches (project_id TEXT NOT NULL, party TEXT NOT NULL, "
        "batch INTEGER NOT NULL, positions BLOB NOT NULL, link_keys BLOB NOT NULL, "
        "PRIMARY KEY (project_id, party, batch)) WITHOUT ROWID"
    )
    sets = db.execute("SELECT DISTINCT project_id, party FROM link_keys").fetchall()
    for project_id, party in sets:
        rows = db.execute(
            "SELECT position, link_key FROM link_keys WHERE project_id = ? AND party = ? "
            "ORDER BY ordinal",
            (project_id, party),
        ).fetchall()
        _insert_key_batches(
            db, project_id, party, [int(r[0]) for r in rows], [str(r[1]) for r in rows]
        )
    db.execute("DROP TABLE link_keys")


KEY_BATCH = 10_000
"""Keys a stored batch holds (the last of a party's may hold fewer)."""


def _insert_key_batches(
    db: sqlite3.Connection,
    project_id: str,
    party: str,
    positions: Sequence[int],
    link_keys: Sequence[str],
) -> None:
    # Every key is KEY_CHARACTERS long, which is how a batch's text is cut back into keys.
    if any(len(key) != KEY_CHARACTERS for key in link_keys):
        raise ValueError(f"link keys of {party} are not all {KEY_CHARACTERS} characters")
    db.executemany(
        "INSERT INTO link_key_batches VALUES (?, ?, ?, ?, ?)",
        (
            (
                project_id,
                party,
                batch,
                np.asarray(positions[start : start + KEY_BATCH], dtype="<i8").tobytes(),
                "".join(link_keys[start : start + KEY_BATCH]).encode("ascii"),
            )
            for batch, start in enumerate(range(0, len(positions), KEY_BATCH))
        ),
    )


_Migration = Callable[[sqlite3.Connection, float], None]
_MIGRATIONS: tuple[_Migration, ...] = (
    _migrate_first,
    _migrate_threshold,
    _migrate_crash_consistency,
    _migrate_layouts,
    _migrate_link_models,
    _migrate_model_figures,
    _migrate_spines,
    _migrate_run_reports,
    _migrate_key_contexts,
    _migrate_key_batches,
)
"""Migration n (1-based) takes a database at ``user_version`` n - 1 to n. Add new ones at
the end; never edit a released one."""

SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRecord:
    header: UploadHeader
    state: UploadState
    committed_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """A run as stored. ``keys_ready``: its keys are stored and it is finishing, but
    ``run_finished`` is not logged yet; it is FINISHED, and its keys releasable, only then."""

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
    keys_ready: bool = False
    estimated: RunQuality | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunQuality:
    """What a model-scored run's model expects of its links (no ground truth)."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """What a run found, stored with its keys and logged in ``run_finished``. ``estimated``:
    a model-scored run's expected quality (operator and auditor figures)."""

    cluster_count: int
    linked_record_count: int
    comparisons: int
    threshold: float | None = None
    threshold_method: str = ""
    estimated: RunQuality | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySet:
    run_id: str
    key_count: int
    keys_sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRows:
    """One batch of a party's stored keys: ``positions[i]`` has ``link_keys[i]``."""

    positions: list[int]
    link_keys: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class DueUpload:
    """A complete upload its project's policy is done with, and why."""

    record: UploadRecord
    reason: DeletionReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Retirement:
    """A payload deletion under way: intended, maybe done, not yet recorded as done."""

    project_id: str
    party: str
    payload_sha256: bytes
    reason: DeletionReason
    partial: bool


class Storage:
    """The linkage unit's state under one data directory. Thread-safe (one lock)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._clock = clock
        self._checkpoint = checkpoint
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
        except OSError as error:
            raise ConfigurationError(
                f"cannot use data directory {self.data_dir}: {error.strerror}"
            ) from None
        self._lock_fd = self._hold_directory()
        try:
            self.payload_dir = self.data_dir / "payloads"
            self.payload_dir.mkdir(exist_ok=True)
            self._lock = threading.RLock()
            self._db = sqlite3.connect(
                self.data_dir / "state.sqlite3", check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _hold_directory(self) -> int:
        """An exclusive lock on the data directory, held until :meth:`close`: a second
        linkage unit on the same state would corrupt it."""
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InUseError(
                f"data directory {self.data_dir} is in use by another linkage unit; stop it, "
                "or give this one its own --data-dir"
            ) from None
        return fd

    def _migrate(self) -> None:
        """Bring the database to :data:`SCHEMA_VERSION`, one migration at a time."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the state in {self.data_dir} was written by a newer bloomlink (schema "
                f"{version}, this one knows {SCHEMA_VERSION}); run that version"
            )
        for number in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                _MIGRATIONS[number](self._db, self._clock())
                self._db.execute(f"PRAGMA user_version = {number + 1}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the directory lock
                self._lock_fd = -1

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
                "INSERT INTO projects (project_id, settings_json, settings_fingerprint, "
                "schema_fingerprint, threshold, blocking, link_key_mode, retention_days, "
                "auto_run, created_at, layout, max_cluster_size, match_probability, spine) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    self._clock(),
                    _layout_text(settings.layout),
                    settings.max_cluster_size,
                    settings.match_probability,
                    settings.spine,
                ),
            )
        ]
        statements += [
            (
                "INSERT INTO members (project_id, party, ordinal, deduplicated) "
                "VALUES (?, ?, ?, ?)",
                (settings.project_id, party, ordinal, int(party in settings.deduplicated)),
            )
            for ordinal, party in enumerate(settings.members)
        ]
        self._write(statements)

    def project(self, project_id: str) -> ProjectSettings | None:
        row = self._one(
            "SELECT schema_fingerprint, threshold, blocking, link_key_mode, retention_days, "
            "auto_run, layout, max_cluster_size, match_probability, spine FROM projects "
            "WHERE project_id = ?",
            (project_id,),
        )
        if row is None:
            return None
        members = self._all(
            "SELECT party, deduplicated FROM members WHERE project_id = ? ORDER BY ordinal",
            (project_id,),
        )
        (
            fingerprint,
            threshold,
            blocking,
            mode,
            retention,
            auto_run,
            layout,
            cluster_cap,
            match_probability,
            spine,
        ) = row
        return ProjectSettings(
            project_id=project_id,
            members=tuple(str(member[0]) for member in members),
            schema_fingerprint=bytes(fingerprint),
            threshold=None if threshold is None else float(threshold),
            blocking=BlockingMode(str(blocking)),
            link_key_mode=LinkKeyMode(str(mode)),
            retention_days=int(retention),
            auto_run=bool(auto_run),
            layout=_layout_of(layout),
            deduplicated=tuple(str(member[0]) for member in members if member[1]),
            max_cluster_size=int(cluster_cap),
            match_probability=None if match_probability is None else float(match_probability),
            spine=None if spine is None else str(spine),
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
            "payload_sha256, committed_bytes, layout, key_context FROM uploads "
            "WHERE project_id = ? AND party = ?",
            (project_id, party),
        )
        if row is None:
            return None
        state, version, fingerprint, kcv, bits, count, digest, committed, layout, context = row
        header = UploadHeader(
            project_id=project_id,
            party_id=party,
            format_version=int(version),
            schema_fingerprint=bytes(fingerprint),
            kcv=bytes(kcv),
            clk_bits=int(bits),
            record_count=int(count),
            payload_sha256=bytes(digest),
            layout=_layout_of(layout),
            key_context=None if context is None else str(context),
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
                    "INSERT OR REPLACE INTO uploads (project_id, party, state, format_version, "
                    "schema_fingerprint, kcv, clk_bits, record_count, payload_sha256, "
                    "committed_bytes, completed_at, started_at, layout, key_context) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?)",
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
                        self._clock(),
                        _layout_text(header.layout),
                        header.key_context,
                    ),
                )
            ]
        )

    def append(self, project_id: str, party: str, *, committed: int, data: bytes) -> int:
        """Durably append ``data`` at payload offset ``committed``; return the new offset."""
        path = self._partial_path(project_id, party)
        record = self.upload(project_id, party)
        if record is None or record.state is not UploadState.PARTIAL:
            raise PreconditionError("there is no partial upload to append to; resend it")
        start = record.header.clk_file_header.header_length  # 200 for format 1
        # Unbuffered, so a failed write leaves no buffer behind to fail again on close.
        with path.open("r+b", buffering=0) as handle:
            # Drop any tail written before a crash but never committed.
            handle.truncate(start + committed)
            handle.seek(start + committed)
            try:
                view = memoryview(data)
                while view:
                    view = view[handle.write(view) :]
                os.fsync(handle.fileno())
            except OSError as error:
                if not out_of_space(error):
                    raise
                handle.truncate(start + committed)  # give back what was written
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
        recording the manifest's nonce (if any) with the commit.

        ``before_publish`` runs once the digest holds and before anything changes (the
        service writes the audit entry there): if it raises, the upload stays PARTIAL with
        all its bytes, so a commit is never published without its record. Publishing is
        marked in the database before the rename and finished after it; a crash between the
        two is finished by :meth:`recover_uploads` at start-up.
        """
        record = self.upload(project_id, party)
        if record is None or record.state is not UploadState.PARTIAL:
            raise PreconditionError("there is no partial upload to complete; resend it")
        path = self._partial_path(project_id, party)
        digest = hashlib.sha256()
        start = record.header.clk_file_header.header_length  # 200 for format 1
        with path.open("r+b") as handle:
            handle.truncate(start + record.committed_bytes)  # an uncommitted tail
            handle.seek(start)
            while block := handle.read(1 << 20):
                digest.update(block)
        if digest.digest() != record.header.payload_sha256:
            raise InvalidRequestError(
                "the uploaded payload does not hash to the header's payload digest; "
                "re-encode or re-send the file"
            )
        if before_publish is not None:
            before_publish()
        self._write(
            [
                (
                    "UPDATE uploads SET publishing = 1, publish_nonce = ?, "
                    "publish_manifest_sha256 = ? WHERE project_id = ? AND party = ?",
                    (manifest_nonce.hex(), manifest_sha256, project_id, party),
                )
            ]
        )
        self._publish(project_id, party)

    def _publish(self, project_id: str, party: str) -> None:
        """Rename a verified, audited partial payload into place and mark it COMPLETE."""
        path, final = self._partial_path(project_id, party), self.payload_path(project_id, party)
        if path.exists():
            os.replace(path, final)
            fsync_directory(final.parent)
        self._checkpoint(Step.UPLOAD_RENAMED)
        row = self._one(
            "SELECT publish_nonce, publish_manifest_sha256 FROM uploads "
            "WHERE project_id = ? AND party = ?",
            (project_id, party),
        )
        nonce, manifest_sha256 = ("", "") if row is None else (str(row[0]), str(row[1]))
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "UPDATE uploads SET state = ?, completed_at = ?, publishing = 0 "
                "WHERE project_id = ? AND party = ?",
                (str(UploadState.COMPLETE), self._clock(), project_id, party),
            )
        ]
        if nonce:
            statements.append(
                (
                    "INSERT OR IGNORE INTO manifest_nonces VALUES (?, ?, ?, ?)",
                    (nonce, project_id, party, manifest_sha256),
                )
            )
        self._write(statements)

    def recover_uploads(self) -> list[UploadRecord]:
        """Finish every publish a crash interrupted (its ``upload_committed`` is logged and
        its digest verified before it is marked); return the uploads finished."""
        rows = self._all(
            "SELECT project_id, party FROM uploads WHERE publishing = 1 AND state = ?",
            (str(UploadState.PARTIAL),),
        )
        recovered = []
        for project_id, party in rows:
            if not (
                self._partial_path(project_id, party).exists()
                or self.payload_path(project_id, party).exists()
            ):
                continue  # nothing to publish: left PARTIAL for the party to resend
            self._publish(str(project_id), str(party))
            record = self.upload(str(project_id), str(party))
            if record is not None:
                recovered.append(record)
        return recovered

    def manifest_for_nonce(self, nonce: bytes) -> str | None:
        """The SHA-256 (hex) of the committed manifest that carried ``nonce``, if any."""
        row = self._one(
            "SELECT manifest_sha256 FROM manifest_nonces WHERE nonce = ?", (nonce.hex(),)
        )
        return None if row is None else str(row[0])

    # -- retiring payloads ------------------------------------------------------------

    def intend_retirement(
        self,
        project_id: str,
        party: str,
        payload_sha256: bytes,
        *,
        reason: DeletionReason,
        partial: bool,
    ) -> Retirement:
        """Record that this payload is to be deleted, before anything is (see retention.py)."""
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO retirements VALUES (?, ?, ?, ?, ?, ?)",
                    (project_id, party, payload_sha256, str(reason), int(partial), self._clock()),
                )
            ]
        )
        return Retirement(
            project_id=project_id,
            party=party,
            payload_sha256=payload_sha256,
            reason=reason,
            partial=partial,
        )

    def retirements(self) -> list[Retirement]:
        """Payload deletions intended and not yet recorded as done, oldest first."""
        rows = self._all(
            "SELECT project_id, party, payload_sha256, reason, partial FROM retirements "
            "ORDER BY created_at, rowid",
            (),
        )
        return [
            Retirement(
                project_id=str(project),
                party=str(party),
                payload_sha256=bytes(digest),
                reason=DeletionReason(str(reason)),
                partial=bool(partial),
            )
            for project, party, digest, reason, partial in rows
        ]

    def unlink_payload(self, retirement: Retirement) -> None:
        """Delete a retiring payload's file for real (missing is fine: a retry)."""
        project_id, party = retirement.project_id, retirement.party
        path = (
            self._partial_path(project_id, party)
            if retirement.partial
            else self.payload_path(project_id, party)
        )
        if path.exists():
            path.unlink()
            fsync_directory(path.parent)

    def finish_retirement(self, retirement: Retirement) -> None:
        """The deletion is done and audited: forget a partial upload, or mark a complete one
        DELETED (its header stays for the record), and drop the intent."""
        key = (retirement.project_id, retirement.party, retirement.payload_sha256)
        change: tuple[str, tuple[object, ...]]
        if retirement.partial:
            change = (
                "DELETE FROM uploads WHERE project_id = ? AND party = ? AND payload_sha256 = ? "
                "AND state = ?",
                (*key, str(UploadState.PARTIAL)),
            )
        else:
            change = (
                "UPDATE uploads SET state = ? WHERE project_id = ? AND party = ? "
                "AND payload_sha256 = ? AND state = ?",
                (str(UploadState.DELETED), *key, str(UploadState.COMPLETE)),
            )
        self._write(
            [
                change,
                (
                    "DELETE FROM retirements WHERE project_id = ? AND party = ? "
                    "AND payload_sha256 = ?",
                    key,
                ),
            ]
        )

    def uploads_due(self) -> list[DueUpload]:
        """Complete uploads their project's policy is done with, and the deletion reason:
        ``run-finished`` (retention 0: the latest run finished) or ``keys-released``
        (retention N > 0: every member fetched its keys)."""
        rows = self._all(
            "SELECT u.project_id, u.party, p.retention_days FROM uploads u "
            "JOIN projects p USING (project_id) WHERE u.state = ? AND ("
            " (p.retention_days = 0 AND (SELECT r.state FROM runs r "
            "  WHERE r.project_id = u.project_id ORDER BY r.rowid DESC LIMIT 1) = ?)"
            " OR (p.retention_days > 0 AND NOT EXISTS (SELECT 1 FROM members m "
            "  WHERE m.project_id = u.project_id AND NOT EXISTS (SELECT 1 FROM key_releases k "
            "  WHERE k.project_id = m.project_id AND k.party = m.party))))"
            " ORDER BY u.project_id, u.party",
            (str(UploadState.COMPLETE), str(RunState.FINISHED)),
        )
        due = []
        for project, party, retention_days in rows:
            record = self.upload(str(project), str(party))
            if record is not None:
                reason = (
                    DeletionReason.RUN_FINISHED
                    if retention_days == 0
                    else DeletionReason.KEYS_RELEASED
                )
                due.append(DueUpload(record=record, reason=reason))
        return due

    def expired_uploads(self, now: float) -> list[UploadRecord]:
        """Uploads held past their project's hold (``ProjectSettings.hold_days``), whatever
        the state of any run: complete ones from when they completed, partial ones from when
        they began."""
        # ProjectSettings.hold_days, in SQL.
        hold = "(CASE WHEN p.retention_days > 0 THEN p.retention_days ELSE ? END) * 86400"
        rows = self._all(
            "SELECT u.project_id, u.party FROM uploads u JOIN projects p USING (project_id) "
            f"WHERE (u.state = ? AND u.completed_at IS NOT NULL AND u.completed_at + {hold} < ?) "
            f"OR (u.state = ? AND u.publishing = 0 AND u.started_at + {hold} < ?) "
            "ORDER BY u.project_id, u.party",
            (
                str(UploadState.COMPLETE),
                UNRUN_HOLD_DAYS,
                now,
                str(UploadState.PARTIAL),
                UNRUN_HOLD_DAYS,
                now,
            ),
        )
        records = [self.upload(str(project), str(party)) for project, party in rows]
        return [record for record in records if record is not None]

    # -- runs -------------------------------------------------------------------------

    def create_run(self, project_id: str, run_id: str) -> None:
        self._write(
            [
                (
                    "INSERT INTO runs (run_id, project_id, state, created_at) VALUES (?, ?, ?, ?)",
                    (run_id, project_id, str(RunState.QUEUED), self._clock()),
                )
            ]
        )

    def set_run_state(
        self,
        run_id: str,
        state: RunState,
        *,
        stage: str | None = None,
        done: int | None = None,
        total: int | None = None,
        check_party: str | None = None,
        check_aspect: str | None = None,
    ) -> None:
        """Move a run to ``state`` (not FINISHED: see :meth:`mark_finished`), setting the
        progress and check fields given."""
        if state is RunState.FINISHED:
            raise InvariantError("a run is marked finished only once run_finished is logged")
        given = {
            "stage": stage,
            "done": done,
            "total": total,
            "check_party": check_party,
            "check_aspect": check_aspect,
        }
        changes = {column: value for column, value in given.items() if value is not None}
        # Column names come from the fixed keys above, never from a caller.
        assignments = "".join(f", {column} = ?" for column in changes)
        ended = self._clock() if state in (RunState.REFUSED, RunState.FAILED) else None
        self._write(
            [
                (
                    f"UPDATE runs SET state = ?, finished_at = ?{assignments} WHERE run_id = ?",
                    (str(state), ended, *changes.values(), run_id),
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

    def store_keys(
        self,
        run_id: str,
        project_id: str,
        *,
        outcome: RunOutcome,
        keys: Mapping[str, PartyLinkKeys],
    ) -> None:
        """Write every party's link keys and the run's outcome in one transaction; the run
        stays RUNNING (``keys_ready``) until :meth:`mark_finished`, so no key is releasable
        before its ``run_finished`` is logged. Refused if any party of the project already
        fetched keys: a released key set is never replaced by another."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                released = self._db.execute(
                    "SELECT COUNT(*) FROM key_releases WHERE project_id = ?", (project_id,)
                ).fetchone()[0]
                if released:
                    raise PreconditionError(
                        "link keys of this project were already released; a new run would give "
                        "the parties keys that do not match the ones they hold, so it is refused"
                    )
                for party, party_keys in keys.items():
                    self._db.execute(
                        "DELETE FROM link_key_batches WHERE project_id = ? AND party = ?",
                        (project_id, party),
                    )
                    _insert_key_batches(
                        self._db, project_id, party, party_keys.positions, party_keys.link_keys
                    )
                    self._db.execute(
                        "INSERT OR REPLACE INTO key_sets VALUES (?, ?, ?, ?, ?)",
                        (
                            project_id,
                            party,
                            run_id,
                            len(party_keys.link_keys),
                            party_keys.keys_sha256,
                        ),
                    )
                self._db.execute(
                    "UPDATE runs SET keys_ready = 1, cluster_count = ?, linked_record_count = ?, "
                    "comparisons = ?, threshold = ?, threshold_method = ?, "
                    "estimated_precision = ?, estimated_recall = ?, estimated_f1 = ? "
                    "WHERE run_id = ?",
                    (
                        outcome.cluster_count,
                        outcome.linked_record_count,
                        outcome.comparisons,
                        outcome.threshold,
                        outcome.threshold_method,
                        None if outcome.estimated is None else outcome.estimated.precision,
                        None if outcome.estimated is None else outcome.estimated.recall,
                        None if outcome.estimated is None else outcome.estimated.f1,
                        run_id,
                    ),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def mark_finished(self, run_id: str) -> None:
        """A run whose keys are stored and whose ``run_finished`` is logged is FINISHED: its
        keys become releasable."""
        self._write(
            [
                (
                    # done = total: a finished run reports its last stage complete.
                    "UPDATE runs SET state = ?, finished_at = ?, keys_ready = 0, done = total "
                    "WHERE run_id = ? AND keys_ready = 1",
                    (str(RunState.FINISHED), self._clock(), run_id),
                )
            ]
        )

    _RUN_COLUMNS = (
        "run_id, project_id, state, stage, done, total, check_party, check_aspect, "
        "cluster_count, linked_record_count, comparisons, finished_at, threshold, "
        "threshold_method, keys_ready, estimated_precision, estimated_recall, estimated_f1"
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
            keys_ready,
            precision,
            recall,
            f1,
        ) = row
        estimated = (
            None
            if precision is None or recall is None or f1 is None
            else RunQuality(precision=float(precision), recall=float(recall), f1=float(f1))
        )
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
            keys_ready=bool(keys_ready),
            estimated=estimated,
        )

    def latest_run(self, project_id: str) -> RunRecord | None:
        row = self._one(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE project_id = ? "
            "ORDER BY rowid DESC LIMIT 1",  # insertion order: a clock jump must not reorder runs
            (project_id,),
        )
        return None if row is None else self._run(row)

    def store_report(self, run_id: str, project_id: str, report_json: str) -> None:
        """Keep a run's match-quality report (aggregates only; linkage_unit/report.py). A
        resumed run recomputes it and replaces the one it left."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO run_reports VALUES (?, ?, ?)",
                    (run_id, project_id, report_json),
                )
            ]
        )

    def finished_report(self, project_id: str) -> tuple[str, str] | None:
        """The run id and report JSON of the project's newest FINISHED run, if it has one."""
        row = self._one(
            "SELECT r.run_id, p.report_json FROM runs r JOIN run_reports p "
            "ON p.run_id = r.run_id WHERE r.project_id = ? AND r.state = ? "
            "ORDER BY r.rowid DESC LIMIT 1",
            (project_id, str(RunState.FINISHED)),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def unfinished_runs(self) -> list[RunRecord]:
        rows = self._all(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE state IN (?, ?) ORDER BY rowid",
            (str(RunState.QUEUED), str(RunState.RUNNING)),
        )
        return [self._run(row) for row in rows]

    # -- link keys --------------------------------------------------------------------

    def key_set(self, project_id: str, party: str) -> KeySet | None:
        """The party's keys, only once the run that made them is FINISHED (its keys stored
        and its run_finished logged)."""
        row = self._one(
            "SELECT k.run_id, k.key_count, k.keys_sha256 FROM key_sets k "
            "JOIN runs r ON r.run_id = k.run_id "
            "WHERE k.project_id = ? AND k.party = ? AND r.state = ?",
            (project_id, party, str(RunState.FINISHED)),
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
                    (project_id, party, self._clock()),
                )
            ]
        )
        rows = self._all("SELECT party FROM key_releases WHERE project_id = ?", (project_id,))
        return {str(row[0]) for row in rows}

    def iter_link_keys(self, project_id: str, party: str, *, batch_size: int) -> Iterator[KeyRows]:
        """Yield a party's keys in batches of at most ``batch_size``, in release order."""
        stored = 0
        while True:
            row = self._one(
                "SELECT positions, link_keys FROM link_key_batches WHERE project_id = ? AND "
                "party = ? AND batch = ?",
                (project_id, party, stored),
            )
            if row is None:
                return
            stored += 1
            positions = np.frombuffer(row[0], dtype="<i8").tolist()
            text = bytes(row[1]).decode("ascii")
            keys = [text[i : i + KEY_CHARACTERS] for i in range(0, len(text), KEY_CHARACTERS)]
            for start in range(0, len(positions), batch_size):
                yield KeyRows(
                    positions=positions[start : start + batch_size],
                    link_keys=keys[start : start + batch_size],
                )

"""The linkage unit's audit log: an append-only, hash-chained, signed JSON-lines file.

Stage: audit. The service calls :meth:`AuditLog.append` at each event (it satisfies the
service's ``AuditSink`` protocol); the record format and its checks are in
``protocol/audit.py``. Guarantees:

* ``append`` returns only after the line is written and fsync'd; a failed write is cut back
  off the file so the chain stays verifiable, and the error says the event was not recorded;
* on open the whole chain is re-hashed, every project tag checked, and the last signature
  and the signed head checked; a corrupted or torn log, or one whose head is missing, is
  refused, never appended to;
* one process at a time (an exclusive ``flock``), one thread at a time (a lock);
* after each append a signed head (``<log>.head``) is replaced atomically, so a later
  truncation of the log is detectable by anyone holding an earlier head;
* reads stream the file (:meth:`AuditLog.export`): the log is never loaded whole to serve it,
  and each reader gets the form it may see (full, partial for a member party, or a stub for
  another project's entry).

Each project's entries carry a tag under a per-project view key, derived from the LU's own
signing key (so nothing more is stored) and published in the project's ``project_created``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linkage_unit.audit_hook import AuditExport
from linkage_unit.storage import out_of_space
from protocol.atomic_file import atomic_output, fsync_directory
from protocol.audit import (
    GENESIS_HASH,
    SALT_BYTES,
    VIEW_KEY_BYTES,
    AuditEntry,
    LogLine,
    SignedHead,
    build_entry,
    check_project_tags,
    head_from_json,
    head_to_json,
    line_from_json,
    line_to_json,
    parse_log,
    sign_head,
    verify_chain,
)
from protocol.audit_events import AuditEvent, ProjectCreated, event_record
from protocol.errors import AuditError, InUseError, ResourceLimitError
from protocol.labels import check_label
from protocol.signing import load_or_create_signing_key, load_signing_key, public_key_pem

__all__ = [
    "AuditLog",
    "head_path_for",
    "read_entries",
    "read_head",
    "repair_missing_head",
    "repair_torn_tail",
]

_log = logging.getLogger(__name__)


def head_path_for(log_path: Path | str) -> Path:
    """Where the signed head of ``log_path`` lives."""
    path = Path(log_path)
    return path.with_name(path.name + ".head")


def read_head(log_path: Path | str) -> SignedHead | None:
    """The signed head beside ``log_path``, or None if there is none yet."""
    try:
        return head_from_json(head_path_for(log_path).read_bytes())
    except FileNotFoundError:
        return None


def read_entries(log_path: Path | str) -> list[LogLine]:
    """Every entry of a log file; a malformed or torn line raises naming its entry index."""
    parsed = parse_log(Path(log_path).read_bytes())
    if parsed.torn_line is not None:
        raise AuditError(
            "the last line is incomplete: the linkage unit stopped during an append that was "
            "never acknowledged; see docs/audit.md before repairing",
            entry=parsed.torn_line,
        )
    return list(parsed.entries)


def repair_torn_tail(log_path: Path | str) -> int:
    """Move an incomplete last line (never acknowledged) to ``<log>.torn``; return its size.

    Only an unterminated final line is touched; a bad complete line is tampering, not a
    crash, and is left for the auditor.
    """
    path = Path(log_path)
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut == len(data):
        return 0
    with atomic_output(path.with_name(path.name + ".torn")) as handle:
        handle.write(data[cut:])
    with path.open("r+b") as handle:
        handle.truncate(cut)
        handle.flush()
        os.fsync(handle.fileno())
    return len(data) - cut


def repair_missing_head(log_path: Path | str, *, signing_key_path: Path | str) -> int:
    """Write a signed head for the last entry of a log whose head file is missing (the LU
    stopped between its first append and its first head); return that entry's sequence.

    The LU refuses to open a log without its head, because a missing head is also what
    cutting entries off the end and deleting the head looks like. Run this only after
    checking, against heads the parties and auditors hold, that nothing was cut.
    """
    path = Path(log_path)
    if read_head(path) is not None:
        raise AuditError(f"{path}: already has a signed head; nothing to repair")
    key = load_signing_key(signing_key_path)
    entries = read_entries(path)
    report = verify_chain(entries, key.public_key())
    if not report.intact or not entries:
        raise AuditError(f"{path}: {report.message}; not writing a head for it")
    head = sign_head(entries[-1], signing_key=key, moment=_utc_now())
    with atomic_output(head_path_for(path), mode=0o644) as handle:
        handle.write(head_to_json(head).encode("ascii"))
    return entries[-1].sequence


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """The append-only audit log of one linkage unit (thread-safe; one process per file).

    ``AuditLog.open(path, signing_key_path=...)`` is the usual way in; the signing key file
    is created (0600) on first start.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        signing_key: Ed25519PrivateKey,
        clock: Callable[[], datetime] = _utc_now,
        new_log_id: Callable[[], str] = lambda: os.urandom(16).hex(),
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.path = Path(path)
        self._key = signing_key
        self._clock = clock
        self._random_bytes = random_bytes
        raw = signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        # Per-project view keys come from the signing key: nothing more to store or lose.
        self._tag_secret = hashlib.sha256(b"bloomlink-audit-view-keys-v2\0" + raw).digest()
        self._lock = threading.Lock()
        self._unusable = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InUseError(
                    f"{self.path}: another process has this audit log open; run one linkage "
                    "unit per log"
                ) from None
            if created:
                fsync_directory(self.path.parent)
            self._last = self._verify_existing()
            self._log_id = self._last.log_id if self._last else new_log_id()
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        signing_key_path: Path | str,
        clock: Callable[[], datetime] = _utc_now,
    ) -> AuditLog:
        """Open (or start) the log at ``path`` signed by the key at ``signing_key_path``."""
        return cls(path, signing_key=load_or_create_signing_key(signing_key_path), clock=clock)

    def view_key(self, project_id: str) -> bytes:
        """The project's view key: its readers can tell its entries' stubs from others'."""
        return hmac.new(self._tag_secret, project_id.encode("ascii"), hashlib.sha256).digest()[
            :VIEW_KEY_BYTES
        ]

    def _verify_existing(self) -> AuditEntry | None:
        parsed = parse_log(self.path.read_bytes())
        if parsed.torn_line is not None:
            raise AuditError(
                f"{self.path}: the last line is incomplete (the linkage unit stopped during an "
                "append that was never acknowledged); refusing to append. See docs/audit.md",
                entry=parsed.torn_line,
            )
        entries = parsed.entries
        head = read_head(self.path)
        if not entries and head is None:
            return None
        if any(not isinstance(entry, AuditEntry) for entry in entries):
            raise AuditError(f"{self.path}: is a project's view, not a live log")
        if entries and head is None:
            raise AuditError(
                f"{self.path}: the signed head is missing, which is also what cutting entries "
                "off the end looks like; refusing to append. See docs/audit.md"
            )
        # Re-hash everything; the last signature then vouches for the whole chain.
        report = verify_chain(
            entries,
            self._key.public_key(),
            heads=[head] if head else [],
            verify_signatures=[len(entries) - 1] if entries else [],
        )
        if not report.intact:
            raise AuditError(
                f"{self.path}: {report.message}; refusing to append to a damaged log",
                entry=report.bad_index,
            )
        mistagged = check_project_tags(entries)
        if mistagged is not None:
            raise AuditError(
                f"{self.path}: {mistagged.message}; refusing to append", entry=mistagged.index
            )
        last = entries[-1]
        if not isinstance(last, AuditEntry):  # checked above; narrows the type
            raise AuditError(f"{self.path}: is a project's view, not a live log")
        return last

    @property
    def log_id(self) -> str:
        return self._log_id

    @property
    def last_entry(self) -> AuditEntry | None:
        with self._lock:
            return self._last

    def public_key_pem(self) -> bytes:
        """The LU's audit public key (PEM), for auditors and parties."""
        return public_key_pem(self._key)

    def append(self, record: AuditEvent) -> None:
        """Record ``record``; durable on disk before this returns.

        Raises :class:`AuditError` if the write failed (then nothing was recorded and the
        file is as before); a full disk is a :class:`ResourceLimitError`, so the caller sees
        RESOURCE_EXHAUSTED and can retry. A ``project_created`` gets the project's view key.
        """
        if isinstance(record, ProjectCreated) and record.view_key is None:
            record = replace(record, view_key=self.view_key(record.project_id))
        entry_record = event_record(record)
        event, project_id, details = (
            entry_record.event,
            entry_record.project_id,
            entry_record.details,
        )
        with self._lock:
            if self._unusable:
                raise AuditError(
                    f"{self.path}: a failed write could not be undone; restart the linkage unit "
                    "so the log is re-verified"
                )
            previous = self._last
            entry = build_entry(
                signing_key=self._key,
                log_id=self._log_id,
                sequence=previous.sequence + 1 if previous else 0,
                previous_hash=previous.entry_hash if previous else GENESIS_HASH,
                moment=self._clock(),
                event=event,
                project_id=project_id,
                details=details,
                salt=self._random_bytes(SALT_BYTES),
                view_key=None if project_id is None else self.view_key(project_id),
            )
            line = (line_to_json(entry) + "\n").encode("ascii")
            size = os.fstat(self._fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
                os.fsync(self._fd)
            except OSError as error:
                self._undo(size)
                if out_of_space(error) and not self._unusable:
                    raise ResourceLimitError(
                        "the linkage unit is out of disk space for its audit log; the "
                        f"{event} event was not recorded and nothing was changed. Retry once "
                        "the operator has freed space"
                    ) from None
                raise AuditError(
                    f"{self.path}: could not write the audit log ({error.strerror}); the "
                    f"{event} event was not recorded"
                ) from None
            self._last = entry
            self._write_head(entry)

    def _undo(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError:
            self._unusable = True

    def _write_head(self, entry: AuditEntry) -> None:
        head = sign_head(entry, signing_key=self._key, moment=self._clock())
        try:
            with atomic_output(head_path_for(self.path), mode=0o644) as handle:
                handle.write(head_to_json(head).encode("ascii"))
        except OSError as error:
            # The entry itself is durable; a stale head only weakens truncation evidence.
            _log.warning(
                "audit head not updated (%s); entry %d is recorded", error.strerror, entry.sequence
            )

    def head(self) -> SignedHead | None:
        """A freshly signed head for the latest entry (to publish to parties and auditors)."""
        with self._lock:
            if self._last is None:
                return None
            return sign_head(self._last, signing_key=self._key, moment=self._clock())

    def _iter_entries(self, last: int) -> Iterator[AuditEntry]:
        """The entries up to sequence ``last``, read from disk one line at a time."""
        if last < 0:
            return
        with self.path.open("rb") as handle:
            for line in handle:
                entry = line_from_json(line)
                if not isinstance(entry, AuditEntry):
                    raise AuditError(f"{self.path}: holds a line that is not a full entry")
                yield entry
                if entry.sequence >= last:
                    return

    def recorded(
        self, kind: type[AuditEvent], *, project_id: str | None, **match: str | int
    ) -> bool:
        """Whether a ``kind`` entry of ``project_id`` whose details include ``match`` is in
        the log, read from disk (start-up reconciliation; not for a hot path)."""
        last = self.last_entry
        for entry in self._iter_entries(-1 if last is None else last.sequence):
            if (
                entry.event == kind.NAME
                and entry.project_id == project_id
                and all(entry.details.get(key) == value for key, value in match.items())
            ):
                return True
        return False

    def entries(self) -> list[AuditEntry]:
        """Every entry, re-read from disk (small logs and tests; readers use :meth:`export`)."""
        last = self.last_entry
        return list(self._iter_entries(-1 if last is None else last.sequence))

    def export(self, project_id: str | None, *, viewer: str | None = None) -> AuditExport:
        """The log as a reader may see it, streamed from disk, and a signed head (JSON).

        ``project_id`` None: every entry in full (operator, auditors). Otherwise the
        project's view: its entries in full for the operator and auditors (``viewer``
        None) or partial for member party ``viewer``, every other entry as a stub. The head
        is signed now for the last entry the lines reach, so a reader can check nothing was
        cut from the end; entries appended meanwhile are left for the next read.
        """
        if project_id is not None:
            check_label(project_id, what="project id")
        with self._lock:
            last = self._last
            head = (
                sign_head(last, signing_key=self._key, moment=self._clock())
                if last is not None
                else None
            )
        end = -1 if last is None else last.sequence

        def lines() -> Iterator[bytes]:
            for entry in self._iter_entries(end):
                shown: LogLine
                if project_id is None:
                    shown = entry
                elif entry.project_id == project_id:
                    shown = entry.view_for(viewer)
                else:
                    shown = entry.stub()
                yield (line_to_json(shown) + "\n").encode("ascii")

        return AuditExport(
            lines=lines(), head=head_to_json(head).encode("ascii") if head is not None else b""
        )

    def export_project(
        self, project_id: str, destination: Path | str, *, viewer: str | None = None
    ) -> int:
        """Write a project's view (see :meth:`export`) to ``destination`` and its signed
        head to ``<destination>.head``; return how many lines it has."""
        export = self.export(project_id, viewer=viewer)
        count = 0
        with atomic_output(destination, mode=0o644) as handle:
            for line in export.lines:
                handle.write(line)
                count += 1
        if export.head:
            with atomic_output(head_path_for(destination), mode=0o644) as handle:
                handle.write(export.head)
        return count

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # also releases the flock
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Retention: deleting payloads, and auditing each deletion, however a crash interrupts it.

Stage: storage lifecycle. :meth:`Retention.retire_payload` is the one way a payload (a committed
upload's CLKs, or a partial upload's bytes) is deleted: it records the intent, deletes the
file, appends ``payload_deleted``, then marks the upload deleted and drops the intent. A
crash or a failed audit append anywhere in between leaves the intent, and
:meth:`Retention.reconcile` (at start-up and at every retention check) finishes it, so a file
is never gone without its entry for longer than it takes to retry. A crash between the
append and the last step can log one deletion twice; the verifier counts the first.

:meth:`Retention.purge_expired` applies the hold: every upload is deleted at the latest
``ProjectSettings.hold_days`` after it completed (or, if it never did, after it began),
whatever became of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from linkage_unit.audit_hook import AuditSink
from linkage_unit.checkpoints import Checkpoint, Step, no_checkpoint
from linkage_unit.storage import Retirement, Storage
from protocol.audit_events import PayloadDeleted
from protocol.errors import UnavailableError
from protocol.messages import UploadHeader, UploadState
from protocol.vocabulary import DeletionReason

__all__ = ["Retention"]

logger = logging.getLogger("bloomlink.linkage_unit.retention")


class Retention:
    """Deletes payloads durably and audibly (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._checkpoint = checkpoint

    def retire_payload(
        self, project_id: str, header: UploadHeader, *, reason: DeletionReason, partial: bool
    ) -> None:
        """Delete this upload's payload (``partial``: its uncommitted bytes) and audit it.

        If the audit append fails the intent stays and the error propagates: the deletion
        is finished by :meth:`reconcile`, never forgotten.
        """
        retirement = self._storage.intend_retirement(
            project_id, header.party_id, header.payload_sha256, reason=reason, partial=partial
        )
        self._checkpoint(Step.RETIREMENT_INTENDED)
        self._complete(retirement)

    def _complete(self, retirement: Retirement) -> None:
        self._storage.unlink_payload(retirement)
        self._checkpoint(Step.PAYLOAD_UNLINKED)
        self._audit.append(
            PayloadDeleted(
                project_id=retirement.project_id,
                party=retirement.party,
                payload_sha256=retirement.payload_sha256,
                reason=retirement.reason,
            )
        )
        self._storage.finish_retirement(retirement)
        logger.info(
            "payload deleted project=%s party=%s reason=%s",
            retirement.project_id,
            retirement.party,
            retirement.reason,
        )

    def reconcile(self) -> int:
        """Finish every deletion a crash or a failed append left half done; return how
        many were finished (one that fails again stays for the next call)."""
        finished = 0
        for retirement in self._storage.retirements():
            try:
                self._complete(retirement)
            except Exception:
                logger.exception(
                    "could not finish deleting a payload project=%s party=%s; retried later",
                    retirement.project_id,
                    retirement.party,
                )
                continue
            finished += 1
        return finished

    def settle(self, project_id: str, party: str) -> None:
        """Finish any deletion pending for this party's upload before it uploads again, so a
        new upload never shares a path with a deletion under way; UnavailableError if one
        still cannot be finished (the audit log refuses appends)."""
        for retirement in self._storage.retirements():
            if (retirement.project_id, retirement.party) != (project_id, party):
                continue
            try:
                self._complete(retirement)
            except Exception:
                logger.exception("could not finish deleting a payload before an upload")
                raise UnavailableError(
                    "the linkage unit is still finishing the deletion of this party's earlier "
                    "upload; retry later"
                ) from None

    def retire_due(self) -> int:
        """Delete every payload its project's policy says is done with: after the run
        finished (``delete-after-run``), or once every member fetched its keys
        (``delete-after-release``); return how many."""
        due = self._storage.uploads_due()
        for upload in due:
            header = upload.record.header
            self.retire_payload(header.project_id, header, reason=upload.reason, partial=False)
        return len(due)

    def apply(self, *, now: float | None = None) -> int:
        """Everything retention owes, oldest first: deletions a crash left half done, then
        payloads due by policy, then payloads past their hold. Return how many deleted."""
        return self.reconcile() + self.retire_due() + self.purge_expired(now=now)

    def purge_expired(self, *, now: float | None = None) -> int:
        """Delete every upload held past its project's hold; return how many."""
        expired = self._storage.expired_uploads(self._clock() if now is None else now)
        for record in expired:
            partial = record.state is UploadState.PARTIAL
            self.retire_payload(
                record.header.project_id,
                record.header,
                reason=(
                    DeletionReason.PARTIAL_EXPIRED if partial else DeletionReason.RETENTION_EXPIRED
                ),
                partial=partial,
            )
        return len(expired)

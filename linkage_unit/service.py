"""The linkage unit's service logic: plain Python behind the gRPC servicer.

Every method takes the authenticated :class:`Caller` and validated values from
``protocol.messages``, enforces who may do what, and raises ``protocol.errors``. Unit tests
call it directly; ``linkage_unit/servicer.py`` only translates. "Not yours" and "does not
exist" raise the same :class:`NotFoundError` with the same message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import NoReturn

from linkage_unit.admission import Admission, Operation, require_role
from linkage_unit.audit_hook import AuditExport, AuditReader, AuditSink
from linkage_unit.checks import compatibility_refusal
from linkage_unit.manifest_policy import (
    ManifestPolicy,
    Refusal,
    freshness_refusal,
    manifest_refusal,
    nonce_refusal,
)
from linkage_unit.run import RunManager
from linkage_unit.storage import Storage
from linkage_unit.uploads import UploadClaim, UploadLimits, UploadRegistry, UploadSession
from protocol.audit_events import (
    AccessRefused,
    KeysReleased,
    PartyAuthenticated,
    ProjectCreated,
    UploadCommitted,
    UploadRefused,
    event_record,
)
from protocol.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ResourceLimitError,
)
from protocol.identity import Identity, Role
from protocol.labels import spine_of_key_context
from protocol.manifest import SignedManifest
from protocol.messages import (
    LinkKeyBatch,
    PartyStatus,
    ProjectSettings,
    ProjectStatus,
    RunState,
    RunTicket,
    UploadHeader,
    UploadProgress,
    UploadState,
)
from protocol.vocabulary import DeletionReason, UploadRefusal

__all__ = ["Caller", "LinkageService", "upload_committed"]

logger = logging.getLogger("bloomlink.linkage_unit")

_NO_PROJECT = "no such project (or you are not a member of it)"
_NO_KEYS = "no link keys for this project and party"


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """An authenticated caller: its identity and its certificate's SHA-256 (hex)."""

    identity: Identity
    certificate_fingerprint: str


def upload_committed(header: UploadHeader, manifest: SignedManifest | None) -> UploadCommitted:
    """The audit event of an upload committed under ``header`` (the one place its details
    are written: the manifest check compares against the same)."""
    return UploadCommitted(
        project_id=header.project_id,
        party=header.party_id,
        record_count=header.record_count,
        clk_bits=header.clk_bits,
        payload_sha256=header.payload_sha256,
        schema_fingerprint=header.schema_fingerprint,
        kcv=header.kcv,
        manifest_sha256=manifest.manifest.sha256 if manifest is not None else None,
        layout_sha256=header.layout.sha256 if header.layout is not None else None,
        spine=None if header.key_context is None else spine_of_key_context(header.key_context),
    )


class LinkageService:
    """Projects, uploads, runs and link keys, for callers already authenticated."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditSink,
        runs: RunManager,
        *,
        limits: UploadLimits | None = None,
        audit_reader: AuditReader | None = None,
        manifest_policy: ManifestPolicy | None = None,
        admission: Admission | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.audit = audit
        self.runs = runs
        self.limits = limits or UploadLimits()
        self.audit_reader = audit_reader
        self.manifest_policy = manifest_policy or ManifestPolicy()
        self.admission = admission or Admission()
        self.retention = runs.retention
        self._clock = clock
        self._uploads = UploadRegistry()
        # Serialises "is this nonce unused?" with recording it at commit (case 10).
        self._commit_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Call once when the LU starts, before serving: finish whatever a crash left half
        done (uploads being published, payload deletions, runs whose keys are stored but
        whose run_finished is not logged), resume interrupted runs, apply retention."""
        recovered = self.storage.recover_uploads()
        for record in recovered:
            self._start_if_ready(record.header.project_id)
        resumed = self.runs.resume()
        deleted = self.retention.apply()
        logger.info(
            "linkage unit state loaded recovered_uploads=%d resumed_runs=%d deleted_payloads=%d",
            len(recovered),
            resumed,
            deleted,
        )

    def maintain(self) -> int:
        """The periodic check: finish runs and deletions an audit append failed for, then
        apply retention (every upload is deleted by its hold, whatever its run's state).
        Return how many payloads were deleted."""
        self.runs.reconcile()
        return self.retention.apply()

    # -- authorisation helpers ----------------------------------------------------------

    def admit(
        self, caller: Caller, operation: Operation, *, stream: bool = False
    ) -> AbstractContextManager[None]:
        """Admission for a call as it starts, before any request message is read: the role
        may make it, a stream slot is free, an audited call has budget (admission.py)."""
        return self.admission.admit(caller.identity, operation, stream=stream)

    def _visible_project(
        self, caller: Caller, project_id: str, *, call: Operation
    ) -> ProjectSettings:
        """The project, if the caller may see it. Otherwise NotFoundError, the same for
        "not a member" and "does not exist"; a party's probe is audited either way."""
        project = self.storage.project(project_id)
        if project is not None and (
            caller.identity.role is not Role.PARTY or caller.identity.party in project.members
        ):
            return project
        if caller.identity.role is Role.PARTY:
            self._refuse_access(
                caller, project_id, exists=project is not None, call=call, requested_party=None
            )
        raise NotFoundError(_NO_PROJECT)

    def _refuse_access(
        self,
        caller: Caller,
        project_id: str,
        *,
        exists: bool,
        call: Operation,
        requested_party: str | None,
    ) -> None:
        """Audit a party's refused request for a project it is not in, or for another
        party's keys; the auditor sees who asked for what, the caller only "not found"."""
        self.admission.charge_audited(caller.identity)
        self.audit.append(
            AccessRefused(
                project_id=project_id if exists else None,
                party=caller.identity.party or "",
                requested_project=project_id,
                call=str(call),
                requested_party=requested_party,
                certificate_fingerprint=caller.certificate_fingerprint,
            )
        )

    def _authenticated(self, caller: Caller, project_id: str) -> None:
        self.audit.append(
            PartyAuthenticated(
                project_id=project_id,
                party=caller.identity.party or "",
                role=str(caller.identity.role),
                certificate_fingerprint=caller.certificate_fingerprint,
            )
        )

    # -- projects -----------------------------------------------------------------------

    def create_project(self, caller: Caller, settings: ProjectSettings) -> str:
        """Register a project; return its settings fingerprint."""
        require_role(caller.identity, Operation.CREATE_PROJECT)
        if settings.spine is not None:
            self.runs.spine_for(settings)  # refused now, not after every party has uploaded
        self.storage.create_project(settings)
        self.audit.append(
            ProjectCreated(
                project_id=settings.project_id,
                settings_fingerprint=settings.fingerprint,
                members=settings.members,
                schema_fingerprint=settings.schema_fingerprint,
                retention=settings.retention_policy,
                hold_days=settings.hold_days,
                link_model=settings.link_model,
                layout_sha256=settings.layout.sha256 if settings.layout is not None else None,
                deduplicated=settings.deduplicated or None,
                max_cluster_size=settings.max_cluster_size if settings.deduplicated else None,
            )
        )
        logger.info(
            "project created project=%s members=%d link_model=%s",
            settings.project_id,
            len(settings.members),
            settings.link_model,
        )
        return settings.fingerprint

    def project_status(self, caller: Caller, project_id: str) -> ProjectStatus:
        """The project's state. The operator and auditors see every party and every figure
        of the run; a member party sees its own upload and the run's state only, never a
        figure that depends on another party's data (docs/audit.md, "Who can learn what")."""
        project = self._visible_project(caller, project_id, call=Operation.GET_PROJECT_STATUS)
        viewer = caller.identity.party if caller.identity.role is Role.PARTY else None
        parties = []
        for party in project.members:
            if viewer is not None and party != viewer:
                continue
            record = self.storage.upload(project_id, party)
            parties.append(
                PartyStatus(
                    party_id=party,
                    upload_state=record.state if record else UploadState.NOT_STARTED,
                    committed_bytes=record.committed_bytes if record else 0,
                    record_count=record.header.record_count if record else 0,
                )
            )
        status = ProjectStatus(
            project_id=project_id,
            parties=tuple(parties),
            run_state=RunState.WAITING_FOR_UPLOADS,
            schema_fingerprint=project.schema_fingerprint,
            settings_fingerprint=project.fingerprint,
        )
        run = self.runs.latest_run(project_id)
        if run is None:
            if self.runs.all_uploaded(project_id):
                # Only a project without auto-run gets here: its run waits for the operator.
                return replace(status, run_state=RunState.READY)
            return status
        if viewer is not None:
            # A party learns whether the run finished, and why its own upload was refused.
            own_refusal = run.check_party == viewer
            return replace(
                status,
                run_state=run.state,
                run_id=run.run_id,
                check_party_id=run.check_party if own_refusal else "",
                check_aspect=run.check_aspect if own_refusal else "",
            )
        return replace(
            status,
            run_state=run.state,
            run_id=run.run_id,
            progress_stage=run.stage,
            progress_done=run.done,
            progress_total=run.total,
            check_party_id=run.check_party,
            check_aspect=run.check_aspect,
            cluster_count=run.cluster_count,
            linked_record_count=run.linked_record_count,
            comparisons=run.comparisons,
            threshold=run.threshold,
            threshold_method=run.threshold_method,
            estimated_precision=None if run.estimated is None else run.estimated.precision,
            estimated_recall=None if run.estimated is None else run.estimated.recall,
            estimated_f1=None if run.estimated is None else run.estimated.f1,
        )

    def project_report(self, caller: Caller, project_id: str) -> tuple[str, str]:
        """The operator's match-quality report of the project's newest finished run: its
        run id and report JSON (linkage_unit/report.py; aggregates only). A party never gets
        it. FAILED_PRECONDITION while no run has finished."""
        require_role(caller.identity, Operation.GET_PROJECT_REPORT)
        self._visible_project(caller, project_id, call=Operation.GET_PROJECT_REPORT)
        found = self.storage.finished_report(project_id)
        if found is None:
            raise PreconditionError(
                "no finished run with a report for this project: wait for its run to finish"
            )
        return found

    def start_run(self, caller: Caller, project_id: str) -> RunTicket:
        require_role(caller.identity, Operation.START_RUN)
        self._visible_project(caller, project_id, call=Operation.START_RUN)
        return self.runs.start(project_id, automatic=False)

    # -- uploads ------------------------------------------------------------------------

    def _uploader(self, caller: Caller, project_id: str, party_id: str) -> ProjectSettings:
        require_role(caller.identity, Operation.UPLOAD)
        project = self._visible_project(caller, project_id, call=Operation.UPLOAD)
        if party_id != caller.identity.party:
            raise PermissionDeniedError("a party may upload only as itself")
        return project

    def upload_offset(
        self, caller: Caller, project_id: str, party_id: str, payload_sha256: bytes
    ) -> UploadProgress:
        """Bytes held for this payload digest (0 if a different payload is stored)."""
        self._uploader(caller, project_id, party_id)
        record = self.storage.upload(project_id, party_id)
        if record is None or record.header.payload_sha256 != payload_sha256:
            return UploadProgress(committed_bytes=0, payload_bytes=0, state=UploadState.NOT_STARTED)
        return UploadProgress(
            committed_bytes=record.committed_bytes,
            payload_bytes=record.header.payload_bytes,
            state=record.state,
        )

    def _refuse_upload(
        self,
        header: UploadHeader,
        error: Exception,
        *,
        reason: UploadRefusal,
        manifest: SignedManifest | None = None,
    ) -> NoReturn:
        """Audit a refused upload (reason code, never a value), then raise ``error``."""
        self.audit.append(
            UploadRefused(
                project_id=header.project_id,
                party=header.party_id,
                reason=reason,
                manifest_sha256=manifest.manifest.sha256 if manifest is not None else None,
            )
        )
        logger.warning(
            "upload refused project=%s party=%s reason=%s",
            header.project_id,
            header.party_id,
            reason,
        )
        raise error

    def _refuse(
        self, header: UploadHeader, refusal: Refusal | None, manifest: SignedManifest | None
    ) -> None:
        if refusal is not None:
            self._refuse_upload(header, refusal.error, reason=refusal.reason, manifest=manifest)

    def _check_manifest(self, header: UploadHeader, manifest: SignedManifest | None) -> None:
        """Signature, signer, party and agreement with the header (case 12)."""
        details = event_record(upload_committed(header, manifest)).details
        refusal = manifest_refusal(self.manifest_policy, header, manifest, upload_details=details)
        self._refuse(header, refusal, manifest)

    def _check_compatible(self, project: ProjectSettings, header: UploadHeader) -> None:
        """Refuse, before any byte is stored, a header that cannot be compared with the
        project's schema or with what another member has already uploaded: the run would
        only be refused later, after the whole transfer."""
        refusal = compatibility_refusal(
            project,
            header,
            self._other_uploads(project, header),
            spine_kcv=self.runs.spine_kcv(project),
        )
        if refusal is not None:
            self._refuse_upload(header, refusal.error, reason=refusal.reason)

    def _other_uploads(self, project: ProjectSettings, header: UploadHeader) -> list[UploadHeader]:
        others = []
        for party in project.members:
            if party == header.party_id:
                continue
            record = self.storage.upload(project.project_id, party)
            if record is not None and record.state is UploadState.COMPLETE:
                others.append(record.header)
        return others

    def _check_fresh_manifest(self, header: UploadHeader, manifest: SignedManifest | None) -> None:
        """For an upload not yet committed: the manifest's time is plausible (case 29) and
        its nonce has not vouched for a committed upload before (case 10)."""
        if manifest is None:
            return
        self._refuse(
            header, freshness_refusal(self.manifest_policy, manifest, now=self._clock()), manifest
        )
        self._check_nonce_unused(header, manifest)

    def _check_nonce_unused(self, header: UploadHeader, manifest: SignedManifest) -> None:
        vouched = self.storage.manifest_for_nonce(manifest.manifest.nonce)
        self._refuse(header, nonce_refusal(vouched), manifest)

    def open_upload(
        self, caller: Caller, header: UploadHeader, manifest: SignedManifest | None = None
    ) -> UploadSession:
        """Begin or resume an upload. Release it with :meth:`UploadSession.close`."""
        project = self._uploader(caller, header.project_id, header.party_id)
        self._check_manifest(header, manifest)
        self._check_compatible(project, header)
        if header.payload_bytes > self.limits.max_upload_bytes:
            raise ResourceLimitError(
                f"the payload ({header.payload_bytes} bytes) exceeds this linkage unit's "
                f"upload cap of {self.limits.max_upload_bytes} bytes; ask the operator"
            )
        claim = self._uploads.claim(header)
        try:
            self.retention.settle(header.project_id, header.party_id)
            self._authenticated(caller, header.project_id)
            record = self.storage.upload(header.project_id, header.party_id)
            resumable = (UploadState.PARTIAL, UploadState.COMPLETE)
            if record is not None and record.header == header and record.state in resumable:
                if record.state is UploadState.PARTIAL:
                    self._check_fresh_manifest(header, manifest)
                    self.storage.check_free_space(header.payload_bytes - record.committed_bytes)
                elif manifest is not None:
                    # A re-send of a committed upload is a no-op, but only under the manifest
                    # that vouched for it (or one never used): a nonce vouches once.
                    recorded = self.storage.manifest_for_nonce(manifest.manifest.nonce)
                    if recorded is not None and recorded != manifest.manifest.sha256:
                        self._check_nonce_unused(header, manifest)
                return self._session(claim, header, record.committed_bytes, manifest)
            # Before anything held is superseded or replaced: a refused manifest changes nothing.
            self._check_fresh_manifest(header, manifest)
            if record is not None and record.state is UploadState.PARTIAL:
                self.discard_upload(record.header, reason=DeletionReason.SUPERSEDED)
            elif record is not None:
                latest = self.storage.latest_run(header.project_id)
                replaceable = (
                    record.state is UploadState.COMPLETE
                    and latest is not None
                    and latest.state is RunState.REFUSED
                )
                if not replaceable:
                    raise AlreadyExistsError(
                        "this party has already uploaded a different payload to this project"
                    )
                self.retention.retire_payload(
                    header.project_id, record.header, reason=DeletionReason.REPLACED, partial=False
                )
            self.storage.check_free_space(header.payload_bytes)
            self.storage.begin_upload(header)
            return self._session(claim, header, 0, manifest)
        except BaseException:
            claim.release()
            raise

    def _session(
        self,
        claim: UploadClaim,
        header: UploadHeader,
        committed: int,
        manifest: SignedManifest | None,
    ) -> UploadSession:
        return UploadSession(
            owner=self,
            storage=self.storage,
            limits=self.limits,
            claim=claim,
            header=header,
            committed=committed,
            manifest=manifest,
        )

    def commit_upload(self, header: UploadHeader, manifest: SignedManifest | None) -> None:
        """Every byte of an upload is here: check its nonce is still unused, verify its
        digest, log ``upload_committed`` and publish it (in that order: a failed append
        leaves it PARTIAL with all its bytes); a digest mismatch deletes its bytes. Then
        start the run if every member has uploaded and the project runs by itself."""
        committed = upload_committed(header, manifest)
        with self._commit_lock:
            if manifest is not None:
                self._check_nonce_unused(header, manifest)  # another stream may have won
            try:
                self.storage.complete_upload(
                    header.project_id,
                    header.party_id,
                    before_publish=lambda: self.audit.append(committed),
                    manifest_nonce=manifest.manifest.nonce if manifest else b"",
                    manifest_sha256=manifest.manifest.sha256 if manifest else "",
                )
            except InvalidRequestError:
                self.discard_upload(header, reason=DeletionReason.DIGEST_MISMATCH)
                raise
        logger.info(
            "upload committed project=%s party=%s records=%d",
            header.project_id,
            header.party_id,
            header.record_count,
        )
        self._start_if_ready(header.project_id)

    def discard_upload(self, header: UploadHeader, *, reason: DeletionReason) -> None:
        """Delete an upload that was never committed (its partial bytes), audited."""
        self.retention.retire_payload(header.project_id, header, reason=reason, partial=True)

    def _start_if_ready(self, project_id: str) -> None:
        project = self.storage.project(project_id)
        if project is not None and project.auto_run:
            self.runs.start(project_id, automatic=True)

    # -- link keys ----------------------------------------------------------------------

    def fetch_link_keys(
        self, caller: Caller, project_id: str, party_id: str
    ) -> Iterator[LinkKeyBatch]:
        """The caller's own link keys in release order; anything else is NOT_FOUND."""
        require_role(caller.identity, Operation.FETCH_LINK_KEYS)
        project = self.storage.project(project_id)
        if (
            project is None
            or caller.identity.party not in project.members
            or party_id != caller.identity.party
        ):
            # Audited for the auditor (case 16); the caller sees only "not found".
            self._refuse_access(
                caller,
                project_id,
                exists=project is not None,
                call=Operation.FETCH_LINK_KEYS,
                requested_party=party_id,
            )
            raise NotFoundError(_NO_KEYS)
        key_set = self.storage.key_set(project_id, party_id)
        if key_set is None:
            raise PreconditionError("the project's run has not finished; see project status")
        self._authenticated(caller, project_id)
        self.audit.append(
            KeysReleased(
                project_id=project_id,
                party=party_id,
                run_id=key_set.run_id,
                key_count=key_set.key_count,
                keys_sha256=key_set.keys_sha256,
            )
        )
        logger.info(
            "link keys released project=%s party=%s keys=%d",
            project_id,
            party_id,
            key_set.key_count,
        )
        fetched = self.storage.record_key_release(project_id, party_id)
        if project.retention_days > 0 and fetched >= set(project.members):
            # Every member has its keys: the CLKs have served their purpose (retention).
            self.retention.retire_due()
        return self._key_batches(project_id, party_id, key_set.key_count, key_set.keys_sha256)

    # -- audit --------------------------------------------------------------------------

    def audit_public_key(self, caller: Caller) -> bytes:
        """The LU's audit public key (PEM): not secret, given to any authenticated caller."""
        return self._reader().public_key_pem()

    def project_settings(self, caller: Caller, project_id: str) -> ProjectSettings:
        """A project's settings, for the operator, auditors and its members."""
        return self._visible_project(caller, project_id, call=Operation.GET_PROJECT_SETTINGS)

    def audit_lines(self, caller: Caller, project_id: str | None) -> AuditExport:
        """The audit log as the caller may read it, streamed, and a signed head covering it.

        The operator and auditors may read the whole log or one project's view (that
        project's entries in full, every other entry as a stub). A member party may read
        only its own project's view, in which the other parties' figures are withheld
        (``protocol.audit.withheld_from``). A non-member is told the project does not exist.
        """
        require_role(caller.identity, Operation.FETCH_AUDIT_LOG)
        if project_id is None:
            if caller.identity.role is Role.PARTY:
                raise PermissionDeniedError(
                    "a party may read only its own project's audit entries; give the project id"
                )
        else:
            self._visible_project(caller, project_id, call=Operation.FETCH_AUDIT_LOG)
        viewer = caller.identity.party if caller.identity.role is Role.PARTY else None
        return self._reader().export(project_id, viewer=viewer)

    def _reader(self) -> AuditReader:
        if self.audit_reader is None:
            raise PreconditionError("this linkage unit's audit sink cannot be read back")
        return self.audit_reader

    def _key_batches(
        self, project_id: str, party_id: str, total: int, digest: str
    ) -> Iterator[LinkKeyBatch]:
        sent = 0
        for rows in self.storage.iter_link_keys(
            project_id, party_id, batch_size=self.limits.chunk_batch_size
        ):
            sent += len(rows.link_keys)
            yield LinkKeyBatch(
                positions=tuple(rows.positions),
                link_keys=tuple(rows.link_keys),
                total_count=total,
                keys_sha256=digest if sent == total else "",
            )
        if total == 0:
            yield LinkKeyBatch(positions=(), link_keys=(), total_count=0, keys_sha256=digest)

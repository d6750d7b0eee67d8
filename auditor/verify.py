"""The auditor's verification of a linkage unit's audit log (``bloomlink audit verify``).

Stage: audit, auditor side. Needs only the log (or one project's view of it), the LU's
public key and, optionally, the parties' signed manifests and signed heads collected
earlier; never a CLK, an identifier or the linkage secret. It checks, in order:

1. **chain**: every line parses, every hash recomputes from what the line shows, every
   signature is the LU's, no entry is missing, reordered or foreign, and every signed head
   matches (else truncation); with no signed head at all the log fails, since a cut-off end
   would go unnoticed;
2. **form**: a whole log admits only full entries (a stub could hide anything) with every
   project tag its project's; a project's view (:class:`AuditView`) shows that project's
   entries, hides none of them as a stub, and withholds no more than the policy withholds
   from its reader;
3. **project rules**, replayed entry by entry for each project: the link model agrees with
   the members it deduplicates (shown as a note); uploads only from members, each with the
   project's layout digest (a grouped project's groups and hardening, none for one CLK);
   ``checks_passed`` names exactly the members, follows the project's last upload, and the
   uploads it covers really share the project's schema fingerprint, one KCV and one CLK
   length; every ``run_started`` follows a ``checks_passed`` with no later upload or failed
   check; ``run_resumed`` continues a started run; each run finishes once;
   ``keys_released`` goes only to the run's parties, once per party per run, with as many
   keys as that party uploaded records; deletions name payloads that were uploaded. In a
   party's view a rule that needs a withheld value is left to the project's auditor;
4. **retention**, one verdict per committed upload, run or not: deleted, due and not
   deleted, held past its ``hold_days``, or not yet due (and when it will be);
5. **manifests**: each manifest's signature (and the party's registered key, if given), and
   an ``upload_committed`` entry with the same project, party, payload digest, record count,
   CLK length, schema fingerprint, KCV, layout digest, key context (the logged ``spine``)
   and manifest digest (when the LU logged one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.audit import (
    AuditEntry,
    EntryView,
    LogLine,
    RedactedEntry,
    SignedHead,
    check_project_tags,
    head_from_json,
    parse_log,
    project_tag,
    verify_chain,
    withheld_from,
)
from protocol.errors import AuditError, ConfigurationError
from protocol.manifest import SignedManifest, manifest_mismatches, verify_manifest
from protocol.signing import public_key_fingerprint
from protocol.vocabulary import DeletionReason, LinkModel, RetentionPolicy

__all__ = [
    "PARTIAL_UPLOAD_REASONS",
    "AuditReport",
    "AuditView",
    "Check",
    "verify_audit_log",
    "wire_checks",
]

# payload_deleted reasons for bytes of an upload that was never committed (the LU discards
# them: a newer upload superseded it, the stream broke the cap, the digest did not match).
PARTIAL_UPLOAD_REASONS = frozenset(reason for reason in DeletionReason if reason.partial)

PASS = "pass"
FAIL = "fail"
NOTE = "note"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One verdict: ``status`` is pass, fail or note (information that is not a failure)."""

    name: str
    status: str
    message: str
    project_id: str | None = None
    entry: int | None = None

    def __post_init__(self) -> None:
        if self.status not in {PASS, FAIL, NOTE}:
            raise ValueError(f"unknown check status {self.status!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    log_path: str
    entry_count: int
    log_id: str | None
    public_key_fingerprint: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.status == FAIL)

    def to_record(self) -> dict[str, object]:
        return {
            "log": self.log_path,
            "entry_count": self.entry_count,
            "log_id": self.log_id,
            "public_key_sha256": self.public_key_fingerprint,
            "passed": self.passed,
            "failure_count": len(self.failures),
            "checks": [
                {
                    "name": check.name,
                    "status": check.status,
                    "project_id": check.project_id,
                    "entry": check.entry,
                    "message": check.message,
                }
                for check in self.checks
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_record(), indent=2, sort_keys=True)

    def to_text(self) -> str:
        lines = [
            f"audit log {self.log_path}: {self.entry_count} entries, log id {self.log_id}, "
            f"LU key sha256:{self.public_key_fingerprint[:16]}"
        ]
        for check in self.checks:
            where = []
            if check.project_id:
                where.append(f"project {check.project_id}")
            if check.entry is not None:
                where.append(f"entry {check.entry}")
            prefix = f" [{', '.join(where)}]" if where else ""
            lines.append(f"{check.status.upper():<4}  {check.name:<10}{prefix} {check.message}")
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} failure(s))"
        lines.append(f"result: {verdict}")
        return "\n".join(lines)


@dataclass(slots=True)
class _Upload:
    """One committed upload as the log shows it; a withheld value (another party's, in a
    party's view) is None."""

    index: int
    party: str
    payload: str | None
    record_count: int | None
    moment: datetime
    used_by: list[str] = field(default_factory=list)
    superseded_at: int | None = None


@dataclass(slots=True)
class _Run:
    started: int
    parties: tuple[str, ...]
    uploads: dict[str, _Upload]
    finished: int | None = None
    released: dict[str, int] = field(default_factory=dict)
    released_digest: dict[str, tuple[object, object]] = field(default_factory=dict)


@dataclass(slots=True)
class _Deletion:
    index: int
    party: str
    payload: str | None
    reason: str


@dataclass(slots=True)
class _Project:
    created: int
    members: tuple[str, ...]
    schema_fingerprint: str
    retention: str
    hold_days: int
    # A grouped project's layout digest (every upload must have it); None: one CLK.
    layout_sha256: str | None = None
    uploads: dict[str, _Upload] = field(default_factory=dict)
    committed: list[_Upload] = field(default_factory=list)
    upload_details: dict[str, Mapping[str, str | int]] = field(default_factory=dict)
    last_upload: int = -1
    last_passed: tuple[int, tuple[str, ...]] | None = None
    last_failed: int = -1
    runs: dict[str, _Run] = field(default_factory=dict)
    last_finished: str | None = None
    deletions: list[_Deletion] = field(default_factory=list)


def _moment(timestamp: str) -> datetime:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


Revealed = AuditEntry | EntryView


@dataclass(slots=True)
class _Spine:
    """A spine as its project-less entries show it: the KCV a rotation last bound it to."""

    created: int
    kcv: str | None = None


class _Replay:
    """Replays the log's events per project and collects every rule broken. In a party's
    view some values are withheld; a rule that needs one is left to the project's auditor."""

    def __init__(self) -> None:
        self.projects: dict[str, _Project] = {}
        self.checks: list[Check] = []
        self.uploads_by_key: dict[tuple[str, str, str], Revealed] = {}
        self.notes: list[Check] = []
        self.unmanifested: list[tuple[str, int]] = []
        self.spines: dict[str, _Spine] = {}

    def fail(self, project_id: str | None, index: int, message: str, name: str = "rules") -> None:
        self.checks.append(
            Check(name=name, status=FAIL, message=message, project_id=project_id, entry=index)
        )

    def run(self, entries: Sequence[LogLine]) -> None:
        for index, entry in enumerate(entries):
            if isinstance(entry, RedactedEntry):
                continue
            if entry.project_id is None:
                self._on_spine_entry(index, entry)
                continue
            handler = getattr(self, f"_on_{entry.event}")
            if entry.event == "project_created":
                handler(index, entry)
                continue
            project = self.projects.get(entry.project_id)
            if project is None:
                self.fail(entry.project_id, index, f"{entry.event} before the project was created")
                continue
            handler(index, entry, project)

    def _on_spine_entry(self, index: int, entry: Revealed) -> None:
        """Spine entries (docs/spine.md): a spine is created once; rotations, retention
        deletions and crosswalk releases name a spine created before them; a rotation moves
        the KCV binding from the one the last rotation bound to a different one; a retention
        deletion removed something."""
        if not entry.event.startswith("spine_") and entry.event != "crosswalk_released":
            return
        name = str(entry.details["spine"])
        spine = self.spines.get(name)
        if entry.event == "spine_created":
            if spine is not None:
                self.fail(None, index, f"spine {name} created twice")
            else:
                self.spines[name] = _Spine(created=index)
            return
        if spine is None:
            self.fail(None, index, f"{entry.event} of spine {name} before it was created")
            return
        if entry.event == "spine_rotated":
            old, new = str(entry.details["old_kcv"]), str(entry.details["new_kcv"])
            if old == new:
                self.fail(None, index, f"spine {name} rotated to the KCV it already had")
            elif spine.kcv is not None and old != spine.kcv:
                self.fail(
                    None,
                    index,
                    f"spine {name} rotated from a KCV its last rotation did not bind it to",
                )
            spine.kcv = new
        elif entry.event == "spine_pruned" and int(entry.details["records_removed"]) < 1:
            self.fail(None, index, f"spine {name} logged a retention deletion of no record")

    def _on_project_created(self, index: int, entry: Revealed) -> None:
        project_id = str(entry.project_id)
        if project_id in self.projects:
            self.fail(project_id, index, "project created twice")
            return
        details = entry.details
        members = tuple(str(details["members"]).split(","))
        layout = details.get("layout_sha256")
        self.projects[project_id] = _Project(
            created=index,
            members=members,
            schema_fingerprint=str(details["schema_fingerprint"]),
            retention=str(details["retention"]),
            hold_days=int(details["hold_days"]),
            layout_sha256=None if layout is None else str(layout),
        )
        self._link_model(index, entry, members)

    def _link_model(self, index: int, entry: Revealed, members: tuple[str, ...]) -> None:
        """Show the project's link model; it may deduplicate members only, and says so. A
        log written before link models has none: one-to-one."""
        project_id = str(entry.project_id)
        details = entry.details
        model = str(details.get("link_model", LinkModel.ONE_TO_ONE))
        deduplicated = [p for p in str(details.get("deduplicated", "")).split(",") if p]
        strangers = sorted(set(deduplicated) - set(members))
        expected = (
            LinkModel.ONE_TO_ONE
            if not deduplicated
            else LinkModel.DEDUPE_ONLY
            if len(members) == 1
            else LinkModel.DEDUPE_AND_LINK
        )
        if strangers:
            self.fail(project_id, index, f"the link model deduplicates non-members {strangers}")
        elif model != expected:
            self.fail(
                project_id,
                index,
                f"link model {model!r} disagrees with the deduplicated members "
                f"({', '.join(deduplicated) or 'none'})",
            )
        elif len(members) < 2 and not deduplicated:
            self.fail(project_id, index, "a one-party project that deduplicates nothing")
        elif "max_cluster_size" in details and not deduplicated:
            self.fail(project_id, index, "a cluster-size cap in a project that deduplicates none")
        message = f"link model {model}"
        if deduplicated:
            clean = [party for party in members if party not in deduplicated]
            message += f": {', '.join(deduplicated)} deduplicated"
            if clean:
                message += f", at most one record per person from {', '.join(clean)}"
            if "max_cluster_size" in details:
                message += f"; clusters capped at {details['max_cluster_size']} records"
        self.notes.append(
            Check(name="model", status=NOTE, message=message, project_id=project_id, entry=index)
        )

    def _on_access_refused(self, index: int, entry: Revealed, project: _Project) -> None:
        # Not a failure of the LU: it is the LU doing its job. The auditor sees who asked.
        call = entry.details.get("call", "fetch_link_keys")
        self.notes.append(
            Check(
                name="access",
                status=NOTE,
                message=f"party {entry.details['party']} was refused {call} on a project it "
                "is not in, or another party's keys",
                project_id=entry.project_id,
                entry=index,
            )
        )

    def _on_upload_refused(self, index: int, entry: Revealed, project: _Project) -> None:
        # The LU refusing an upload is the LU doing its job; nothing was stored or counted.
        reason = entry.details.get("reason", "reason withheld from this view")
        self.notes.append(
            Check(
                name="uploads",
                status=NOTE,
                message=f"an upload from {entry.details['party']} was refused ({reason})",
                project_id=entry.project_id,
                entry=index,
            )
        )

    def _on_party_authenticated(self, index: int, entry: Revealed, project: _Project) -> None:
        return

    def _on_upload_committed(self, index: int, entry: Revealed, project: _Project) -> None:
        party = str(entry.details["party"])
        if party not in project.members:
            self.fail(entry.project_id, index, f"upload from {party}, which is not a member")
        payload = entry.details.get("payload_sha256")
        count = entry.details.get("record_count")
        upload = _Upload(
            index=index,
            party=party,
            payload=None if payload is None else str(payload),
            record_count=None if count is None else int(count),
            moment=_moment(entry.timestamp),
        )
        previous = project.uploads.get(party)
        if previous is not None and previous.payload != upload.payload:
            previous.superseded_at = index
        project.uploads[party] = upload
        project.committed.append(upload)
        project.upload_details[party] = entry.details
        if "manifest_sha256" not in entry.details and "manifest_sha256" not in entry.withheld:
            self.unmanifested.append((str(entry.project_id), index))
        if "layout_sha256" not in entry.withheld:
            layout = entry.details.get("layout_sha256")
            if layout != project.layout_sha256:
                self.fail(
                    entry.project_id,
                    index,
                    f"upload from {party} does not have the project's layout (its field "
                    "groups or their hardening differ); the LU must refuse such an upload",
                )
        project.last_upload = index
        if payload is not None:
            self.uploads_by_key[(str(entry.project_id), party, str(payload))] = entry

    def _on_checks_passed(self, index: int, entry: Revealed, project: _Project) -> None:
        parties = tuple(str(entry.details["parties"]).split(","))
        if set(parties) != set(project.members):
            self.fail(entry.project_id, index, "checks passed for parties other than the members")
        missing = [party for party in parties if party not in project.uploads]
        if missing:
            self.fail(
                entry.project_id, index, f"checks passed before {', '.join(missing)} uploaded"
            )
        else:
            uploads = [project.upload_details[party] for party in parties]
            for aspect in ("schema_fingerprint", "kcv", "clk_bits"):
                values = [upload.get(aspect) for upload in uploads]
                if None not in values and len(set(values)) != 1:
                    self.fail(
                        entry.project_id,
                        index,
                        f"checks passed although the uploads' {aspect} differ",
                    )
            if any(
                upload.get("schema_fingerprint", project.schema_fingerprint)
                != project.schema_fingerprint
                for upload in uploads
            ):
                self.fail(
                    entry.project_id,
                    index,
                    "checks passed although an upload's schema is not the project's",
                )
        project.last_passed = (index, parties)

    def _on_checks_failed(self, index: int, entry: Revealed, project: _Project) -> None:
        project.last_failed = index

    def _on_run_started(self, index: int, entry: Revealed, project: _Project) -> None:
        run_id = str(entry.details["run_id"])
        parties = tuple(str(entry.details["parties"]).split(","))
        passed = project.last_passed
        if passed is None:
            self.fail(entry.project_id, index, f"run {run_id} started without checks passing")
        elif passed[0] < project.last_upload:
            self.fail(
                entry.project_id,
                index,
                f"run {run_id} started after an upload that no check covered (entry "
                f"{project.last_upload})",
            )
        elif project.last_failed > passed[0]:
            self.fail(
                entry.project_id,
                index,
                f"run {run_id} started after checks failed (entry {project.last_failed})",
            )
        elif set(passed[1]) != set(parties):
            self.fail(
                entry.project_id, index, f"run {run_id} compares other parties than were checked"
            )
        if run_id in project.runs:
            self.fail(entry.project_id, index, f"run {run_id} started twice")
            return
        uploads = {party: upload for party, upload in project.uploads.items() if party in parties}
        for upload in uploads.values():
            upload.used_by.append(run_id)
        project.runs[run_id] = _Run(started=index, parties=parties, uploads=uploads)

    def _on_run_resumed(self, index: int, entry: Revealed, project: _Project) -> None:
        run_id = str(entry.details["run_id"])
        run = project.runs.get(run_id)
        if run is None or run.finished is not None:
            self.fail(
                entry.project_id,
                index,
                f"run {run_id} resumed without starting, or after it finished",
            )

    def _on_spine_run_linked(self, index: int, entry: Revealed, project: _Project) -> None:
        # A run into a spine (docs/spine.md): within its run, before it finished.
        run_id = str(entry.details["run_id"])
        run = project.runs.get(run_id)
        if run is None or run.finished is not None:
            self.fail(
                entry.project_id,
                index,
                f"run {run_id} linked into spine {entry.details['spine']} without starting, "
                "or after it finished",
            )

    def _on_run_finished(self, index: int, entry: Revealed, project: _Project) -> None:
        run_id = str(entry.details["run_id"])
        run = project.runs.get(run_id)
        if run is None or run.finished is not None:
            self.fail(entry.project_id, index, f"run {run_id} finished without starting, or twice")
            return
        run.finished = index
        project.last_finished = run_id

    def _on_keys_released(self, index: int, entry: Revealed, project: _Project) -> None:
        party = str(entry.details["party"])
        run_id = str(entry.details.get("run_id", project.last_finished or ""))
        run = project.runs.get(run_id)
        if run is None or run.finished is None:
            self.fail(
                entry.project_id, index, f"keys released to {party} before any run finished", "keys"
            )
            return
        if party not in run.parties:
            self.fail(
                entry.project_id,
                index,
                f"keys released to {party}, not a party to run {run_id}",
                "keys",
            )
            return
        released = (entry.details.get("keys_sha256"), entry.details.get("key_count"))
        if party in run.released:
            first, digest = run.released[party], run.released_digest.get(party)
            if None not in released and released != digest:
                self.fail(
                    entry.project_id,
                    index,
                    f"keys of run {run_id} released to {party} again with a different count "
                    f"or digest (first at entry {first})",
                    "keys",
                )
            else:
                self.notes.append(
                    Check(
                        name="keys",
                        status=NOTE,
                        message=f"{party} fetched the same keys of run {run_id} again "
                        f"(first at entry {first})",
                        project_id=entry.project_id,
                        entry=index,
                    )
                )
            return
        run.released[party] = index
        run.released_digest[party] = released
        key_count = entry.details.get("key_count")
        upload = run.uploads.get(party)
        expected = upload.record_count if upload is not None else None
        if (
            key_count is not None
            and (upload is None or expected is not None)
            and (key_count != expected)
        ):
            self.fail(
                entry.project_id,
                index,
                f"{party} got {key_count} link keys for {expected} uploaded records "
                "(every record must get exactly one)",
                "keys",
            )

    def _on_payload_deleted(self, index: int, entry: Revealed, project: _Project) -> None:
        party, reason = str(entry.details["party"]), str(entry.details["reason"])
        payload = entry.details.get("payload_sha256")
        if reason in PARTIAL_UPLOAD_REASONS:
            return  # an upload never committed: its partial bytes were discarded
        deletion = _Deletion(
            index=index,
            party=party,
            payload=None if payload is None else str(payload),
            reason=reason,
        )
        if not any(_deletes(deletion, upload) for upload in project.committed):
            self.fail(
                entry.project_id,
                index,
                f"deletion of a payload {party} never uploaded",
                "retention",
            )
        project.deletions.append(deletion)

    def finish(self, now: datetime | None) -> None:
        for project_id, project in self.projects.items():
            self._retention(project_id, project, now)

    def _retention(self, project_id: str, project: _Project, now: datetime | None) -> None:
        """One verdict per committed upload: deleted when due, or why it is still kept."""
        if project.retention == RetentionPolicy.KEEP:
            self.checks.append(
                Check(
                    name="retention",
                    status=NOTE,
                    message="retention is 'keep': payloads are kept by policy",
                    project_id=project_id,
                    entry=project.created,
                )
            )
            return
        if project.retention not in {
            RetentionPolicy.DELETE_AFTER_RELEASE,
            RetentionPolicy.DELETE_AFTER_RUN,
        }:
            self.fail(
                project_id,
                project.created,
                f"unknown retention policy {project.retention!r}; cannot check deletions",
                "retention",
            )
            return
        for upload in project.committed:
            self._upload_retention(project_id, project, upload, now)

    def _upload_retention(
        self, project_id: str, project: _Project, upload: _Upload, now: datetime | None
    ) -> None:
        where = f"payload of {upload.party} (committed at entry {upload.index})"
        deleted = next(
            (
                deletion
                for deletion in project.deletions
                if deletion.index > upload.index and _deletes(deletion, upload)
            ),
            None,
        )
        due, why = self._due(project, upload)
        deadline = upload.moment + timedelta(days=project.hold_days)
        if deleted is not None:
            started = [project.runs[run].started for run in upload.used_by]
            if any(deleted.index < start for start in started):
                self.fail(
                    project_id,
                    deleted.index,
                    f"{where} was deleted before a run that used it started",
                    "retention",
                )
                return
            self.checks.append(
                Check(
                    name="retention",
                    status=PASS,
                    message=f"{where} deleted at entry {deleted.index} ({deleted.reason})",
                    project_id=project_id,
                    entry=deleted.index,
                )
            )
        elif due is not None:
            self.fail(project_id, due, f"{where} was never deleted although {why}", "retention")
        elif now is not None and now > deadline + _HOLD_GRACE:
            self.fail(
                project_id,
                upload.index,
                f"{where} is kept past its {project.hold_days}-day hold (due "
                f"{deadline:%Y-%m-%d}), whatever became of the run",
                "retention",
            )
        else:
            self.checks.append(
                Check(
                    name="retention",
                    status=NOTE,
                    message=f"{where} not due for deletion yet: {why}, or by "
                    f"{deadline:%Y-%m-%d} at the latest",
                    project_id=project_id,
                    entry=upload.index,
                )
            )

    @staticmethod
    def _due(project: _Project, upload: _Upload) -> tuple[int | None, str]:
        """The entry from which ``upload`` must be deleted, if one is in the log, and why."""
        if upload.superseded_at is not None:
            return upload.superseded_at, "a later upload of the same party replaced it"
        for run_id in upload.used_by:
            run = project.runs[run_id]
            if project.retention == RetentionPolicy.DELETE_AFTER_RUN and run.finished is not None:
                return run.finished, f"run {run_id} that used it finished"
            if project.retention == RetentionPolicy.DELETE_AFTER_RELEASE and set(
                run.released
            ) >= set(run.parties):
                return max(run.released.values()), f"every party fetched run {run_id}'s keys"
        if project.retention == RetentionPolicy.DELETE_AFTER_RUN:
            return None, "due when a run that uses it finishes"
        return None, "due once every party has fetched the keys of a run that uses it"


def _deletes(deletion: _Deletion, upload: _Upload) -> bool:
    """Whether ``deletion`` names ``upload``'s payload (by party alone if a digest is
    withheld from this view)."""
    if deletion.party != upload.party:
        return False
    return deletion.payload is None or upload.payload is None or deletion.payload == upload.payload


def _manifest_checks(
    manifests: Iterable[SignedManifest],
    uploads: Mapping[tuple[str, str, str], AuditEntry | EntryView],
    entries: Sequence[LogLine],
    party_keys: Mapping[str, Ed25519PublicKey],
) -> list[Check]:
    checks: list[Check] = []
    for signed in manifests:
        manifest = signed.manifest
        where = f"manifest of {manifest.party}"
        try:
            verify_manifest(signed, expected_public_key=party_keys.get(manifest.party))
        except AuditError as error:
            checks.append(
                Check(
                    name="manifest",
                    status=FAIL,
                    message=error.message,
                    project_id=manifest.project_id,
                )
            )
            continue
        entry = uploads.get((manifest.project_id, manifest.party, manifest.payload_sha256.hex()))
        if entry is None:
            checks.append(
                Check(
                    name="manifest",
                    status=FAIL,
                    message=f"{where}: the log has no upload with this payload digest",
                    project_id=manifest.project_id,
                )
            )
            continue
        index = entries.index(entry)
        wrong = manifest_mismatches(manifest, project_id=entry.project_id, details=entry.details)
        if wrong:
            message = f"{where} disagrees with the logged upload on {', '.join(wrong)}"
            checks.append(
                Check(
                    name="manifest",
                    status=FAIL,
                    message=message,
                    project_id=manifest.project_id,
                    entry=index,
                )
            )
        else:
            key_note = (
                "the party's registered key" if manifest.party in party_keys else "its embedded key"
            )
            checks.append(
                Check(
                    name="manifest",
                    status=PASS,
                    message=f"{where} is signed by {key_note} and matches the logged upload",
                    project_id=manifest.project_id,
                    entry=index,
                )
            )
    return checks


def wire_checks() -> list[Check]:
    """The structural check: from the compiled .proto descriptor, every string and bytes
    field an upload can carry is on the allow-list of validated fields (labels, digests,
    fixed-length keys, pattern-checked version and timestamp, CLK bytes), so no field exists
    in which free text - a name, a date of birth - could travel."""
    from protocol import serde  # protobuf only when the check runs

    fields = serde.upload_text_fields()
    unexplained = serde.unexplained_upload_fields()
    if unexplained:
        return [
            Check(
                name="wire",
                status=FAIL,
                message="upload messages have string/bytes fields not on the allow-list of "
                f"validated fields: {', '.join(unexplained)}",
            )
        ]
    return [
        Check(
            name="wire",
            status=PASS,
            message=f"all {len(fields)} string/bytes fields of upload messages are validated "
            "labels, digests, keys, a version, a timestamp or CLK bytes: no free-text field",
        )
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditView:
    """What a log file is claimed to be, when it is not the whole log: one project's view,
    as the operator or an auditor reads it (``party`` None) or as member ``party`` does."""

    project_id: str
    party: str | None = None


def _form_checks(entries: Sequence[LogLine], view: AuditView | None) -> list[Check]:
    """A full log admits only full entries, with every project tag its project's. A view
    shows its project's entries (partial only for a party, withholding no more than the
    policy says), and stubs for everything else, none of them of its own project."""
    if view is None:
        for index, entry in enumerate(entries):
            if not isinstance(entry, AuditEntry):
                return [
                    Check(
                        name="chain",
                        status=FAIL,
                        message=f"entry {index} is redacted or partial: a full log admits "
                        "none (verify one project's view with --project)",
                        entry=index,
                    )
                ]
        mistagged = check_project_tags(entries)
        if mistagged is not None:
            return [
                Check(name="chain", status=FAIL, message=mistagged.message, entry=mistagged.index)
            ]
        return []
    created = next(
        (
            entry
            for entry in entries
            if not isinstance(entry, RedactedEntry)
            and entry.event == "project_created"
            and entry.project_id == view.project_id
        ),
        None,
    )
    if created is None:
        return [
            Check(
                name="chain",
                status=FAIL,
                message=f"project {view.project_id}'s creation is not in this view, so its "
                "entries cannot be told from other projects'",
                project_id=view.project_id,
            )
        ]
    own_tag = project_tag(bytes.fromhex(str(created.details["view_key"])), view.project_id)
    problems = []
    for index, entry in enumerate(entries):
        problem = None
        if isinstance(entry, RedactedEntry):
            if entry.project_tag == own_tag:
                problem = f"entry {index} is this project's but shown only as a stub"
        elif entry.project_id != view.project_id:
            problem = f"entry {index} is not this project's, yet shown in its view"
        elif entry.project_tag != own_tag:
            problem = f"entry {index}'s project tag is not its project's"
        elif isinstance(entry, EntryView):
            allowed = withheld_from(entry.event, entry.details, view.party)
            if not set(entry.withheld) <= allowed:
                problem = f"entry {index} withholds details this reader may see"
        if problem is not None:
            problems.append(
                Check(
                    name="chain",
                    status=FAIL,
                    message=problem,
                    project_id=view.project_id,
                    entry=index,
                )
            )
    return problems


_HOLD_GRACE = timedelta(days=1)
"""Slack on an upload's hold before a kept payload fails: the LU checks retention
periodically (``retention_check_seconds``) and may have been stopped for a while."""


def verify_audit_log(
    log_path: Path | str,
    public_key: Ed25519PublicKey,
    *,
    manifests: Sequence[SignedManifest] = (),
    heads: Sequence[SignedHead] | None = None,
    party_keys: Mapping[str, Ed25519PublicKey] | None = None,
    check_wire: bool = True,
    view: AuditView | None = None,
) -> AuditReport:
    """Verify a whole log, or one project's view of it (``view``), and return the report.

    ``heads`` defaults to the signed head stored beside the log (``<log>.head``); without
    any head the chain check fails, because entries cut from the end would go unnoticed.
    Heads the auditor collected earlier are stronger evidence against truncation.
    """
    path = Path(log_path)
    fingerprint = public_key_fingerprint(public_key)
    checks: list[Check] = []

    def report(entries: Sequence[object], log_id: str | None) -> AuditReport:
        return AuditReport(
            log_path=str(path),
            entry_count=len(entries),
            log_id=log_id,
            public_key_fingerprint=fingerprint,
            checks=tuple(checks),
        )

    try:
        parsed = parse_log(path.read_bytes())
    except OSError as error:
        # A file the auditor named that is not there is a wrong command line, not a log that
        # fails verification: nothing was verified.
        raise ConfigurationError(
            f"{path}: cannot read audit log: {error.strerror}; give --log the audit.jsonl "
            "that bloomlink audit fetch wrote"
        ) from None
    except AuditError as error:
        checks.append(
            Check(
                name="chain",
                status=FAIL,
                message=f"unreadable line: {error.message}",
                entry=error.entry,
            )
        )
        return report([], None)
    entries = parsed.entries
    if parsed.torn_line is not None:
        checks.append(
            Check(
                name="chain",
                status=FAIL,
                message="the last line is incomplete (a crash during an append, or truncation)",
                entry=parsed.torn_line,
            )
        )
    if heads is None:
        head_path = path.with_name(path.name + ".head")
        heads = [head_from_json(head_path.read_bytes())] if head_path.exists() else []
    chain = verify_chain(entries, public_key, heads=heads)
    if not chain.intact:
        checks.append(
            Check(name="chain", status=FAIL, message=chain.message, entry=chain.bad_index)
        )
        return report(entries, chain.log_id)
    if not heads:
        checks.append(
            Check(
                name="chain",
                status=FAIL,
                message=f"{chain.entry_count} entries chain, but no signed head was given: "
                "entries cut from the end would go unnoticed (fetch the log with its head, "
                "or pass --head)",
            )
        )
        return report(entries, chain.log_id)
    newest = max(head.sequence for head in heads)
    checks.append(
        Check(
            name="chain",
            status=PASS,
            message=f"{chain.entry_count} entries hash-chained and signed by the LU key; "
            f"{len(heads)} signed head(s) match",
        )
    )
    if newest < len(entries) - 1:
        checks.append(
            Check(
                name="chain",
                status=NOTE,
                message=f"the newest signed head is at entry {newest}: entries after it would "
                "not be missed if cut; collect a fresh head",
                entry=newest,
            )
        )
    forms = _form_checks(entries, view)
    checks.extend(forms)
    if forms:
        return report(entries, chain.log_id)
    redacted = sum(isinstance(entry, RedactedEntry) for entry in entries)
    if view is not None:
        reader = "the operator or an auditor" if view.party is None else f"party {view.party}"
        checks.append(
            Check(
                name="chain",
                status=NOTE,
                message=f"project {view.project_id}'s view as {reader} reads it: {redacted} "
                "entries of other projects are stubs, none of them this project's"
                + (
                    "; other parties' figures are withheld, and rules that need them are left "
                    "to the project's auditor"
                    if view.party is not None
                    else ""
                ),
                project_id=view.project_id,
            )
        )
    replay = _Replay()
    replay.run(entries)
    moments = [_moment(head.timestamp) for head in heads]
    replay.finish(max(moments) if moments else None)
    if not any(check.status == FAIL and check.name == "rules" for check in replay.checks):
        for project_id in replay.projects:
            checks.append(
                Check(
                    name="rules",
                    status=PASS,
                    message="uploads from members, each with the project's layout; runs only "
                    "after checks covering every upload; keys only to run parties, once each, "
                    "one per record; deletions as logged",
                    project_id=project_id,
                )
            )
    checks.extend(replay.checks)
    checks.extend(replay.notes)
    for project_id, index in replay.unmanifested:
        checks.append(
            Check(
                name="manifest",
                status=NOTE,
                message="upload committed without a signed manifest: the log holds no party "
                "statement that this payload was leak-scanned",
                project_id=project_id,
                entry=index,
            )
        )
    if check_wire:
        checks.extend(wire_checks())
    checks.extend(_manifest_checks(manifests, replay.uploads_by_key, entries, party_keys or {}))
    return report(entries, chain.log_id)

"""The auditor's verification of a linkage unit's audit log (``bloomlink audit verify``).

Stage: audit, auditor side. Needs only the log, the LU's public key and, optionally, the
parties' signed manifests and signed heads collected earlier; never a CLK, an identifier or
the linkage secret. It checks, in order:

1. **chain**: every line parses, every hash recomputes, every signature is the LU's, no entry
   is missing, reordered or foreign, and every signed head matches (else truncation);
2. **project rules**, replayed entry by entry for each project (only if the chain holds):
   uploads only from members; ``checks_passed`` names exactly the members, follows the
   project's last upload, and the uploads it covers really share the project's schema
   fingerprint, one KCV and one CLK length; every ``run_started`` follows a
   ``checks_passed`` with no later upload or failed check; each run finishes once;
   ``keys_released`` goes only to the run's parties, once per party per run, with as many
   keys as that party uploaded records (every record gets a key); deletions name payloads
   that were uploaded;
3. **retention**: under ``delete-after-release`` every payload a run used is deleted once
   that run's keys have all been released (pending until then); under ``delete-after-run``
   once the run finished; ``keep`` needs nothing;
4. **manifests**: each manifest's signature (and the party's registered key, if given), and
   an ``upload_committed`` entry with the same project, party, payload digest, record count,
   CLK length, schema fingerprint, KCV (and manifest digest, when the LU logged one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.audit import (
    RETENTION_DELETE_AFTER_RELEASE,
    RETENTION_DELETE_AFTER_RUN,
    RETENTION_KEEP,
    AuditEntry,
    RedactedEntry,
    SignedHead,
    head_from_json,
    parse_log,
    verify_chain,
)
from protocol.errors import AuditError
from protocol.manifest import SignedManifest, manifest_mismatches, verify_manifest
from protocol.messages import LinkModel
from protocol.signing import public_key_fingerprint

__all__ = ["PARTIAL_UPLOAD_REASONS", "AuditReport", "Check", "verify_audit_log", "wire_checks"]

# payload_deleted reasons for bytes of an upload that was never committed (the LU discards
# them: a newer upload superseded it, the stream broke the cap, the digest did not match).
PARTIAL_UPLOAD_REASONS = frozenset({"superseded", "stream_cap", "digest_mismatch"})

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
class _Run:
    started: int
    parties: tuple[str, ...]
    uploads: dict[str, tuple[str, int]]  # party -> (payload digest, record count)
    finished: int | None = None
    released: dict[str, int] = field(default_factory=dict)
    released_digest: dict[str, tuple[str, str | int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Project:
    created: int
    members: tuple[str, ...]
    schema_fingerprint: str
    retention: str
    uploads: dict[str, tuple[int, Mapping[str, str | int]]] = field(default_factory=dict)
    uploaded_payloads: set[tuple[str, str]] = field(default_factory=set)
    last_upload: int = -1
    last_passed: tuple[int, tuple[str, ...]] | None = None
    last_failed: int = -1
    runs: dict[str, _Run] = field(default_factory=dict)
    last_finished: str | None = None
    deleted: dict[tuple[str, str], int] = field(default_factory=dict)


class _Replay:
    """Replays the log's events per project and collects every rule broken."""

    def __init__(self) -> None:
        self.projects: dict[str, _Project] = {}
        self.checks: list[Check] = []
        self.uploads_by_key: dict[tuple[str, str, str], AuditEntry] = {}
        self.notes: list[Check] = []
        self.unmanifested: list[tuple[str, int]] = []

    def fail(self, project_id: str | None, index: int, message: str, name: str = "rules") -> None:
        self.checks.append(
            Check(name=name, status=FAIL, message=message, project_id=project_id, entry=index)
        )

    def run(self, entries: Sequence[AuditEntry | RedactedEntry]) -> None:
        for index, entry in enumerate(entries):
            if isinstance(entry, RedactedEntry) or entry.project_id is None:
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

    def _on_project_created(self, index: int, entry: AuditEntry) -> None:
        assert entry.project_id is not None
        if entry.project_id in self.projects:
            self.fail(entry.project_id, index, "project created twice")
            return
        details = entry.details
        members = tuple(str(details["members"]).split(","))
        self.projects[entry.project_id] = _Project(
            created=index,
            members=members,
            schema_fingerprint=str(details["schema_fingerprint"]),
            retention=str(details["retention"]),
        )
        self._link_model(index, entry, members)

    def _link_model(self, index: int, entry: AuditEntry, members: tuple[str, ...]) -> None:
        """Show the project's link model; it may deduplicate members only, and says so."""
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
            self.fail(
                entry.project_id, index, f"the link model deduplicates non-members {strangers}"
            )
        elif model != expected:
            self.fail(
                entry.project_id,
                index,
                f"link model {model!r} disagrees with the deduplicated members "
                f"({', '.join(deduplicated) or 'none'})",
            )
        elif len(members) < 2 and not deduplicated:
            self.fail(entry.project_id, index, "a one-party project that deduplicates nothing")
        message = f"link model {model}"
        if deduplicated:
            clean = [party for party in members if party not in deduplicated]
            message += f": {', '.join(deduplicated)} deduplicated"
            if clean:
                message += f", at most one record per person from {', '.join(clean)}"
            if "max_cluster_size" in details:
                message += f"; clusters capped at {details['max_cluster_size']} records"
        self.notes.append(
            Check(
                name="model", status=NOTE, message=message, project_id=entry.project_id, entry=index
            )
        )

    def _on_access_refused(self, index: int, entry: AuditEntry, project: _Project) -> None:
        # Not a failure of the LU: it is the LU doing its job. The auditor sees who asked.
        self.notes.append(
            Check(
                name="access",
                status=NOTE,
                message=f"party {entry.details['party']} was refused another party's or "
                "project's link keys",
                project_id=entry.project_id,
                entry=index,
            )
        )

    def _on_upload_refused(self, index: int, entry: AuditEntry, project: _Project) -> None:
        # The LU refusing an upload is the LU doing its job; nothing was stored or counted.
        self.notes.append(
            Check(
                name="uploads",
                status=NOTE,
                message=f"an upload from {entry.details['party']} was refused "
                f"({entry.details['reason']})",
                project_id=entry.project_id,
                entry=index,
            )
        )

    def _on_party_authenticated(self, index: int, entry: AuditEntry, project: _Project) -> None:
        return

    def _on_upload_committed(self, index: int, entry: AuditEntry, project: _Project) -> None:
        party = str(entry.details["party"])
        if party not in project.members:
            self.fail(entry.project_id, index, f"upload from {party}, which is not a member")
        project.uploads[party] = (index, entry.details)
        if "manifest_sha256" not in entry.details:
            self.unmanifested.append((str(entry.project_id), index))
        project.uploaded_payloads.add((party, str(entry.details["payload_sha256"])))
        project.last_upload = index
        assert entry.project_id is not None
        key = (entry.project_id, party, str(entry.details["payload_sha256"]))
        self.uploads_by_key[key] = entry

    def _on_checks_passed(self, index: int, entry: AuditEntry, project: _Project) -> None:
        parties = tuple(str(entry.details["parties"]).split(","))
        if set(parties) != set(project.members):
            self.fail(entry.project_id, index, "checks passed for parties other than the members")
        missing = [party for party in parties if party not in project.uploads]
        if missing:
            self.fail(
                entry.project_id, index, f"checks passed before {', '.join(missing)} uploaded"
            )
        else:
            uploads = [project.uploads[party][1] for party in parties]
            for aspect in ("schema_fingerprint", "kcv", "clk_bits"):
                if len({upload[aspect] for upload in uploads}) != 1:
                    self.fail(
                        entry.project_id,
                        index,
                        f"checks passed although the uploads' {aspect} differ",
                    )
            if any(
                upload["schema_fingerprint"] != project.schema_fingerprint for upload in uploads
            ):
                self.fail(
                    entry.project_id,
                    index,
                    "checks passed although an upload's schema is not the project's",
                )
        project.last_passed = (index, parties)

    def _on_checks_failed(self, index: int, entry: AuditEntry, project: _Project) -> None:
        project.last_failed = index

    def _on_run_started(self, index: int, entry: AuditEntry, project: _Project) -> None:
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
        uploads = {
            party: (str(details["payload_sha256"]), int(details["record_count"]))
            for party, (_, details) in project.uploads.items()
            if party in parties
        }
        project.runs[run_id] = _Run(started=index, parties=parties, uploads=uploads)

    def _on_run_finished(self, index: int, entry: AuditEntry, project: _Project) -> None:
        run_id = str(entry.details["run_id"])
        run = project.runs.get(run_id)
        if run is None or run.finished is not None:
            self.fail(entry.project_id, index, f"run {run_id} finished without starting, or twice")
            return
        run.finished = index
        project.last_finished = run_id

    def _on_keys_released(self, index: int, entry: AuditEntry, project: _Project) -> None:
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
        if party in run.released:
            first, digest = run.released[party], run.released_digest.get(party)
            if (str(entry.details["keys_sha256"]), entry.details["key_count"]) != digest:
                self.fail(
                    entry.project_id,
                    index,
                    f"keys of run {run_id} released to {party} again with a different count or digest "
                    f"(first at entry {first})",
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
        run.released_digest[party] = (
            str(entry.details["keys_sha256"]),
            entry.details["key_count"],
        )
        expected = run.uploads[party][1] if party in run.uploads else None
        if entry.details["key_count"] != expected:
            self.fail(
                entry.project_id,
                index,
                f"{party} got {entry.details['key_count']} link keys for {expected} uploaded "
                "records "
                "(every record must get exactly one)",
                "keys",
            )

    def _on_payload_deleted(self, index: int, entry: AuditEntry, project: _Project) -> None:
        key = (str(entry.details["party"]), str(entry.details["payload_sha256"]))
        if entry.details["reason"] in PARTIAL_UPLOAD_REASONS:
            return  # an upload never committed: its partial bytes were discarded
        if key not in project.uploaded_payloads:
            self.fail(
                entry.project_id,
                index,
                f"deletion of a payload {key[0]} never uploaded",
                "retention",
            )
        project.deleted.setdefault(key, index)

    def finish(self) -> None:
        for project_id, project in self.projects.items():
            self._retention(project_id, project)

    def _retention(self, project_id: str, project: _Project) -> None:
        before = len(self.checks)
        self._check_retention(project_id, project)
        if len(self.checks) == before and project.runs:
            self.checks.append(
                Check(
                    name="retention",
                    status=PASS,
                    message=f"every payload deleted as retention {project.retention!r} requires",
                    project_id=project_id,
                )
            )

    def _check_retention(self, project_id: str, project: _Project) -> None:
        if project.retention == RETENTION_KEEP:
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
        if project.retention not in {RETENTION_DELETE_AFTER_RELEASE, RETENTION_DELETE_AFTER_RUN}:
            self.fail(
                project_id,
                project.created,
                f"unknown retention policy {project.retention!r}; cannot check deletions",
                "retention",
            )
            return
        for run_id, run in project.runs.items():
            if project.retention == RETENTION_DELETE_AFTER_RUN:
                due = run.finished
            elif set(run.released) >= set(run.parties):
                due = max(run.released.values())
            else:
                due = None
            if due is None:
                self.checks.append(
                    Check(
                        name="retention",
                        status=NOTE,
                        message=f"run {run_id} has not released every party's keys; deletion "
                        "not yet due",
                        project_id=project_id,
                        entry=run.started,
                    )
                )
                continue
            for party, (payload, _) in sorted(run.uploads.items()):
                deleted = project.deleted.get((party, payload))
                if deleted is None:
                    self.fail(
                        project_id,
                        due,
                        f"payload of {party} used by run {run_id} was never deleted "
                        f"(retention {project.retention})",
                        "retention",
                    )
                elif deleted < run.started:
                    self.fail(
                        project_id,
                        deleted,
                        f"payload of {party} deleted before run {run_id} that used it started",
                        "retention",
                    )


def _manifest_checks(
    manifests: Iterable[SignedManifest],
    uploads: Mapping[tuple[str, str, str], AuditEntry],
    entries: Sequence[AuditEntry | RedactedEntry],
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


def verify_audit_log(
    log_path: Path | str,
    public_key: Ed25519PublicKey,
    *,
    manifests: Sequence[SignedManifest] = (),
    heads: Sequence[SignedHead] | None = None,
    party_keys: Mapping[str, Ed25519PublicKey] | None = None,
    check_wire: bool = True,
) -> AuditReport:
    """Verify a log file (or a per-project export) and return the full report.

    ``heads`` defaults to the signed head stored beside the log (``<log>.head``), if any;
    heads the auditor collected earlier are stronger evidence against truncation.
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
        raise AuditError(f"{path}: cannot read audit log: {error.strerror}") from None
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
    head_note = (
        f"; {len(heads)} signed head(s) match"
        if heads
        else "; no signed head given, so entries cut from the end would go unnoticed"
    )
    checks.append(
        Check(
            name="chain",
            status=PASS if heads else NOTE,
            message=f"{chain.entry_count} entries hash-chained and signed by the LU key{head_note}",
        )
    )
    redacted = sum(isinstance(entry, RedactedEntry) for entry in entries)
    if redacted:
        checks.append(
            Check(
                name="chain",
                status=NOTE,
                message=f"{redacted} entries of other projects are redacted (hash and "
                "signature only)",
            )
        )
    replay = _Replay()
    replay.run(entries)
    replay.finish()
    if not any(check.status == FAIL for check in replay.checks):
        for project_id in replay.projects:
            checks.append(
                Check(
                    name="rules",
                    status=PASS,
                    message="uploads from members; runs only after checks covering every upload; "
                    "keys only to run parties, once each, one per record; deletions as logged",
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

"""Runs: checks, matching and link keys for one project, in a worker thread.

A run is persisted QUEUED -> RUNNING -> FINISHED (or REFUSED by the checks, or FAILED). It
finishes in three durable steps: its keys and figures are stored (the run stays RUNNING,
``keys_ready``), ``run_finished`` is logged, and only then is it FINISHED and its keys
releasable. A crash or a failed append between the steps is finished by
:meth:`RunManager.reconcile` with the same stored keys, never new ones; and once any key of a
project is released, storing another key set for it is refused.

A run left QUEUED or RUNNING by a stopped linkage unit is resubmitted when it starts again
(:meth:`RunManager.resume`): matching is recomputed from the stored payloads, and a run whose
``run_started`` is already logged continues as ``run_resumed``, not a second start.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from linkage_unit import matching
from linkage_unit.audit_hook import AuditSink
from linkage_unit.checkpoints import Checkpoint, Step, no_checkpoint
from linkage_unit.checks import check_clks, check_headers
from linkage_unit.fellegi_sunter import ModelSettings
from linkage_unit.link_keys import PartyLinkKeys, RandomBytes, issue_link_keys
from linkage_unit.report import build_report
from linkage_unit.retention import Retention
from linkage_unit.spine import (
    SpineRunResult,
    SpineState,
    SpineStore,
    SpineUpload,
    check_upload,
    link_into_spine,
    prune_spine,
)
from linkage_unit.storage import RunOutcome, RunQuality, RunRecord, Storage, out_of_space
from protocol.audit_events import (
    ChecksFailed,
    ChecksPassed,
    RunFinished,
    RunResumed,
    RunStarted,
    SpinePruned,
    SpineRunLinked,
)
from protocol.clk_file import read_clks
from protocol.clk_layout import ClkLayout
from protocol.errors import (
    AlreadyExistsError,
    ClkFileError,
    CompatibilityError,
    ConfigurationError,
    InvariantError,
    MatchingError,
    NotFoundError,
    PreconditionError,
)
from protocol.messages import ProjectSettings, RunState, RunTicket, UploadHeader, UploadState
from protocol.vocabulary import CheckAspect

__all__ = ["LinkFunction", "RunManager", "spine_link_result"]

logger = logging.getLogger("bloomlink.linkage_unit.run")

LinkFunction = Callable[..., matching.LinkResult]


def _millionths(estimated: RunQuality | None) -> dict[str, int]:
    """A run's expected precision, recall and F1 for ``run_finished`` (the model's, or the
    null model's for a Dice run), in millionths (the log holds whole numbers); nothing when
    the run has no estimate."""
    if estimated is None:
        return {}
    return {
        "estimated_precision_millionths": round(estimated.precision * 1_000_000),
        "estimated_recall_millionths": round(estimated.recall * 1_000_000),
        "estimated_f1_millionths": round(estimated.f1 * 1_000_000),
    }


class _Stopped(Exception):
    """The linkage unit is shutting down; the run stays RUNNING and resumes on restart."""


class RunManager:
    """Owns the run worker threads. ``workers=0`` holds runs QUEUED (maintenance mode)."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditSink,
        *,
        workers: int = 1,
        link_function: LinkFunction | None = None,
        random_bytes: RandomBytes | None = None,
        progress_interval: float = 0.5,
        retention: Retention | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        checkpoint: Checkpoint = no_checkpoint,
        spines: SpineStore | None = None,
        configure: Callable[[matching.MatchSettings], matching.MatchSettings] | None = None,
    ) -> None:
        self.spines = spines
        # The operator's server-wide settings (``ServerConfig.run_settings``: LSH shape, group
        # blocking), applied to every run's settings, one-off or into a spine.
        self._configure = configure or (lambda settings: settings)
        self._storage = storage
        self._audit = audit
        self.retention = retention or Retention(storage, audit)
        self._monotonic = monotonic
        self._checkpoint = checkpoint
        self._link: LinkFunction = link_function or matching.link
        self._random_bytes = random_bytes
        self._progress_interval = progress_interval
        self._executor = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[Future[None]] = []
        # Failures a full disk would not let us record (run id -> status stage). Status shows
        # them as FAILED, and recording is retried whenever the run is looked at, so the
        # operator sees why and can start again instead of watching a run that never ends.
        self._unrecorded_failures: dict[str, str] = {}
        # Spines' bound KCVs (name -> KCV), for the upload-time check. A bound KCV changes
        # only by `spine rotate`, which runs with the LU stopped, so it is cached once seen.
        self._spine_kcvs: dict[str, bytes] = {}

    # -- starting -----------------------------------------------------------------------

    def _project(self, project_id: str) -> ProjectSettings:
        project = self._storage.project(project_id)
        if project is None:
            raise InvariantError("a run refers to a project that is not stored")
        return project

    def all_uploaded(self, project_id: str) -> bool:
        """Whether every member's upload is complete."""
        project = self._project(project_id)
        for party in project.members:
            record = self._storage.upload(project_id, party)
            if record is None or record.state is not UploadState.COMPLETE:
                return False
        return True

    def latest_run(self, project_id: str) -> RunRecord | None:
        """The project's newest run as it stands, including a failure not yet recorded."""
        run = self._storage.latest_run(project_id)
        if run is None or run.run_id not in self._unrecorded_failures:
            return run
        stage = self._unrecorded_failures[run.run_id]
        try:
            self._storage.set_run_state(run.run_id, RunState.FAILED, stage=stage)
        except Exception:  # still no room: report the failure from memory
            return dataclasses.replace(run, state=RunState.FAILED, stage=stage)
        self._unrecorded_failures.pop(run.run_id, None)
        return self._storage.latest_run(project_id)

    def start(self, project_id: str, *, automatic: bool) -> RunTicket:
        """Queue a run if every member has uploaded. Idempotent while one is queued or running."""
        with self._lock:
            latest = self.latest_run(project_id)
            if latest is not None and latest.state in (RunState.QUEUED, RunState.RUNNING):
                return RunTicket(run_id=latest.run_id, state=latest.state)
            if latest is not None and latest.state is RunState.FINISHED:
                raise AlreadyExistsError(
                    "this project's run has finished and its link keys are released"
                )
            if not self.all_uploaded(project_id):
                if automatic:
                    return RunTicket(run_id="", state=RunState.WAITING_FOR_UPLOADS)
                raise PreconditionError(
                    "not every member party has completed its upload; see project status"
                )
            if automatic and latest is not None and latest.state is RunState.FAILED:
                # A failed run is restarted only by the operator; a refused one also restarts
                # when a party re-uploads (that is what triggers an automatic start).
                return RunTicket(run_id=latest.run_id, state=latest.state)
            run_id = secrets.token_hex(8)
            self._storage.create_run(project_id, run_id)
            self._submit(run_id, project_id)
            return RunTicket(run_id=run_id, state=RunState.QUEUED)

    def resume(self) -> int:
        """Resubmit every run a previous process left unfinished; return how many. A run
        whose keys are stored is finished from them, not recomputed."""
        runs = self._storage.unfinished_runs()
        for run in runs:
            if run.keys_ready:
                self._finish_pending(run)
                continue
            logger.info("resuming run run_id=%s project=%s", run.run_id, run.project_id)
            self._submit(run.run_id, run.project_id)
        return len(runs)

    def reconcile(self) -> int:
        """Finish every run whose keys are stored but whose ``run_finished`` is not logged
        (a crash, or an append that failed); return how many. Called at start-up and with
        each retention check."""
        finished = 0
        for run in self._storage.unfinished_runs():
            if run.keys_ready and self._finish_pending(run):
                finished += 1
        return finished

    def _finish_pending(self, run: RunRecord) -> bool:
        try:
            self._record_finish(
                run.run_id,
                run.project_id,
                RunOutcome(
                    cluster_count=run.cluster_count,
                    linked_record_count=run.linked_record_count,
                    comparisons=run.comparisons,
                    threshold=run.threshold,
                    threshold_method=run.threshold_method,
                    estimated=run.estimated,
                ),
                check_log=True,
            )
        except Exception:
            logger.exception("run_finished still cannot be logged run_id=%s; retried", run.run_id)
            return False
        return True

    def _submit(self, run_id: str, project_id: str) -> None:
        if self._executor is None or self._stop.is_set():
            return  # stays QUEUED; a later start with workers resumes it
        self._futures.append(self._executor.submit(self._execute, run_id, project_id))

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop: in-flight runs are interrupted at their next progress report and resume later."""
        self._stop.set()
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)

    def wait_idle(self, timeout: float) -> None:
        """Wait for submitted runs to end (tests and the CLI's --wait)."""
        deadline = self._monotonic() + timeout
        for future in list(self._futures):
            future.exception(timeout=max(0.0, deadline - self._monotonic()))

    # -- executing ----------------------------------------------------------------------

    def _execute(self, run_id: str, project_id: str) -> None:
        try:
            self._run(run_id, project_id)
        except _Stopped:
            logger.info("run interrupted by shutdown run_id=%s; it resumes on restart", run_id)
        except CompatibilityError as error:
            logger.warning(
                "run refused run_id=%s party=%s aspect=%s", run_id, error.party, error.aspect
            )
            self._storage.set_run_state(
                run_id,
                RunState.REFUSED,
                check_party=error.party or "",
                check_aspect=error.aspect or "",
            )
        except MatchingError as error:
            # The engine or its Dask cluster cannot finish (settings, limits, timeouts, a task
            # that keeps failing): the status says why. These messages never carry data.
            logger.error("run failed run_id=%s: %s", run_id, error)
            self._storage.set_run_state(run_id, RunState.FAILED, stage=f"failed: {error}")
        except Exception as error:
            stage = "failed: unexpected error; the linkage unit's log has the details"
            if out_of_space(error):
                stage = (
                    "failed: the linkage unit's disk is full; free space, then start the run again"
                )
                logger.error(
                    "run failed: the disk is full run_id=%s; free space, start it again", run_id
                )
            else:
                # Traceback only: no payload, CLK or key is ever formatted into a log line.
                logger.exception("run failed unexpectedly run_id=%s", run_id)
            try:
                self._storage.set_run_state(run_id, RunState.FAILED, stage=stage)
            except Exception:  # a full disk can refuse even this: keep it until it can be written
                self._unrecorded_failures[run_id] = stage
                logger.error("could not record the failure of run_id=%s yet", run_id)

    def _run(self, run_id: str, project_id: str) -> None:
        project = self._project(project_id)
        headers: dict[str, UploadHeader] = {}
        for party in project.members:
            record = self._storage.upload(project_id, party)
            if record is None or record.state is not UploadState.COMPLETE:
                raise PreconditionError("an upload is missing or was deleted")
            headers[party] = record.header
        stored = self._storage.latest_run(project_id)
        resumed = (
            stored is not None and stored.run_id == run_id and stored.state is RunState.RUNNING
        )
        self._storage.set_run_state(run_id, RunState.RUNNING, stage="checks", done=0, total=0)
        try:
            check_headers(project, headers)
            clks: dict[str, npt.NDArray[np.uint64]] = {}
            for party in project.members:
                try:
                    _, clks[party] = read_clks(self._storage.payload_path(project_id, party))
                except ClkFileError:
                    raise CompatibilityError(
                        f"party {party!r}'s stored payload fails its digest or length check",
                        party=party,
                        aspect=CheckAspect.RECORD_COUNT,
                    ) from None
            check_clks(clks, headers)
            spine = self._spine_checked(project, headers)
        except CompatibilityError as error:
            if error.aspect is None or error.party is None:
                raise InvariantError("a check refused without naming party and aspect") from error
            self._audit.append(
                ChecksFailed(
                    project_id=project_id, party=error.party, aspect=CheckAspect(error.aspect)
                )
            )
            raise
        if resumed and self._audit.recorded(RunStarted, project_id=project_id, run_id=run_id):
            # Interrupted after it started (a stop or a crash): the same run carries on.
            self._audit.append(RunResumed(project_id=project_id, run_id=run_id))
        else:
            self._audit.append(ChecksPassed(project_id=project_id, parties=project.members))
            self._audit.append(
                RunStarted(project_id=project_id, run_id=run_id, parties=project.members)
            )
        last_report = 0.0
        last_stage = ""

        def progress(stage: str, done: int, total: int) -> None:
            nonlocal last_report, last_stage
            if self._stop.is_set():
                raise _Stopped
            now = self._monotonic()
            # A new stage always shows: throttled, "model: train and score" (tens of seconds
            # at 1M x 1M) hid behind the compare's last report half a second before it.
            if now - last_report >= self._progress_interval or done >= total or stage != last_stage:
                last_report = now
                last_stage = stage
                self._storage.set_progress(run_id, stage, done, total)

        # The operator's match-probability cut (grouped layouts, scored by the model); unset:
        # the model's default.
        model = (
            ModelSettings()
            if project.match_probability is None
            else ModelSettings(match_probability=project.match_probability)
        )
        settings = self._configure(
            matching.MatchSettings(
                threshold=project.threshold,
                blocking=project.blocking,
                deduplicated=frozenset(project.deduplicated),
                max_cluster_size=project.max_cluster_size,
                model=model,
            )
        )
        # A grouped project's layout (every upload was checked to have it) tells the engine
        # which words are which field group; a single-CLK project passes none.
        grouped = {} if project.layout is None else {"layout": project.layout}
        options = {} if self._random_bytes is None else {"random_bytes": self._random_bytes}
        if spine is not None:
            result, keys = self._link_into_spine(
                project_id, run_id, spine, headers, clks, settings, options, project.layout
            )
        else:
            result = self._link(clks, settings, progress=progress, **grouped)
            if self._stop.is_set():
                raise _Stopped
            keys = None
        if result.statistics.untrusted_models:
            # Party ids only: which model failed, never a value. Without this an untrusted
            # model's run reads as an ordinary low-linkage one (the report says it too).
            logger.warning(
                "run_id=%s project=%s: the Fellegi-Sunter model of %s was not trusted "
                "(matches separated on fewer than two field groups) and linked nothing",
                run_id,
                project_id,
                ", ".join(result.statistics.untrusted_models),
            )
        expected = result.statistics.estimated
        outcome = RunOutcome(
            cluster_count=result.cluster_count,
            linked_record_count=result.linked_record_count,
            comparisons=result.comparisons,
            threshold=result.threshold,
            threshold_method=result.threshold_method,
            estimated=None
            if expected is None
            else RunQuality(precision=expected.precision, recall=expected.recall, f1=expected.f1),
        )
        # The report before the keys: a run whose keys are stored always has its report.
        report = build_report(result, clks, project.layout).to_json()
        if keys is None:
            # The report has what it needs of the scored pairs and the encodings: let both
            # go before the keys are spelled (at 1M x 1M this stage was the LU's peak).
            clks.clear()
            result = dataclasses.replace(result, scored=None)
            self._storage.set_progress(run_id, "link keys", 0, 1)
            keys = issue_link_keys(result.clusters, project.link_key_mode, **options)
        self._storage.store_report(run_id, project_id, report)
        self._storage.store_keys(run_id, project_id, outcome=outcome, keys=keys)
        self._checkpoint(Step.KEYS_STORED)
        try:
            self._record_finish(run_id, project_id, outcome, check_log=False)
        except Exception:
            # The keys stay stored and unreleasable; reconcile() logs run_finished later.
            logger.exception(
                "run_finished could not be logged run_id=%s; the run finishes when it can be",
                run_id,
            )

    def spine_for(self, project: ProjectSettings) -> SpineState:
        """The spine a project links into, if this LU holds spines and it exists; its parties
        must list every member (checked again, with the upload's schema and KCV, by the run)."""
        if self.spines is None:
            raise PreconditionError(
                "this linkage unit holds no spines: start it with a spine key (serve "
                "--spine-key FILE; docs/spine.md)"
            )
        state = self.spines.load(project.spine or "")
        strangers = [party for party in project.members if party not in state.settings.parties]
        if strangers:
            raise PreconditionError(
                f"spine {state.settings.name!r} does not list {', '.join(strangers)}; a project "
                "joins a spine with its listed parties only"
            )
        if state.settings.schema_fingerprint != project.schema_fingerprint.hex():
            raise PreconditionError(
                f"spine {state.settings.name!r} is bound to another schema fingerprint than "
                "this project's; encode with the spine's schema"
            )
        if state.settings.link_key_mode is not project.link_key_mode:
            raise PreconditionError(
                f"spine {state.settings.name!r} issues {state.settings.link_key_mode} link keys; "
                "create the project with the same link-key mode"
            )
        return state

    def spine_kcv(self, project: ProjectSettings) -> bytes | None:
        """The KCV the project's spine is bound to (None: no spine, no such spine here, or
        not bound yet: its first run binds it), so an upload under another is refused before
        any byte is stored. The run checks the whole binding again (``_spine_checked``)."""
        if project.spine is None or self.spines is None:
            return None
        cached = self._spine_kcvs.get(project.spine)
        if cached is not None:
            return cached
        try:
            # Cheap while unbound: a spine holds records only after its first run binds it.
            kcv = self.spines.load(project.spine).settings.kcv
        except (NotFoundError, ConfigurationError):
            return None  # the run refuses it, saying why
        if kcv is None:
            return None
        self._spine_kcvs[project.spine] = bytes.fromhex(kcv)
        return self._spine_kcvs[project.spine]

    def _spine_checked(
        self, project: ProjectSettings, headers: dict[str, UploadHeader]
    ) -> SpineState | None:
        """Before any comparison: every upload fits the project's spine (schema, KCV)."""
        if project.spine is None:
            return None
        try:
            state = self.spine_for(project)
        except PreconditionError as error:
            raise MatchingError(error.message) from None
        for party, header in headers.items():
            check_upload(
                state.settings,
                SpineUpload(
                    party=party,
                    schema_fingerprint=header.schema_fingerprint.hex(),
                    kcv=header.kcv.hex(),
                    clks=np.zeros((0, 1), dtype=np.uint64),
                ),
            )
        return state

    def _link_into_spine(
        self,
        project_id: str,
        run_id: str,
        spine: SpineState,
        headers: dict[str, UploadHeader],
        clks: dict[str, npt.NDArray[np.uint64]],
        settings: matching.MatchSettings,
        options: dict[str, RandomBytes],
        layout: ClkLayout | None,
    ) -> tuple[matching.LinkResult, dict[str, PartyLinkKeys]]:
        """Link into the spine, save it, and return a result whose clusters are per person.
        ``layout``: the project's field groups (None: single CLKs), so a grouped project's
        run into a spine is scored by the model as its one-off run would be."""
        if self.spines is None:
            raise InvariantError("a spine run without a spine store")
        uploads = [
            SpineUpload(
                party=party,
                schema_fingerprint=headers[party].schema_fingerprint.hex(),
                kcv=headers[party].kcv.hex(),
                clks=array,
            )
            for party, array in clks.items()
        ]
        self._storage.set_progress(run_id, "linking into the spine", 0, 1)
        try:
            outcome = link_into_spine(
                spine, uploads, settings, run_id=run_id, project_id=project_id, layout=layout,
                **options,
            )  # fmt: skip
        except PreconditionError as error:
            if isinstance(error, CompatibilityError):
                raise
            raise MatchingError(error.message) from None
        if self._stop.is_set():
            raise _Stopped
        # Retention (``spine create --keep-runs N``) in the same write as the run's records:
        # the run's own records are always among the last N runs', so one atomic save either
        # holds this run's records with the old ones pruned or leaves the spine as it was.
        keep_runs = spine.settings.keep_runs
        pruning = None if keep_runs is None else prune_spine(outcome.state, keep_runs)
        self.spines.save(outcome.state if pruning is None else pruning.state)
        self._audit.append(
            SpineRunLinked(
                project_id=project_id,
                spine=spine.settings.name,
                run_id=run_id,
                matched_people=outcome.matched_people,
                new_people=outcome.new_people,
                spine_people=outcome.state.person_count,
                # Counts on this one event, never an event per change: how many entries a
                # run writes would tell every member that others' records merged people.
                merges=len(outcome.merges),
                splits=len(outcome.splits),
                held_apart=len(outcome.held_apart),
            )
        )
        if pruning is not None and pruning.removed and keep_runs is not None:
            self._audit.append(
                SpinePruned(
                    spine=spine.settings.name,
                    keep_runs=keep_runs,
                    records_removed=pruning.removed,
                    records_kept=pruning.kept,
                    people_without_records=pruning.people_without_records,
                )
            )
        return spine_link_result(outcome), dict(outcome.keys)

    def _record_finish(
        self, run_id: str, project_id: str, outcome: RunOutcome, *, check_log: bool
    ) -> None:
        """Log ``run_finished`` (``check_log``: unless the log has it already, when a crash
        or a failure came after the append), then mark the run FINISHED: only now are its
        keys releasable. Under ``delete-after-run`` the payloads go next."""
        if not check_log or not self._audit.recorded(
            RunFinished, project_id=project_id, run_id=run_id
        ):
            self._audit.append(
                RunFinished(
                    project_id=project_id,
                    run_id=run_id,
                    cluster_count=outcome.cluster_count,
                    linked_record_count=outcome.linked_record_count,
                    comparisons=outcome.comparisons,
                    threshold_thousandths=(
                        None if outcome.threshold is None else round(outcome.threshold * 1000)
                    ),
                    threshold_method=outcome.threshold_method or None,
                    **_millionths(outcome.estimated),
                )
            )
        self._checkpoint(Step.RUN_FINISHED_LOGGED)
        self._storage.mark_finished(run_id)
        project = self._project(project_id)
        logger.info(
            "run finished run_id=%s project=%s link_model=%s clusters=%d linked_records=%d "
            "comparisons=%d threshold=%s (%s)",
            run_id,
            project_id,
            project.link_model,
            outcome.cluster_count,
            outcome.linked_record_count,
            outcome.comparisons,
            "unset" if outcome.threshold is None else f"{outcome.threshold:.3f}",
            outcome.threshold_method,
        )
        if project.retention_days == 0:  # retention delete-after-run
            try:
                self.retention.retire_due()
            except Exception:  # the intent stays; the next retention check finishes it
                logger.exception("payloads of run_id=%s not yet deleted; retried", run_id)


def spine_link_result(outcome: SpineRunResult) -> matching.LinkResult:
    """A spine run as the report and status read a one-off run: clusters per person (none
    kept: the keys are the spine's), its counts, and the statistics an operator must see."""
    return matching.LinkResult(
        clusters={},
        threshold=outcome.threshold,
        cluster_count=outcome.matched_people + outcome.new_people,
        # As a one-off run counts: records of a person with another record (this run's,
        # or one the spine already held), not every keyed record.
        linked_record_count=outcome.linked_records,
        comparisons=outcome.comparisons,
        threshold_method=outcome.threshold_method,
        # The report's warning (report.py ``untrusted_models``) holds for spine runs too.
        statistics=matching.LinkStatistics(
            compare=outcome.compare, untrusted_models=outcome.untrusted_models
        ),
    )

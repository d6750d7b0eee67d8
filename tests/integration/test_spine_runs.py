"""Runs into a spine through the real linkage unit (service, SQLite storage, signed audit
log, encrypted spine store; the spine created by the operator's CLI): a release showing one
spine person to be two splits it, and a refresh that would merge too much of the spine stops
before any key is issued, losing nothing stored, with audit verify still passing."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bloomlink.cli import main
from linkage_unit.audit_log import AuditLog
from linkage_unit.blocking import BlockingMode
from linkage_unit.matching import MatchSettings
from linkage_unit.report import RunReport
from linkage_unit.run import RunManager
from linkage_unit.server import ServerConfig
from linkage_unit.service import LinkageService
from linkage_unit.spine import SpineStore, read_spine_key, spine_directory
from linkage_unit.storage import Storage
from protocol.clk_file import read_header
from protocol.errors import PreconditionError
from protocol.messages import ProjectSettings, RunState, UploadChunk, UploadHeader
from tests.linkage_unit.test_service import OPERATOR, party
from tests.service_helpers import SCHEMA_FINGERPRINT, write_clk_file
from tests.strategies import noisy_copies, random_clks

pytestmark = pytest.mark.integration

WORDS = 16


class LinkageUnit:
    """The linkage unit's parts as ``serve`` assembles them, on one data directory."""

    def __init__(
        self,
        data: Path,
        spine_key: Path,
        configure: Callable[[MatchSettings], MatchSettings] | None = None,
    ) -> None:
        self.data = data
        self.storage = Storage(data)
        self.audit = AuditLog.open(
            data / "audit.jsonl", signing_key_path=data / "audit-signing-key.pem"
        )
        self.spines = SpineStore(spine_directory(data), read_spine_key(spine_key))
        self.runs = RunManager(self.storage, self.audit, spines=self.spines, configure=configure)
        self.service = LinkageService(self.storage, self.audit, self.runs)
        self.service.start()

    def close(self) -> None:
        self.runs.shutdown()
        self.storage.close()
        self.audit.close()

    def release(
        self,
        project: str,
        uploads: dict[str, npt.NDArray[np.uint64]],
        *,
        threshold: float,
        dedupe: tuple[str, ...] = (),
        blocking: BlockingMode = BlockingMode.NONE,
    ) -> RunState:
        self.service.create_project(
            OPERATOR,
            ProjectSettings(
                project_id=project,
                members=tuple(uploads),
                schema_fingerprint=SCHEMA_FINGERPRINT,
                threshold=threshold,
                deduplicated=dedupe,
                spine="people",
                # Exhaustive by default: LSH blocking with the project's fresh seed may miss
                # the pairs at 0.6-0.8 these tests are built on, and the outcome would vary.
                blocking=blocking,
            ),
        )
        for name, clks in uploads.items():
            path = write_clk_file(
                self.data.parent / f"{project}-{name}.clk", clks, project_id=project,
                clk_bits=64 * WORDS, key_context="spine:people",
            )  # fmt: skip
            header = read_header(path)
            session = self.service.open_upload(
                party(name), UploadHeader.from_clk_file_header(header, party_id=name)
            )
            try:
                session.accept(UploadChunk.of(0, path.read_bytes()[header.header_length :]))
                session.finish()
            finally:
                session.close()
        self.runs.wait_idle(60)
        return self.service.project_status(OPERATOR, project).run_state

    def keys(self, project: str, name: str) -> dict[int, str]:
        by_position: dict[int, str] = {}
        for batch in self.service.fetch_link_keys(party(name), project, name):
            by_position.update(zip(batch.positions, batch.link_keys, strict=True))
        return by_position


def _lu(
    tmp_path: Path,
    *,
    max_merge_share: float,
    keep_runs: int | None = None,
    configure: Callable[[MatchSettings], MatchSettings] | None = None,
) -> tuple[LinkageUnit, Path]:
    data = tmp_path / "lu"
    data.mkdir()
    spine_key = tmp_path / "spine.key"
    assert main(["spine", "keygen", "--out", str(spine_key)]) == 0
    retention = [] if keep_runs is None else ["--keep-runs", str(keep_runs)]
    assert main(["spine", "create", "people", "--parties", "moj,dfe",
                 "--schema-fingerprint", SCHEMA_FINGERPRINT.hex(),
                 "--max-merge-share", str(max_merge_share), *retention,
                 "--data-dir", str(data), "--spine-key", str(spine_key)]) == 0  # fmt: skip
    return LinkageUnit(data, spine_key, configure), spine_key


def _verify(lu: LinkageUnit, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    public = tmp_path / "lu-audit-key.pem"
    public.write_bytes(lu.audit.public_key_pem())
    capsys.readouterr()
    assert main(["audit", "verify", "--log", str(lu.data / "audit.jsonl"),
                 "--public-key", str(public)]) == 0  # fmt: skip
    assert "result: PASSED" in capsys.readouterr().out


def _noisy(seed: int, clks: npt.NDArray[np.uint64], flip: float = 0.02) -> npt.NDArray[np.uint64]:
    return noisy_copies(np.random.default_rng(seed), clks, flip)


def test_a_release_showing_one_spine_person_to_be_two_splits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lu, _ = _lu(tmp_path, max_merge_share=0.05)
    try:
        generator = np.random.default_rng(40)
        others = random_clks(generator, 30, words=WORDS)
        first = random_clks(generator, 1, words=WORDS)
        second = noisy_copies(generator, first, 0.2)  # another person, alike at about 0.78
        # Release 1 at a permissive cut links MoJ's record of the first to DfE's of the second.
        one = lu.release(
            "release-1",
            {
                "moj": np.concatenate([_noisy(1, first), _noisy(2, others)]),
                "dfe": np.concatenate([_noisy(3, second), _noisy(4, others)]),
            },
            threshold=0.6,
        )
        assert one is RunState.FINISHED
        moj_one, dfe_one = lu.keys("release-1", "moj"), lu.keys("release-1", "dfe")
        assert moj_one[0] == dfe_one[0]  # one spine person
        # Release 2: MoJ's deduplicated extract holds both, clearly two people at 0.8.
        two = lu.release(
            "release-2",
            {"moj": np.concatenate([_noisy(5, first), _noisy(6, second), _noisy(7, others)])},
            threshold=0.8,
            dedupe=("moj",),
        )
        assert two is RunState.FINISHED
        moj_two = lu.keys("release-2", "moj")
        # Exactly one of the two keeps the spine person's key; the other is a new person.
        assert sorted([moj_two[0] == moj_one[0], moj_two[1] == moj_one[0]]) == [False, True]
        assert moj_two[0] != moj_two[1]
        # Everyone else keeps their key.
        assert all(moj_two[2 + row] == moj_one[1 + row] for row in range(30))
        (linked_two,) = [
            entry for entry in lu.audit.entries() if entry.event == "spine_run_linked"
        ][1:]
        assert (linked_two.details["splits"], linked_two.details["merges"]) == (1, 0)
        state = lu.spines.load("people")
        assert state.person_count == 32 and [e.kind for e in state.events] == ["split"]
    finally:
        lu.close()
    _verify(lu, tmp_path, capsys)


def test_a_refresh_merging_too_much_of_the_spine_stops_before_any_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lu, _ = _lu(tmp_path, max_merge_share=0.05)
    try:
        people = random_clks(np.random.default_rng(50), 40, words=WORDS, density=0.3)
        one = lu.release("release-1", {"moj": _noisy(1, people)}, threshold=0.8, dedupe=("moj",))
        assert one is RunState.FINISHED
        moj_one = lu.keys("release-1", "moj")
        spine_file = spine_directory(lu.data) / "people.spine"
        stored = spine_file.read_bytes()
        # A broken DfE extract: each record is two people's encodings run together, so at a
        # permissive cut each bridges two spine people: 20 merges, far more than 5 % of 40.
        broken = people[0::2] | people[1::2]
        two = lu.release("release-2", {"dfe": broken}, threshold=0.6, dedupe=("dfe",))
        assert two is RunState.FAILED
        status = lu.service.project_status(OPERATOR, "release-2")
        assert "max_merge_share" in status.progress_stage
        merged = re.search(
            r"would merge (\d+) of the 40 people of spine 'people'", status.progress_stage
        )
        assert merged is not None and int(merged.group(1)) >= 10
        # No key was issued, and nothing stored was lost: the spine file is untouched and
        # release 1's keys are still there, unchanged.
        with pytest.raises(PreconditionError, match="has not finished"):
            lu.keys("release-2", "dfe")
        assert spine_file.read_bytes() == stored
        assert lu.keys("release-1", "moj") == moj_one
        state = lu.spines.load("people")
        assert state.person_count == 40 and len(state.runs) == 1
        events = [(entry.event, entry.project_id) for entry in lu.audit.entries()]
        assert ("run_started", "release-2") in events
        assert ("run_finished", "release-2") not in events
        assert ("spine_run_linked", "release-2") not in events
    finally:
        lu.close()
    _verify(lu, tmp_path, capsys)


def test_a_spine_with_a_retention_policy_prunes_itself_when_a_run_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lu, _ = _lu(tmp_path, max_merge_share=0.05, keep_runs=2)
    try:
        people = random_clks(np.random.default_rng(60), 60, words=WORDS)
        releases = {  # each release: a third of the people, returning in the next
            "release-1": people[0:20],
            "release-2": np.concatenate([people[0:20], people[20:40]]),
            "release-3": people[40:60],
        }
        keys: dict[str, dict[int, str]] = {}
        records: list[int] = []
        for seed, (project, clks) in enumerate(releases.items()):
            state = lu.release(project, {"moj": _noisy(seed, clks)}, threshold=0.8, dedupe=("moj",))
            assert state is RunState.FINISHED
            keys[project] = lu.keys(project, "moj")
            records.append(len(lu.spines.load("people").record_person))
        # Two runs kept: release 1's 20 records went when release 3 completed, with no
        # operator command; people and keys stay.
        assert records == [20, 60, 60]
        spine = lu.spines.load("people")
        assert spine.person_count == 60
        assert {spine.origins[i].project_id for i in np.unique(spine.record_origin)} == {
            "release-2",
            "release-3",
        }
        assert all(keys["release-2"][row] == keys["release-1"][row] for row in range(20))
        entries = [(entry.event, entry.details) for entry in lu.audit.entries()]
        pruned = [details for event, details in entries if event == "spine_pruned"]
        assert pruned == [
            {
                "spine": "people",
                "keep_runs": 2,
                "records_removed": 20,
                "records_kept": 60,
                "people_without_records": 0,
            }
        ]
        # After the run's own spine_run_linked, in the same run.
        order = [
            event
            for event, _ in entries
            if event.startswith("spine_run") or event == "spine_pruned"
        ]
        assert order == ["spine_run_linked"] * 3 + ["spine_pruned"]
    finally:
        lu.close()
    _verify(lu, tmp_path, capsys)


def test_a_spine_runs_status_counts_linked_records_as_a_one_off_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lu, _ = _lu(tmp_path, max_merge_share=0.05)
    try:
        people = random_clks(np.random.default_rng(70), 60, words=WORDS)
        # Release 1: MoJ people 0..29, DfE 20..49: 10 people in both, so 20 records linked
        # (not the 60 records keyed), as a one-off run of the same uploads counts them.
        uploads = {"moj": _noisy(1, people[0:30]), "dfe": _noisy(2, people[20:50])}
        assert lu.release("release-1", uploads, threshold=0.8) is RunState.FINISHED
        one = lu.service.project_status(OPERATOR, "release-1")
        assert one.linked_record_count == 20
        # Release 2 of MoJ: 10 returning people (matched to spine people: linked) and 10 new
        # (nobody's duplicate: not linked), 20 records keyed.
        again = np.concatenate([_noisy(3, people[10:20]), _noisy(4, people[50:60])])
        assert lu.release("release-2", {"moj": again}, threshold=0.8, dedupe=("moj",)) is (
            RunState.FINISHED
        )
        two = lu.service.project_status(OPERATOR, "release-2")
        assert two.linked_record_count == 10
    finally:
        lu.close()
    _verify(lu, tmp_path, capsys)


def test_a_spine_run_compares_with_the_servers_blocking_settings(tmp_path: Path) -> None:
    # lu.toml's LSH shape (and group blocking) apply to runs into a spine as to one-off runs:
    # the same ServerConfig.run_settings the server hands its RunManager.
    config = ServerConfig(
        data_dir=tmp_path / "unused", insecure=True, lsh_bands=24, lsh_bits_per_band=6
    )
    lu, _ = _lu(tmp_path, max_merge_share=0.5, configure=config.run_settings)
    try:
        people = random_clks(np.random.default_rng(50), 60, words=WORDS)
        uploads = {"moj": _noisy(1, people[:40]), "dfe": _noisy(2, people[20:])}
        one = lu.release("release-1", uploads, threshold=0.8, blocking=BlockingMode.LSH)
        two = lu.release(
            "release-2", {"moj": _noisy(3, people)}, threshold=0.8, dedupe=("moj",),
            blocking=BlockingMode.LSH,
        )  # fmt: skip
        assert one is two is RunState.FINISHED
        # Release 1: moj-dfe (an empty spine). Release 2: moj with itself, then new-vs-spine.
        for project, compares in (("release-1", 1), ("release-2", 2)):
            _, text = lu.service.project_report(OPERATOR, project)
            report = RunReport.from_json(text)
            assert report.lsh_shapes == ((24, 6),) * compares, (project, report.lsh_shapes)
    finally:
        lu.close()

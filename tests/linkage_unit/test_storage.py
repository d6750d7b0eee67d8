"""Storage: an old state file upgrades in place (the release before user_version was kept,
and the release that added layouts and link models without it), one process holds a data
directory, a state file from a newer release is refused rather than misread, and link keys
come back as they were stored."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from linkage_unit.link_keys import PartyLinkKeys, fresh_keys, issue_link_keys
from linkage_unit.storage import _MIGRATIONS, KEY_BATCH, SCHEMA_VERSION, RunOutcome, Storage
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import ConfigurationError, InUseError
from protocol.messages import LinkKeyMode, ProjectSettings, RunState, UploadState

# The state file of the release before user_version was kept (threshold columns included).
_PREVIOUS_RELEASE = """
CREATE TABLE projects (project_id TEXT PRIMARY KEY, settings_json TEXT NOT NULL,
    settings_fingerprint TEXT NOT NULL, schema_fingerprint BLOB NOT NULL, threshold REAL,
    blocking TEXT NOT NULL, link_key_mode TEXT NOT NULL, retention_days INTEGER NOT NULL,
    auto_run INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE members (project_id TEXT NOT NULL, party TEXT NOT NULL, ordinal INTEGER NOT NULL,
    PRIMARY KEY (project_id, party));
CREATE TABLE uploads (project_id TEXT NOT NULL, party TEXT NOT NULL, state TEXT NOT NULL,
    format_version INTEGER NOT NULL, schema_fingerprint BLOB NOT NULL, kcv BLOB NOT NULL,
    clk_bits INTEGER NOT NULL, record_count INTEGER NOT NULL, payload_sha256 BLOB NOT NULL,
    committed_bytes INTEGER NOT NULL, completed_at REAL, PRIMARY KEY (project_id, party));
CREATE TABLE runs (run_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, finished_at REAL, stage TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
    check_party TEXT NOT NULL DEFAULT '', check_aspect TEXT NOT NULL DEFAULT '',
    cluster_count INTEGER NOT NULL DEFAULT 0, linked_record_count INTEGER NOT NULL DEFAULT 0,
    comparisons INTEGER NOT NULL DEFAULT 0, threshold REAL,
    threshold_method TEXT NOT NULL DEFAULT '');
CREATE TABLE key_sets (project_id TEXT NOT NULL, party TEXT NOT NULL, run_id TEXT NOT NULL,
    key_count INTEGER NOT NULL, keys_sha256 TEXT NOT NULL, PRIMARY KEY (project_id, party));
CREATE TABLE link_keys (project_id TEXT NOT NULL, party TEXT NOT NULL, ordinal INTEGER NOT NULL,
    position INTEGER NOT NULL, link_key TEXT NOT NULL, PRIMARY KEY (project_id, party, ordinal))
    WITHOUT ROWID;
CREATE TABLE key_releases (project_id TEXT NOT NULL, party TEXT NOT NULL,
    released_at REAL NOT NULL, PRIMARY KEY (project_id, party));
CREATE TABLE manifest_nonces (nonce TEXT PRIMARY KEY, project_id TEXT NOT NULL,
    party TEXT NOT NULL, manifest_sha256 TEXT NOT NULL);
INSERT INTO projects VALUES ('p1', '{}', 'f', zeroblob(32), NULL, 'lsh', 'shared', 0, 1, 1.0);
INSERT INTO members VALUES ('p1', 'moj', 0), ('p1', 'dfe', 1);
INSERT INTO uploads VALUES ('p1', 'moj', 'complete', 1, zeroblob(32), zeroblob(16), 256, 3,
    zeroblob(32), 96, 5.0);
INSERT INTO runs (run_id, project_id, state, created_at, finished_at)
    VALUES ('r1', 'p1', 'finished', 6.0, 7.0);
INSERT INTO key_sets VALUES ('p1', 'moj', 'r1', 3, 'abc');
"""


def test_the_previous_releases_state_upgrades_in_place(tmp_path: Path) -> None:
    """An LU that has run for months keeps its projects, uploads, runs and keys; the state
    file gains the new columns and tables and records its schema version, and opening it
    again changes nothing."""
    directory = tmp_path / "lu"
    directory.mkdir()
    with sqlite3.connect(directory / "state.sqlite3") as old:
        old.executescript(_PREVIOUS_RELEASE)
    for _ in range(2):
        store = Storage(directory, clock=lambda: 100.0)
        try:
            project = store.project("p1")
            assert project is not None and project.members == ("moj", "dfe")
            # Before layouts and link models: a single-CLK, one-to-one project.
            assert project.layout is None and project.deduplicated == ()
            upload = store.upload("p1", "moj")
            assert upload is not None and upload.state is UploadState.COMPLETE
            assert upload.header.layout is None
            run = store.latest_run("p1")
            assert run is not None and run.state is RunState.FINISHED and not run.keys_ready
            assert store.key_set("p1", "moj").keys_sha256 == "abc"
            assert store.retirements() == []
            # The hold runs from when the upload completed, as before the upgrade.
            assert [r.header.party_id for r in store.expired_uploads(5.0 + 31 * 86400)] == ["moj"]
        finally:
            store.close()
    with sqlite3.connect(directory / "state.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


_LAYOUT = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=128, hardening="diffusion:width=3,output_bits=128"),
        GroupLayout(name="birth", bits=128, hardening="none"),
    )
)
# The release with grouped layouts and link models, still without user_version: layout
# columns, and a project's deduplicated members only in its fingerprinted settings JSON.
_LAYOUT_RELEASE = (
    _PREVIOUS_RELEASE.replace(
        "created_at REAL NOT NULL);", "created_at REAL NOT NULL, layout TEXT);"
    )
    .replace("completed_at REAL, PRIMARY KEY", "completed_at REAL, layout TEXT, PRIMARY KEY")
    .replace("0, 1, 1.0);", "0, 1, 1.0, NULL);")
    .replace("96, 5.0);", "96, 5.0, NULL);")
)


def test_the_release_with_layouts_and_link_models_upgrades_in_place(tmp_path: Path) -> None:
    """Its layouts stay, and a deduplicating project keeps its link model: the deduplicated
    members and cluster cap it recorded only in its settings JSON become columns."""
    settings = {"deduplicated": ["dfe"], "max_cluster_size": 50, "layout": _LAYOUT.to_record()}
    directory = tmp_path / "lu"
    directory.mkdir()
    with sqlite3.connect(directory / "state.sqlite3") as old:
        old.executescript(_LAYOUT_RELEASE)
        old.execute(
            "INSERT INTO projects VALUES ('p2', ?, 'f', zeroblob(32), NULL, 'lsh', 'shared', 0, "
            "1, 1.0, ?)",
            (json.dumps(settings), _LAYOUT.canonical_json()),
        )
        old.execute("INSERT INTO members VALUES ('p2', 'moj', 0), ('p2', 'dfe', 1)")
    for _ in range(2):
        store = Storage(directory, clock=lambda: 100.0)
        try:
            plain, grouped = store.project("p1"), store.project("p2")
            assert plain is not None and plain.deduplicated == () and plain.layout is None
            assert grouped is not None and grouped.layout == _LAYOUT
            assert (grouped.deduplicated, grouped.max_cluster_size) == (("dfe",), 50)
        finally:
            store.close()
    with sqlite3.connect(directory / "state.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_state_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    Storage(tmp_path / "lu").close()
    with sqlite3.connect(tmp_path / "lu" / "state.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigurationError, match="newer bloomlink"):
        Storage(tmp_path / "lu")


def test_one_process_holds_a_data_directory(tmp_path: Path) -> None:
    """A second Storage on the same data directory (a second LU) is refused as in use,
    and the directory is free again once the first closes."""
    first = Storage(tmp_path / "lu")
    with pytest.raises(InUseError, match="in use by another linkage unit"):
        Storage(tmp_path / "lu")
    first.close()
    Storage(tmp_path / "lu").close()


def _outcome() -> RunOutcome:
    return RunOutcome(cluster_count=1, linked_record_count=0, comparisons=0, threshold=0.5,
                      threshold_method="fixed", estimated=None)  # fmt: skip


def test_keys_stored_before_key_batches_move_over_in_release_order(tmp_path: Path) -> None:
    """A state file of the release that stored a row a key (schema 9) keeps every key, in
    release order, across batch boundaries; the old table is gone."""
    directory = tmp_path / "lu"
    directory.mkdir()
    rng = np.random.default_rng(3)
    stored = {"moj": rng.permutation(KEY_BATCH * 2 + 7).tolist(), "dfe": [2, 0, 1]}
    keys = {party: fresh_keys(len(positions), rng.bytes) for party, positions in stored.items()}
    with sqlite3.connect(directory / "state.sqlite3") as old:
        for migration in _MIGRATIONS[:9]:
            migration(old, 1.0)
        old.execute("PRAGMA user_version = 9")
        for party, positions in stored.items():
            rows = enumerate(zip(positions, keys[party], strict=True))
            old.executemany(
                "INSERT INTO link_keys VALUES ('p1', ?, ?, ?, ?)",
                [(party, ordinal, position, key) for ordinal, (position, key) in rows],
            )
    store = Storage(directory)
    try:
        for party, positions in stored.items():
            batches = list(store.iter_link_keys("p1", party, batch_size=KEY_BATCH))
            assert [p for rows in batches for p in rows.positions] == positions
            assert [k for rows in batches for k in rows.link_keys] == keys[party]
    finally:
        store.close()
    with sqlite3.connect(directory / "state.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "link_keys" not in tables and "link_key_batches" in tables


@pytest.mark.parametrize("batch_size", [1, 999, KEY_BATCH, KEY_BATCH + 1])
def test_stored_keys_come_back_in_release_order_in_any_batch_size(
    tmp_path: Path, batch_size: int
) -> None:
    store = Storage(tmp_path / "lu")
    try:
        store.create_project(
            ProjectSettings(project_id="p1", members=("moj", "dfe"), schema_fingerprint=bytes(32))
        )
        store.create_run("p1", "r1")
        clusters = {"moj": np.arange(KEY_BATCH + 5), "dfe": np.zeros(0, np.int64)}
        issued = issue_link_keys(clusters, LinkKeyMode.PER_PARTY)
        store.store_keys("r1", "p1", outcome=_outcome(), keys=issued)
        for party, keys in issued.items():
            batches = list(store.iter_link_keys("p1", party, batch_size=batch_size))
            assert all(len(rows.link_keys) <= batch_size for rows in batches)
            assert [p for rows in batches for p in rows.positions] == keys.positions
            assert [k for rows in batches for k in rows.link_keys] == keys.link_keys
        # A key of another length would be cut wrongly when read back: refused, not stored.
        bad = {"moj": PartyLinkKeys(positions=[0, 1], link_keys=["a" * 25, "b" * 27],
                                    keys_sha256="")}  # fmt: skip
        with pytest.raises(ValueError, match="not all 26 characters"):
            store.store_keys("r1", "p1", outcome=_outcome(), keys=bad)
        assert (
            list(store.iter_link_keys("p1", "moj", batch_size=KEY_BATCH))[0].link_keys[0]
            == (issued["moj"].link_keys[0])
        )
    finally:
        store.close()

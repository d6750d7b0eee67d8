"""Spine: the linkage unit's persistent population of people, so link keys survive refreshes.

Pipeline stage: after upload checks, in place of a one-off run's link-key issue. A spine
holds, per person, its link keys (one per party in ``per_party`` mode, one in ``shared``
mode) and the encodings of the records that made it. A run into a spine links the new
uploads among themselves and against the spine's encodings, with the spine as one more,
deduplicated party of :func:`linkage_unit.matching.link`:

* a cluster holding records of exactly one spine person takes that person's keys;
* a cluster holding records of no spine person is a new person: fresh keys, added;
* a cluster holding records of several spine people is a **merge**: it keeps the oldest
  person's keys, the others' keys stay valid and map to them in the crosswalk;
* a spine person whose records fall in several clusters that carry new records is a
  **split**: the cluster with most of its records keeps its keys, the others are new
  people, and the event is recorded. Issued keys never change silently.

Checks before any comparison (:func:`check_upload`): the party is one the spine lists, the
upload's schema fingerprint is the spine's and its KCV the spine's (the first run binds it).
A run that would merge more than ``max_merge_share`` of the spine's people fails before any
key is issued (:func:`link_into_spine`): a wrong key or a broken extract looks like that.

At rest a spine is one file, AES-256-GCM encrypted under a key the operator holds in a key
file (:class:`SpineStore`); nothing in the linkage unit can reach the linkage secret, and the
spine key is not it.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from linkage_unit import matching
from linkage_unit.link_keys import PartyLinkKeys, RandomBytes, fresh_keys
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    PreconditionError,
)
from protocol.labels import LABEL_PATTERN
from protocol.messages import LinkKeyMode, link_keys_digest
from protocol.vocabulary import CheckAspect

__all__ = [
    "SPINE_PARTY",
    "Crosswalk",
    "SpineEvent",
    "SpineEventKind",
    "SpineRunResult",
    "SpineSettings",
    "SpineState",
    "SpineStore",
    "SpineUpload",
    "check_upload",
    "link_into_spine",
    "read_spine_key",
    "spine_directory",
]

SPINE_PARTY = "spine"
"""The name the spine's records carry in the linking run (not a valid party name)."""

SHARED_KEY = "*"
"""The one key slot of a person in ``shared`` link-key mode."""

_FILE_MAGIC = b"bloomlink-spine-v1\n"
_NONCE_BYTES = 12
SPINE_KEY_BYTES = 32


class SpineEventKind(StrEnum):
    """What a spine run recorded besides keys."""

    MERGE = "merge"
    SPLIT = "split"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineSettings:
    """A spine's binding: its parties, schema fingerprint, KCV (None until the first run),
    link-key mode and the largest share of its people one run may merge."""

    name: str
    parties: tuple[str, ...]
    schema_fingerprint: str
    kcv: str | None = None
    link_key_mode: LinkKeyMode = LinkKeyMode.PER_PARTY
    max_merge_share: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if not LABEL_PATTERN.fullmatch(self.name):
            problems.append("the spine name must be 1-63 of a-z, 0-9 and '-', from a letter")
        if not self.parties or len(set(self.parties)) != len(self.parties):
            problems.append("a spine lists one or more distinct parties")
        if SPINE_PARTY in self.parties:
            problems.append(f"{SPINE_PARTY!r} is reserved and cannot be a party name")
        if not re.fullmatch(r"[0-9a-f]{64}", self.schema_fingerprint):
            problems.append("the schema fingerprint must be 64 lower-case hex digits")
        if not 0.0 <= self.max_merge_share <= 1.0:
            problems.append("max_merge_share must be between 0 and 1")
        if problems:
            raise InvalidRequestError("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineEvent:
    """A merge (``people`` became ``kept``) or a split (``kept`` lost records to ``people``)."""

    kind: SpineEventKind
    run_id: str
    kept: int
    people: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Crosswalk:
    """Old link key -> current link key, for the research environment to apply."""

    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineState:
    """The whole spine: settings; per person (index = person id) its keys by party and
    the id it was merged into (or itself); per record its encoding and person."""

    settings: SpineSettings
    person_keys: tuple[Mapping[str, str], ...] = ()
    merged_into: tuple[int, ...] = ()
    encodings: npt.NDArray[np.uint64] = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.uint64)
    )
    record_person: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    events: tuple[SpineEvent, ...] = ()
    runs: tuple[str, ...] = ()

    @property
    def person_count(self) -> int:
        """People currently distinct (merged ones are counted once)."""
        return sum(1 for person, into in enumerate(self.merged_into) if person == into)

    def current(self, person: int) -> int:
        """The person a (possibly merged) person now is."""
        while self.merged_into[person] != person:
            person = self.merged_into[person]
        return person

    def crosswalk(self) -> Crosswalk:
        """Every issued key of a merged-away person -> the current person's key, per party."""
        rows: list[tuple[str, str]] = []
        for person, keys in enumerate(self.person_keys):
            target = self.current(person)
            if target == person:
                continue
            for party, key in sorted(keys.items()):
                current = self.person_keys[target].get(party)
                if current is not None and current != key:
                    rows.append((key, current))
        return Crosswalk(rows=tuple(rows))


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineUpload:
    """One party's upload to a run into a spine."""

    party: str
    schema_fingerprint: str
    kcv: str
    clks: npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineRunResult:
    """Keys for every record of every upload, the spine after the run and what happened."""

    keys: Mapping[str, PartyLinkKeys]
    state: SpineState
    matched_people: int
    new_people: int
    merges: tuple[SpineEvent, ...]
    splits: tuple[SpineEvent, ...]
    comparisons: int
    threshold: float = 0.0
    threshold_method: str = ""


def check_upload(settings: SpineSettings, upload: SpineUpload) -> None:
    """Refuse, before any comparison, an upload the spine cannot take."""
    if upload.party not in settings.parties:
        raise PreconditionError(
            f"party {upload.party!r} is not listed on spine {settings.name!r}; "
            "the operator lists a spine's parties when creating it"
        )
    if upload.schema_fingerprint != settings.schema_fingerprint:
        raise CompatibilityError(
            f"party {upload.party!r} encoded under another schema than spine "
            f"{settings.name!r}; re-encode with the spine's schema",
            party=upload.party,
            aspect=CheckAspect.SCHEMA_FINGERPRINT,
        )
    if settings.kcv is not None and upload.kcv != settings.kcv:
        raise CompatibilityError(
            f"party {upload.party!r} encoded under another linkage secret (KCV) than spine "
            f"{settings.name!r}; use the spine's secret, or rotate the spine (docs/spine.md)",
            party=upload.party,
            aspect=CheckAspect.KCV,
        )


def link_into_spine(
    state: SpineState,
    uploads: Sequence[SpineUpload],
    settings: matching.MatchSettings,
    *,
    run_id: str,
    random_bytes: RandomBytes = os.urandom,
) -> SpineRunResult:
    """Link ``uploads`` among themselves and against the spine; issue every record one key."""
    if not uploads:
        raise InvalidRequestError("a run into a spine needs at least one upload")
    parties = [upload.party for upload in uploads]
    if len(set(parties)) != len(parties):
        raise InvalidRequestError("each party uploads once to a run into a spine")
    kcvs = {upload.kcv for upload in uploads}
    for upload in uploads:
        check_upload(state.settings, upload)
    if state.settings.kcv is None and len(kcvs) != 1:
        raise CompatibilityError(
            "the uploads of the spine's first run are under different linkage secrets (KCV)",
            party=uploads[0].party,
            aspect=CheckAspect.KCV,
        )
    widths = {upload.clks.shape[1] for upload in uploads}
    if len(state.record_person):
        widths.add(state.encodings.shape[1])
    if len(widths) != 1:
        raise CompatibilityError(
            "the uploads' CLK lengths differ from each other or from the spine's",
            party=uploads[0].party,
            aspect=CheckAspect.CLK_BITS,
        )
    clks = {upload.party: upload.clks for upload in uploads}
    deduplicated = set(settings.deduplicated)
    if len(state.record_person):
        clks = {SPINE_PARTY: state.encodings, **clks}
        deduplicated.add(SPINE_PARTY)
    result = matching.link(
        clks,
        matching.MatchSettings(
            threshold=settings.threshold,
            blocking=settings.blocking,
            deduplicated=frozenset(deduplicated),
            max_cluster_size=settings.max_cluster_size,
            blocking_settings=settings.blocking_settings,
            blocking_seed=settings.blocking_seed,
            max_candidate_pairs=settings.max_candidate_pairs,
            threshold_sample=settings.threshold_sample,
            workers=settings.workers,
            scoring=settings.scoring,
            model=settings.model,
        ),
    )
    return _assign(state, uploads, result, run_id=run_id, random_bytes=random_bytes)


def _assign(
    state: SpineState,
    uploads: Sequence[SpineUpload],
    result: matching.LinkResult,
    *,
    run_id: str,
    random_bytes: RandomBytes,
) -> SpineRunResult:
    spine_clusters = result.clusters.get(SPINE_PARTY, np.zeros(0, dtype=np.int64))
    current = np.array(
        [state.current(int(person)) for person in state.record_person], dtype=np.int64
    )
    # The clusters that carry new records decide; spine-only clusters change nothing.
    new_clusters: set[int] = set()
    for upload in uploads:
        new_clusters.update(int(c) for c in np.unique(result.clusters[upload.party]))
    people_of: dict[int, set[int]] = {}
    for cluster, person in zip(spine_clusters.tolist(), current.tolist(), strict=True):
        if cluster in new_clusters:
            people_of.setdefault(cluster, set()).add(person)
    merges: list[SpineEvent] = []
    merged_into = list(state.merged_into)
    cluster_person: dict[int, int] = {}
    for cluster, people in people_of.items():
        kept = min(people)  # the oldest person keeps its keys
        if len(people) > 1:
            merges.append(
                SpineEvent(
                    kind=SpineEventKind.MERGE,
                    run_id=run_id,
                    kept=kept,
                    people=tuple(sorted(people - {kept})),
                )
            )
        cluster_person[cluster] = kept
    merged_people = sum(len(event.people) for event in merges)
    if merged_people > state.settings.max_merge_share * max(state.person_count, 1):
        raise PreconditionError(
            f"this run would merge {merged_people} of spine {state.settings.name!r}'s "
            f"{state.person_count} people, more than its max_merge_share "
            f"{state.settings.max_merge_share}; no key was issued. Check the parties' "
            "linkage secret and extracts"
        )
    # Splits: a current person in several new-record clusters keeps the one with most of
    # its records; the others become new people (their records move with them).
    clusters_of_person: dict[int, dict[int, int]] = {}
    for cluster, person in zip(spine_clusters.tolist(), current.tolist(), strict=True):
        if cluster in new_clusters:
            counts = clusters_of_person.setdefault(person, {})
            counts[cluster] = counts.get(cluster, 0) + 1
    split_away: dict[int, int] = {}  # cluster -> person it was split from
    for person, counts in clusters_of_person.items():
        if len(counts) < 2:
            continue
        kept_cluster = max(sorted(counts), key=lambda c: counts[c])
        for cluster in counts:
            if cluster != kept_cluster and cluster_person.get(cluster) == person:
                split_away[cluster] = person
    person_keys = [dict(keys) for keys in state.person_keys]
    for event in merges:
        for person in event.people:
            merged_into[person] = event.kept
    splits: list[SpineEvent] = []
    split_new: dict[int, list[int]] = {}
    matched = {person for person in cluster_person.values()}
    new_people = 0
    for cluster in sorted(new_clusters):
        if cluster in cluster_person and cluster not in split_away:
            continue
        person = len(person_keys)
        person_keys.append({})
        merged_into.append(person)
        cluster_person[cluster] = person
        new_people += 1
        if cluster in split_away:
            split_new.setdefault(split_away[cluster], []).append(person)
    for origin, split_people in sorted(split_new.items()):
        splits.append(
            SpineEvent(
                kind=SpineEventKind.SPLIT, run_id=run_id, kept=origin, people=tuple(split_people)
            )
        )
    mode = state.settings.link_key_mode
    keys: dict[str, PartyLinkKeys] = {}
    added_encodings: list[npt.NDArray[np.uint64]] = []
    added_people: list[npt.NDArray[np.int64]] = []
    for upload in uploads:
        ids = result.clusters[upload.party]
        slot = SHARED_KEY if mode is LinkKeyMode.SHARED else upload.party
        missing = sorted(
            {cluster_person[int(c)] for c in np.unique(ids)}
            - {p for p in range(len(person_keys)) if slot in person_keys[p]}
        )
        for person, key in zip(missing, fresh_keys(len(missing), random_bytes), strict=True):
            person_keys[person][slot] = key
        record_people = np.array([cluster_person[int(c)] for c in ids], dtype=np.int64)
        seed = int.from_bytes(random_bytes(32), "little")
        order = np.random.default_rng(seed).permutation(len(ids))
        positions = [int(position) for position in order]
        link_keys = [person_keys[int(record_people[p])][slot] for p in positions]
        keys[upload.party] = PartyLinkKeys(
            positions=positions,
            link_keys=link_keys,
            keys_sha256=link_keys_digest(positions, link_keys),
        )
        added_encodings.append(upload.clks)
        added_people.append(record_people)
    # Split-away spine records follow their new person.
    spine_people = current.copy()
    for index, cluster in enumerate(spine_clusters.tolist()):
        if cluster in split_away:
            spine_people[index] = cluster_person[cluster]
    width = uploads[0].clks.shape[1]
    old = state.encodings if len(state.record_person) else np.zeros((0, width), np.uint64)
    settings = state.settings
    if settings.kcv is None:
        settings = SpineSettings(
            name=settings.name,
            parties=settings.parties,
            schema_fingerprint=settings.schema_fingerprint,
            kcv=uploads[0].kcv,
            link_key_mode=settings.link_key_mode,
            max_merge_share=settings.max_merge_share,
        )
    new_state = SpineState(
        settings=settings,
        person_keys=tuple(person_keys),
        merged_into=tuple(merged_into),
        encodings=np.concatenate([old, *added_encodings]).astype(np.uint64),
        record_person=np.concatenate([spine_people, *added_people]).astype(np.int64),
        events=state.events + tuple(merges) + tuple(splits),
        runs=(*state.runs, run_id),
    )
    return SpineRunResult(
        keys=keys,
        state=new_state,
        matched_people=len(matched),
        new_people=new_people,
        merges=tuple(merges),
        splits=tuple(splits),
        comparisons=result.comparisons,
        threshold=result.threshold,
        threshold_method=result.threshold_method,
    )


# -- at rest ----------------------------------------------------------------------------


def spine_directory(data_dir: Path) -> Path:
    """Where a linkage unit keeps its spines."""
    return data_dir / "spines"


def read_spine_key(path: Path) -> bytes:
    """The operator's spine key: 32 raw bytes in a file only its owner can read."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the spine key file {path}: {error.strerror}"
        ) from None
    if mode & 0o077:
        raise ConfigurationError(f"the spine key file {path} is readable by others; chmod 600 it")
    if len(data) != SPINE_KEY_BYTES:
        raise ConfigurationError(
            f"the spine key file {path} must hold exactly {SPINE_KEY_BYTES} bytes; "
            "make one with `bloomlink spine keygen`"
        )
    return data


def _to_bytes(state: SpineState) -> bytes:
    s = state.settings
    meta = {
        "settings": {
            "name": s.name,
            "parties": list(s.parties),
            "schema_fingerprint": s.schema_fingerprint,
            "kcv": s.kcv,
            "link_key_mode": s.link_key_mode.value,
            "max_merge_share": s.max_merge_share,
        },
        "person_keys": [dict(keys) for keys in state.person_keys],
        "merged_into": list(state.merged_into),
        "events": [
            {"kind": e.kind.value, "run_id": e.run_id, "kept": e.kept, "people": list(e.people)}
            for e in state.events
        ],
        "runs": list(state.runs),
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
        encodings=state.encodings,
        record_person=state.record_person,
    )
    return buffer.getvalue()


def _from_bytes(data: bytes) -> SpineState:
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    meta = json.loads(arrays["meta"].tobytes().decode())
    s = meta["settings"]
    return SpineState(
        settings=SpineSettings(
            name=s["name"],
            parties=tuple(s["parties"]),
            schema_fingerprint=s["schema_fingerprint"],
            kcv=s["kcv"],
            link_key_mode=LinkKeyMode(s["link_key_mode"]),
            max_merge_share=float(s["max_merge_share"]),
        ),
        person_keys=tuple(dict(keys) for keys in meta["person_keys"]),
        merged_into=tuple(int(p) for p in meta["merged_into"]),
        encodings=arrays["encodings"].astype(np.uint64),
        record_person=arrays["record_person"].astype(np.int64),
        events=tuple(
            SpineEvent(
                kind=SpineEventKind(e["kind"]),
                run_id=e["run_id"],
                kept=e["kept"],
                people=tuple(e["people"]),
            )
            for e in meta["events"]
        ),
        runs=tuple(meta["runs"]),
    )


class SpineStore:
    """Spines at rest: one AES-256-GCM file per spine under ``directory``, written atomically
    (temporary file, fsync, rename). The spine name is the associated data, so a file renamed
    to another spine fails to open."""

    def __init__(self, directory: Path, key: bytes) -> None:
        if len(key) != SPINE_KEY_BYTES:
            raise ConfigurationError(f"a spine key is {SPINE_KEY_BYTES} bytes")
        self._directory = directory
        self._aead = AESGCM(key)
        directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SpineStore({str(self._directory)!r}, key=<redacted>)"

    def _path(self, name: str) -> Path:
        return self._directory / f"{name}.spine"

    def create(self, settings: SpineSettings) -> SpineState:
        """Store a new, empty spine."""
        if self._path(settings.name).exists():
            raise AlreadyExistsError(f"spine {settings.name!r} already exists")
        state = SpineState(settings=settings)
        self.save(state)
        return state

    def load(self, name: str) -> SpineState:
        """The stored spine, decrypted and authenticated."""
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no spine named {name!r}") from None
        if not blob.startswith(_FILE_MAGIC):
            raise ConfigurationError(f"{path} is not a bloomlink spine file")
        body = blob[len(_FILE_MAGIC) :]
        try:
            plain = self._aead.decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], name.encode())
        except Exception:
            raise ConfigurationError(
                f"spine {name!r} cannot be decrypted: wrong spine key, or the file was altered"
            ) from None
        return _from_bytes(plain)

    def save(self, state: SpineState) -> None:
        """Replace the stored spine with ``state``, atomically."""
        name = state.settings.name
        nonce = os.urandom(_NONCE_BYTES)
        blob = _FILE_MAGIC + nonce + self._aead.encrypt(nonce, _to_bytes(state), name.encode())
        path = self._path(name)
        temporary = path.with_suffix(".spine.tmp")
        with temporary.open("wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

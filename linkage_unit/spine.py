"""Spine: the linkage unit's persistent population of people, so link keys survive refreshes.

Pipeline stage: after upload checks, in place of a one-off run's link-key issue. A spine
holds, per person, its link keys (one per party in ``per_party`` mode, one in ``shared``
mode) and the encodings of the records that made it. A run into a spine compares only what
is new (:func:`link_into_spine`):

1. the new uploads among themselves, exactly as a one-off run of them
   (:func:`linkage_unit.matching.link`, with or without deduplication), giving clusters of
   new records; a deduplicated party's partition of its own records is its own, as ever;
2. every new record against the spine's records. Spine records are never compared with
   each other: the spine's people are already resolved, and are not re-clustered.

Scoring is the project's, as in a one-off run: with a layout of several field groups (a
grouped schema) the uploads are linked with that layout, and new-vs-spine pairs are scored by
a Fellegi-Sunter model of their own (candidates above a record-level Dice cut chosen from
random new-vs-spine pairs, EM on them, a posterior match probability per pair, linked at the
operator's match probability; an untrusted model links nothing, ``fellegi_sunter.py``);
without one (single CLKs, or ``scoring=dice``) new-vs-spine pairs are cut at the Dice
threshold the run chooses (or the operator's).

Then the spine's evidence is weighed against the uploads' own links (:func:`hold_apart`): a
new record *links* to a spine person when its best pair with the person's records is at
least the cut; a cluster whose linking records point at spine people in two or more groups,
no record of one group linking to a person of another, is joined across them by nothing but
a within-release link, against each record's direct pairs with the other people's records.
A record linking to no one is unanchored, however close its pairs below the cut: a cluster
with a group and an unanchored record would give that record a person whose records none of
its own pairs reaches. Either cluster is split along its groups (the unanchored records one more
part), each part taking its own person's keys by its own evidence; the run records the
event (``held_apart``: no key changes). One exception: a record that only the run's links
across parties join to its cluster (its cluster's other records all of other uploads) stays
with a group whose person its best pair reaches at the link cut, another party's record
vouching for it; it never joins people itself. A record alone, or joined by a
deduplication, has no one to vouch for it.

**People known apart.** An upload linked without deduplication is declared duplicate-free by
its party: each record a different person (:attr:`RecordOrigin.duplicate_free`, kept at rest).
So two spine people who each hold a record of one such upload are different people
(:class:`KnownApart`), and no later run joins them, however alike: a group of
:func:`hold_apart` holding two of them is regrouped by each record's best person (the
person of its highest pair), and the attach step below refuses a join that would put two of
them in one person, as it refuses two clusters of one upload. A party whose upload holds a
person twice must deduplicate it (``--dedupe``) to have the two records joined later.

Then new clusters are joined to spine people: a cluster and a person are linked when the
mean over the cluster's records of each record's best ``score - attach cut`` against the
person's records is at least zero (a record with no scored pair with the person counting
``margin`` below the link cut: ``unscored_margin`` in Dice, probability 0 with the model),
best links first, at most one cluster of each new upload per person (as in the clustering's
stage 2). The attach cut is the link cut, or with the model the spine's
:attr:`SpineSettings.attach_probability` where that is higher (0.7 by default), and the
spine's evidence above holds records apart at it too (a record reaches a person by its own
pair at the attach cut, or at the link cut where another party's record vouches for it):
a new person who agrees with one who left on one field group scores
0.5-0.7 with them, as some returning people do with themselves, and nothing else competes
for the leaver's key.
Best pair per new record, not the mean over every record pair: a person who has gathered
records that disagree with each other (several parties, releases, spellings) must not
outvote an exact copy of one of them (:func:`link_means`):

* a cluster joined to exactly one spine person takes that person's keys;
* a cluster joined to none is a new person: fresh keys, added;
* a cluster joined to several spine people **bridges** them: a **merge**. The oldest
  person keeps its keys; the others' keys stay valid and map to them in the crosswalk.
  Spine people that no new record bridges are never merged, however alike their records,
  nor are people known apart (above);
* a person whose link to a cluster was refused (another cluster of the same upload took it
  first) is **split** when that cluster joined no spine person and some of the person's
  records are close, on average, to that cluster's new records (evidence at least zero) and
  not to the new records that kept the person (below zero): those records move to a new
  person with the cluster, and the event is recorded. The person's best-linked new records
  keep its keys. Issued keys never change silently.

Checks before any comparison (:func:`check_upload`): the party is one the spine lists, the
upload's schema fingerprint is the spine's and its KCV the spine's (the first run binds it).
A run that would merge more than ``max_merge_share`` of the spine's people fails before any
key is issued (:func:`link_into_spine`): a wrong key or a broken extract looks like that.

Each record keeps its origin (the upload it came in, whether that upload was duplicate-free,
and its position there).
:func:`rotate_spine` moves a spine to a new linkage secret from the parties' re-encodings of
the same uploads at the same positions, record by record, so no person and no key changes;
:func:`prune_spine` is retention: old runs' encodings go, people and keys stay.

At rest a spine is one file, AES-256-GCM encrypted under a key the operator holds in a key
file (:class:`SpineStore`); nothing in the linkage unit can reach the linkage secret, and the
spine key is not it.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from linkage_unit import matching
from linkage_unit.clustering import DEFAULT_UNSCORED_MARGIN
from linkage_unit.comparison import CompareSettings, CompareStatistics, LocalComparer
from linkage_unit.fellegi_sunter import probability_of_weight
from linkage_unit.link_keys import PartyLinkKeys, RandomBytes, fresh_keys
from linkage_unit.scoring import Scorer
from linkage_unit.threshold import ThresholdMethod
from protocol.clk_layout import ClkLayout
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    MatchingError,
    NotFoundError,
    PreconditionError,
)
from protocol.labels import LABEL_PATTERN
from protocol.messages import LinkKeyMode, link_keys_digest
from protocol.vocabulary import CheckAspect

__all__ = [
    "DEFAULT_ATTACH_PROBABILITY",
    "SPINE_PARTY",
    "Crosswalk",
    "SpineEvent",
    "SpineEventKind",
    "SpineRunResult",
    "SpineSettings",
    "SpineState",
    "SpineStore",
    "SpineUpload",
    "RecordOrigin",
    "Reencoding",
    "Rotation",
    "Pruning",
    "LinkMeans",
    "HeldApart",
    "CrossParty",
    "KnownApart",
    "RecordLinks",
    "hold_apart",
    "reference_hold_apart",
    "record_links",
    "check_upload",
    "link_into_spine",
    "link_means",
    "reference_link_means",
    "prune_spine",
    "rotate_spine",
    "read_spine_key",
    "spine_directory",
]

SPINE_PARTY = "spine"
"""The name the spine's records carry in the linking run (not a valid party name)."""

SHARED_KEY = "*"
"""The one key slot of a person in ``shared`` link-key mode."""

DEFAULT_ATTACH_PROBABILITY = 0.7
"""The default :attr:`SpineSettings.attach_probability` (docs/spine.md: measured)."""

_FILE_MAGIC = b"bloomlink-spine-v1\n"
_NONCE_BYTES = 12
SPINE_KEY_BYTES = 32


class SpineEventKind(StrEnum):
    """What a spine run recorded besides keys."""

    MERGE = "merge"
    SPLIT = "split"
    HELD_APART = "held_apart"
    """A cluster of the run's own records that the spine's evidence held apart: its records
    each link to one of ``kept`` and ``people`` (spine people no record of it links to two
    of), so each part took its own person's keys and no person changed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineSettings:
    """A spine's binding: its parties, schema fingerprint, KCV (None until the first run),
    link-key mode, the largest share of its people one run may merge, and its retention."""

    name: str
    parties: tuple[str, ...]
    schema_fingerprint: str
    kcv: str | None = None
    link_key_mode: LinkKeyMode = LinkKeyMode.PER_PARTY
    max_merge_share: float = 0.05
    keep_runs: int | None = None
    """Retention: each run into the spine, when it completes, and ``spine prune`` keep the
    encodings of records from the last ``keep_runs`` runs only (None: keep every record's
    encoding). People and their keys are kept."""
    attach_probability: float = DEFAULT_ATTACH_PROBABILITY
    """With the model: the match probability a new record's own best pair with a spine
    person's records must reach for the record to take that person's keys (below it the
    record is held apart, :func:`hold_apart`), and its cluster's mean evidence with it; the
    project's own link cut where that is higher. A look-alike new person attaching to one who
    left gives a key to two people; a returning person who fails to attach gets a new key.
    Dice runs attach at their own cut (docs/spine.md, "Attaching to a spine person")."""

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
        if not 0.0 < self.attach_probability < 1.0:
            problems.append("attach_probability must be between 0 and 1 (exclusive)")
        if self.keep_runs is not None and self.keep_runs < 1:
            problems.append("keep_runs must be at least 1 (or unset to keep every record)")
        if problems:
            raise InvalidRequestError("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineEvent:
    """A merge (``people`` became ``kept``), a split (``kept`` lost records to ``people``) or
    a cluster of new records held apart along spine people ``kept`` and ``people``."""

    kind: SpineEventKind
    run_id: str
    kept: int
    people: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordOrigin:
    """Where a batch of spine records came from: one party's upload to one run of a project,
    ``records`` long; a spine record is (origin, position in that upload). Key rotation maps
    a party's re-encoding of the same upload back to its records by this (docs/spine.md)."""

    project_id: str
    party: str
    run_id: str
    records: int
    duplicate_free: bool = False
    """The upload was linked without deduplication: its party declared each record a
    different person, so two spine people holding records of it are different people and no
    later run joins them (:class:`KnownApart`). False for a deduplicated upload and for an
    origin stored before this was kept (nothing known)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Crosswalk:
    """Old link key -> current link key, for the research environment to apply."""

    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpineState:
    """The whole spine: settings; per person (index = person id) its keys by party and
    the id it was merged into (or itself); per record its encoding, person, origin (index
    into ``origins``; -1 for records of a spine written before origins were kept) and
    position in that origin's upload."""

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
    origins: tuple[RecordOrigin, ...] = ()
    record_origin: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    record_position: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )

    def __post_init__(self) -> None:
        records = len(self.record_person)
        if len(self.encodings) != records:
            raise InvalidRequestError("a spine holds one encoding per record")
        if len(self.record_origin) == 0 and records:  # a spine from before origins
            object.__setattr__(self, "record_origin", np.full(records, -1, np.int64))
            object.__setattr__(self, "record_position", np.full(records, -1, np.int64))
        if not len(self.record_origin) == len(self.record_position) == records:
            raise InvalidRequestError("a spine holds one origin and position per record")

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
    """Keys for every record of every upload, the spine after the run and what happened.
    ``linked_records``: the uploads' records whose person has another record, in this run or
    in the spine (what a one-off run counts as linked: records in clusters of two or more).
    ``untrusted_models``: the models of this run that were not trusted and so linked nothing
    (``matching.LinkStatistics.untrusted_models``; ``spine`` for new-vs-spine pairs).
    ``compare``: the blocking figures of both compares (the uploads', then new-vs-spine), as
    a one-off run's report shows them. ``held_apart``: the uploads' own clusters that the
    spine's evidence split along the spine people their records link to (:func:`hold_apart`)."""

    keys: Mapping[str, PartyLinkKeys]
    state: SpineState
    matched_people: int
    new_people: int
    merges: tuple[SpineEvent, ...]
    splits: tuple[SpineEvent, ...]
    comparisons: int
    spine_comparisons: int = 0
    held_apart: tuple[SpineEvent, ...] = ()
    threshold: float = 0.0
    threshold_method: str = ""
    attach_threshold: float = 0.0
    """The cut a new cluster's evidence had to reach to take a spine person's keys (the
    link cut, or with the model the spine's attach probability where that is higher)."""
    linked_records: int = 0
    untrusted_models: tuple[str, ...] = ()
    compare: CompareStatistics = CompareStatistics()


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
    project_id: str = "",
    layout: ClkLayout | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> SpineRunResult:
    """Link ``uploads`` among themselves and against the spine; issue every record one key.
    ``project_id``: the project whose run this is (the records' origin, for key rotation).
    ``layout``: the project's field groups (None: one record-level CLK, scored by Dice); with
    several groups (and ``settings.scoring`` not ``dice``) every comparison is scored by the
    Fellegi-Sunter model, as in a one-off run (module docstring)."""
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
    if layout is not None and layout.total_words != next(iter(widths)):
        raise MatchingError(
            f"the CLKs have {next(iter(widths)) * 64} bits but their layout says "
            f"{layout.total_bits}: the encoding and its layout disagree"
        )
    new = _link_new(state, uploads, settings, layout)
    return _assign(
        state, uploads, new, run_id=run_id, project_id=project_id, random_bytes=random_bytes,
        deduplicated=settings.deduplicated,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class _NewLinks:
    """The new uploads linked among themselves (one cluster id per new record, uploads
    concatenated in order, dense from 0) and against the spine: scored pairs of a new record
    and a spine record, in the units of ``threshold`` (Dice and the Dice cut, or match
    probabilities and the probability cut), a pair never scored counting ``margin`` below it."""

    cluster: npt.NDArray[np.int64]
    party: npt.NDArray[np.int64]  # per new record: its upload's index
    new_record: npt.NDArray[np.int64]
    spine_record: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    threshold: float
    threshold_method: str
    comparisons: int
    spine_comparisons: int
    margin: float = DEFAULT_UNSCORED_MARGIN
    untrusted_models: tuple[str, ...] = ()
    compare: CompareStatistics = CompareStatistics()  # both compares' blocking figures
    attach_threshold: float | None = None
    """The cut a cluster's evidence must reach to take a spine person's keys, in the units of
    ``threshold`` (None: ``threshold``); with the model, the spine's attach probability
    where it is above the link cut (:attr:`SpineSettings.attach_probability`)."""


def _uses_model(settings: matching.MatchSettings, layout: ClkLayout | None) -> bool:
    """Whether a run scores by the Fellegi-Sunter model, as :func:`matching.link` decides."""
    groups = 1 if layout is None else len(layout.groups)
    if settings.scoring is matching.Scoring.FELLEGI_SUNTER and groups < 2:
        raise MatchingError(
            "Fellegi-Sunter scoring needs an encoding of at least two field groups; a single "
            "record-level CLK is scored by Dice"
        )
    return settings.scoring is not matching.Scoring.DICE and groups > 1


def _link_new(
    state: SpineState,
    uploads: Sequence[SpineUpload],
    settings: matching.MatchSettings,
    layout: ClkLayout | None = None,
) -> _NewLinks:
    """Compare only what is new: the uploads among themselves (exactly the one-off run of
    these uploads, so a deduplicated party's own partition is its own as ever) and each new
    record against the spine's records. Spine records are never compared with each other:
    the spine's people are already resolved. With the model (``_uses_model``), new-vs-spine
    pairs are scored as a one-off run scores its pairs: a record-level Dice cut for candidates
    from random pairs, EM on those candidates, each pair's posterior match probability."""
    use_model = _uses_model(settings, layout)
    sizes = [len(upload.clks) for upload in uploads]
    spine_size = len(state.record_person)
    if spine_size and len(uploads) == 1 and uploads[0].party not in settings.deduplicated:
        # One duplicate-free party: every record is its own cluster before the spine.
        labels = np.arange(sizes[0], dtype=np.int64)
        own_threshold, own_label, own_comparisons = 0.0, "", 0
        untrusted: tuple[str, ...] = ()
        own_compare = CompareStatistics()
    else:
        result = matching.link(
            {upload.party: upload.clks for upload in uploads},
            settings,
            layout=layout if use_model else None,
        )
        labels = np.concatenate([result.clusters[upload.party] for upload in uploads])
        own_threshold, own_label = result.threshold, result.threshold_method
        own_comparisons = result.comparisons
        untrusted = result.statistics.untrusted_models
        own_compare = result.statistics.compare
    cluster = np.unique(labels, return_inverse=True)[1].astype(np.int64).reshape(-1)
    party = np.repeat(np.arange(len(uploads), dtype=np.int64), sizes)
    if not spine_size:
        empty = np.zeros(0, np.int64)
        return _NewLinks(
            cluster=cluster, party=party, new_record=empty, spine_record=empty,
            scores=np.zeros(0), threshold=own_threshold, threshold_method=own_label,
            comparisons=own_comparisons, spine_comparisons=0,
            margin=settings.model.match_probability if use_model else DEFAULT_UNSCORED_MARGIN,
            untrusted_models=untrusted, compare=own_compare,
        )  # fmt: skip
    seed = settings.blocking_seed if settings.blocking_seed is not None else secrets.randbits(128)
    new_records = np.concatenate([upload.clks for upload in uploads])
    # The operator's blocking, as matching.link gives a one-off run (the groups only when
    # the pairs are scored per group).
    compare_settings = settings.compare_settings(seed, layout if use_model else None)
    if use_model and layout is not None:
        return _score_against_spine(
            state, new_records, layout, settings, compare_settings, cluster=cluster,
            party=party, own_comparisons=own_comparisons, untrusted=untrusted,
            own_compare=own_compare,
        )  # fmt: skip
    choice = matching.choose_run_threshold(
        [state.encodings, *(upload.clks for upload in uploads)],
        settings,
        seed,
        [True, *(upload.party in settings.deduplicated for upload in uploads)],
    )
    (compared,) = LocalComparer().compare(
        [new_records, state.encodings], [(0, 1)], [choice.threshold], compare_settings
    )
    return _NewLinks(
        cluster=cluster,
        party=party,
        new_record=compared.pairs.left.astype(np.int64),
        spine_record=compared.pairs.right.astype(np.int64),
        scores=compared.pairs.scores.astype(np.float64),
        threshold=choice.threshold,
        threshold_method=choice.label,
        comparisons=own_comparisons + compared.statistics.comparisons,
        spine_comparisons=compared.statistics.comparisons,
        untrusted_models=untrusted,
        compare=own_compare + compared.statistics,
    )


def _score_against_spine(
    state: SpineState,
    new_records: npt.NDArray[np.uint64],
    layout: ClkLayout,
    settings: matching.MatchSettings,
    compare_settings: CompareSettings,
    *,
    cluster: npt.NDArray[np.int64],
    party: npt.NDArray[np.int64],
    own_comparisons: int,
    untrusted: tuple[str, ...],
    own_compare: CompareStatistics,
) -> _NewLinks:
    """New-vs-spine pairs scored by the model: candidates above the record-level Dice cut
    (the operator's ``threshold``, else chosen from random new-vs-spine pairs), EM trained on
    them, each pair's posterior match probability; the link cut is the operator's match
    probability, a pair never scored counting as probability 0 (margin = the cut), as a
    one-off run's clustering counts it. Both sides may hold several records of one person
    (the spine's people have a record per party and release; the new uploads may be several
    parties or deduplicated), so no pair is conditioned on its records' other candidates."""
    probability = settings.model.match_probability
    if not len(new_records):  # an empty upload: nothing to train on, nothing to link
        empty = np.zeros(0, np.int64)
        return _NewLinks(
            cluster=cluster, party=party, new_record=empty, spine_record=empty,
            scores=np.zeros(0), threshold=probability,
            threshold_method=str(ThresholdMethod.FELLEGI_SUNTER), comparisons=own_comparisons,
            spine_comparisons=0, margin=probability, untrusted_models=untrusted,
            compare=own_compare,
        )  # fmt: skip
    arrays = [new_records, state.encodings]
    scorer = Scorer(
        arrays, layout, [(0, 1)], settings.model, seed=compare_settings.seed,
        workers=settings.workers,
    )  # fmt: skip
    if settings.threshold is not None:
        cut, rule = settings.threshold, None
    else:
        chosen = scorer.candidate_cut()
        cut, rule = chosen.threshold, chosen.join_rule
    (compared,) = LocalComparer().compare(
        arrays, [(0, 1)], [cut], compare_settings, join_rules=[rule]
    )
    scored = scorer.score([compared.pairs], deduplicated=[True, True], cut=cut)
    if not scored.model.trusted:  # look-alikes on one group: no new record is a spine person
        scored = scored.distrusted()
        untrusted = (*untrusted, SPINE_PARTY)
    pairs = scored.party_pairs[0].pairs
    return _NewLinks(
        cluster=cluster,
        party=party,
        new_record=pairs.left.astype(np.int64),
        spine_record=pairs.right.astype(np.int64),
        scores=probability_of_weight(pairs.scores.astype(np.float64)),
        threshold=probability,
        threshold_method=str(ThresholdMethod.FELLEGI_SUNTER),
        comparisons=own_comparisons + compared.statistics.comparisons,
        spine_comparisons=compared.statistics.comparisons,
        margin=probability,
        untrusted_models=untrusted,
        compare=own_compare + compared.statistics,
        attach_threshold=max(probability, state.settings.attach_probability),
    )


class _Components:
    """Union-find over nodes (new clusters, spine people), each component carrying the set
    of new uploads whose records it holds (as bits): at most one cluster of each upload's
    party per person, as in the clustering's stage 2."""

    def __init__(self) -> None:
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}
        self.mask: dict[tuple[str, int], int] = {}

    def add(self, node: tuple[str, int], mask: int) -> None:
        self.parent.setdefault(node, node)
        self.mask.setdefault(node, mask)

    def find(self, node: tuple[str, int]) -> tuple[str, int]:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def join(self, one: tuple[str, int], other: tuple[str, int]) -> bool:
        """Join the two nodes' components unless they hold records of one upload."""
        a, b = self.find(one), self.find(other)
        if a == b:
            return True
        if self.mask[a] & self.mask[b]:
            return False
        keep, gone = min(a, b), max(a, b)
        self.parent[gone] = keep
        self.mask[keep] |= self.mask.pop(gone)
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkMeans:
    """Every (new cluster, spine person) pair with at least one scored record pair, and its
    evidence: the mean over the cluster's records of each record's best ``score - cut``
    against any of the person's records (a record with no scored pair with the person
    counting ``margin`` below the cut). A link may be made where it is at least zero."""

    cluster: npt.NDArray[np.int64]
    person: npt.NDArray[np.int64]
    mean: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordLinks:
    """Every (new record, spine person) pair with at least one scored record pair, and the
    new record's best score against any of the person's records. Sorted by (record, person)."""

    record: npt.NDArray[np.int64]
    person: npt.NDArray[np.int64]
    best: npt.NDArray[np.float64]


def record_links(
    spine_person: npt.NDArray[np.int64],
    pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]],
) -> RecordLinks:
    """Each new record's best scored pair with each spine person (``pairs``: new record,
    spine record, score; ``spine_person[j]`` is spine record j's person)."""
    new_record, spine_record, scores = pairs
    width = max(int(spine_person.max()) + 1 if len(spine_person) else 1, 1)
    record_keys = new_record * width + spine_person[spine_record]
    unique, inverse = np.unique(record_keys, return_inverse=True)
    best = np.full(len(unique), -np.inf)
    np.maximum.at(best, inverse.reshape(-1), scores)
    return RecordLinks(record=unique // width, person=unique % width, best=best)


def link_means(
    new_cluster: npt.NDArray[np.int64],
    spine_person: npt.NDArray[np.int64],
    pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]],
    *,
    cut: float,
    margin: float,
) -> LinkMeans:
    """The attach step's evidence (fast path: one pass over the scored pairs). ``pairs``:
    new record, spine record, score; ``new_cluster[i]`` is new record i's cluster and
    ``spine_person[j]`` spine record j's person. Sorted by (cluster, person).

    Each new record counts once, by its best pair with the person: a person who has gathered
    records that disagree with each other (several parties, releases, spellings) is the
    person of each of them, so those others must not outvote an exact copy of one of them
    (the mean over every record pair did, an unscored pair counting probability 0)."""
    cluster_records = np.bincount(new_cluster, minlength=1).astype(np.int64)
    links = record_links(spine_person, pairs)
    width = max(int(spine_person.max()) + 1 if len(spine_person) else 1, 1)
    keys = new_cluster[links.record] * width + links.person
    unique, where = np.unique(keys, return_inverse=True)
    where = where.reshape(-1)
    total = np.bincount(where, weights=links.best - cut, minlength=len(unique)).astype(np.float64)
    count = np.bincount(where, minlength=len(unique)).astype(np.int64)
    cluster, person = unique // width, unique % width
    size = cluster_records[cluster]
    mean: npt.NDArray[np.float64] = (total - margin * (size - count)) / size
    return LinkMeans(cluster=cluster, person=person, mean=mean)


def reference_link_means(
    new_cluster: npt.NDArray[np.int64],
    spine_person: npt.NDArray[np.int64],
    pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]],
    *,
    cut: float,
    margin: float,
) -> dict[tuple[int, int], float]:
    """The slow, obvious twin of :func:`link_means`: for each (cluster, person) with a
    scored pair, average over the cluster's records each one's best scored pair with the
    person's records (``cut - margin`` where it has none)."""
    score = {
        (int(a), int(b)): float(value)
        for a, b, value in zip(pairs[0].tolist(), pairs[1].tolist(), pairs[2].tolist(), strict=True)
    }
    means: dict[tuple[int, int], float] = {}
    for a, b in score:
        key = (int(new_cluster[a]), int(spine_person[b]))
        if key in means:
            continue
        ones = [i for i in range(len(new_cluster)) if new_cluster[i] == key[0]]
        others = [j for j in range(len(spine_person)) if spine_person[j] == key[1]]
        best = [max((score[i, j] for j in others if (i, j) in score), default=None) for i in ones]
        total = sum(cut - margin if value is None else value for value in best) - cut * len(ones)
        means[key] = total / len(ones)
    return means


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownApart:
    """Spine people known to be different people: each (person, upload) pair a person holding
    a record of a duplicate-free upload (one linked without deduplication: its party declared
    each record a different person, :attr:`RecordOrigin.duplicate_free`). Two people paired
    with one upload are different people, and no run may join them."""

    person: npt.NDArray[np.int64]
    upload: npt.NDArray[np.int64]

    @staticmethod
    def none() -> KnownApart:
        """No two people known apart."""
        return KnownApart(person=np.zeros(0, np.int64), upload=np.zeros(0, np.int64))

    @staticmethod
    def of(state: SpineState, person: npt.NDArray[np.int64]) -> KnownApart:
        """The pairs of ``state``'s records (``person``: each record's current person)."""
        free = np.array([origin.duplicate_free for origin in state.origins] + [False], bool)
        # -1 (a record from before origins were kept) indexes the trailing False.
        rows = np.flatnonzero(free[state.record_origin])
        pairs = np.unique(np.stack([person[rows], state.record_origin[rows]]), axis=1)
        return KnownApart(person=pairs[0].astype(np.int64), upload=pairs[1].astype(np.int64))


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldApart:
    """The new clusters after :func:`hold_apart` (dense ids from 0, in order of the original
    cluster, then the part's spine person, the unanchored records' part last), and per
    cluster held apart the spine person of each of its parts, ascending: a group's lowest
    person, or in a group of people known apart, the best person of the part's records."""

    cluster: npt.NDArray[np.int64]
    people: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CrossParty:
    """What lets :func:`hold_apart` keep a record with its cluster below its cut: each new
    record's upload, the lower cut (the link cut), and each (spine person, new upload) pair
    where the person holds a spine record of that upload's party (a record of the upload is
    then the party's own re-extract of the person, not a new entrant to its data)."""

    upload: npt.NDArray[np.int64]
    cut: float
    returning_person: npt.NDArray[np.int64]
    returning_upload: npt.NDArray[np.int64]

    @staticmethod
    def of(
        state: SpineState,
        person: npt.NDArray[np.int64],
        parties: Sequence[str],
        upload: npt.NDArray[np.int64],
        cut: float,
    ) -> CrossParty:
        """From ``state``'s records (``person``: each record's current person; a record
        from before origins were kept has no known party and counts for none), the new
        uploads' parties in upload order, and each new record's upload."""
        pairs = [np.zeros((2, 0), np.int64)]
        for index, party in enumerate(parties):
            # -1 (a record from before origins were kept) indexes the trailing False.
            of_party = np.array([origin.party == party for origin in state.origins] + [False])
            rows = np.flatnonzero(of_party[state.record_origin])
            pairs.append(np.stack([person[rows], np.full(len(rows), index, np.int64)]))
        both = np.unique(np.concatenate(pairs, axis=1), axis=1)
        return CrossParty(
            upload=upload, cut=cut, returning_person=both[0].astype(np.int64),
            returning_upload=both[1].astype(np.int64),
        )  # fmt: skip


def _cross_party_records(
    new_cluster: npt.NDArray[np.int64], upload: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Per new record: whether its cluster holds other records and none of its own upload,
    so that only links across parties join it to them (a duplicate-free upload's record in
    a one-off run's cluster), not a deduplication's join of two records of one upload."""
    if not len(new_cluster):
        return np.zeros(0, dtype=bool)
    uploads = int(upload.max()) + 1
    size = np.bincount(new_cluster)
    _, where, same = np.unique(
        new_cluster * uploads + upload, return_inverse=True, return_counts=True
    )
    cross: npt.NDArray[np.bool_] = (size[new_cluster] > 1) & (same[where.reshape(-1)] == 1)
    return cross


def hold_apart(
    new_cluster: npt.NDArray[np.int64],
    links: RecordLinks,
    *,
    cut: float,
    known_apart: KnownApart | None = None,
    cross_party: CrossParty | None = None,
) -> HeldApart:
    """The spine's evidence over the uploads' own links (fast path). A new record *links* to
    a spine person where its best pair with the person's records is at least ``cut``. Within
    a cluster of new records, the linking records and the people they link to form groups
    (connected: records linking to a common person, through the cluster's records); a record
    linking to no one is *unanchored*, whatever its pairs below the cut (a sub-cut pair is
    not a link: the cluster's mean would otherwise carry it on another record's link). A
    cluster of two or more groups joins spine people that no record of it links to
    together, and a cluster with a group and an unanchored record joins a record to a
    person none of its own pairs links it to: in both only the uploads' own linkage joins
    them, against the records' direct pairs with the spine.
    It is split: each group a cluster of its own (which then takes its people's keys by its
    own evidence), the unanchored records one more. A group holding two people
    ``known_apart`` (different people by a duplicate-free upload) is regrouped by each of its
    records' best person (highest best pair; the lower person on a tie): nothing may join
    them. A cluster of one part and no unanchored record (one person, or people a record of
    it bridges: a merge) or of none is kept whole.

    With ``cross_party``: a record linking to no one whose cluster holds other records, none
    of its own upload (only the run's links across parties join it to them), is not
    unanchored where its best pair with a person a group of its cluster links to, and who
    holds a record of its party, is at least ``cross_party.cut``: it stays with that group
    (its highest such pair, the lower person on a tie; of the groups holding a record linking
    to the person, the lowest). It never joins people nor names a group. A record alone, or
    with another of its own upload (a deduplication's join), or new to its party's records
    of the person, still needs ``cut``."""
    records = len(new_cluster)
    linking = links.best >= cut
    record, person = links.record[linking], links.person[linking]
    # Nodes: the records 0..records-1, then each (cluster, person) a record of the cluster
    # links to. Components by label propagation: every node takes the lowest label across
    # its edges, then its label's label, until nothing changes.
    spine_people = int(person.max()) + 1 if len(person) else 1
    pair_key, pair_node = np.unique(
        new_cluster[record] * spine_people + person, return_inverse=True
    )
    left, right = record, records + pair_node.reshape(-1)
    label = np.arange(records + len(pair_key), dtype=np.int64)
    while True:
        before = label
        low = np.minimum(label[left], label[right])
        label = label.copy()
        np.minimum.at(label, left, low)
        np.minimum.at(label, right, low)
        label = label[label]
        if np.array_equal(label, before):
            break
    # Each component's lowest spine person names it.
    lowest = np.full(records + len(pair_key), spine_people, dtype=np.int64)
    np.minimum.at(lowest, label[records:], pair_key % spine_people)
    group = np.full(records, -1, dtype=np.int64)
    linked = np.zeros(records, dtype=bool)
    linked[record] = True
    group[linked] = lowest[label[:records][linked]]
    if known_apart is not None and len(known_apart.person) and len(pair_key):
        # Components holding two people of one duplicate-free upload: each (component,
        # upload) of their people's pairs, counted (a component holds each person once).
        order = np.argsort(known_apart.person, kind="stable")
        ka_person, ka_upload = known_apart.person[order], known_apart.upload[order]
        node_person = pair_key % spine_people
        begin = np.searchsorted(ka_person, node_person, side="left")
        count = np.searchsorted(ka_person, node_person, side="right") - begin
        node = np.repeat(np.arange(len(pair_key)), count)
        offset = np.arange(len(node)) - np.repeat(np.cumsum(count) - count, count)
        uploads = ka_upload[np.repeat(begin, count) + offset]
        component = label[records + node]
        pairs, times = np.unique(np.stack([component, uploads]), axis=1, return_counts=True)
        apart = np.zeros(records + len(pair_key), dtype=bool)
        apart[pairs[0, times > 1]] = True
        regroup = linked & apart[label[:records]]
        if regroup.any():
            # Each record's best person: highest best pair at the cut, then lowest person.
            by = np.lexsort((person, -links.best[linking], record))
            first = np.ones(len(by), dtype=bool)
            first[1:] = record[by][1:] != record[by][:-1]
            best_person = np.full(records, -1, dtype=np.int64)
            best_person[record[by][first]] = person[by][first]
            group[regroup] = best_person[regroup]
    if cross_party is not None and len(pair_key):
        # Records joined across parties only and linking to no one: each stays with the
        # group of its best pair at the lower cut with a person its cluster's groups hold
        # and who holds a record of its party.
        node_group = np.full(len(pair_key), spine_people, dtype=np.int64)
        np.minimum.at(node_group, pair_node.reshape(-1), group[record])
        upload = cross_party.upload
        width = int(max(upload.max(), cross_party.returning_upload.max(initial=0))) + 1
        weak = (
            _cross_party_records(new_cluster, upload)[links.record]
            & ~linked[links.record]
            & (links.best >= cross_party.cut)
            & (links.person < spine_people)
            & np.isin(
                links.person * width + upload[links.record],
                cross_party.returning_person * width + cross_party.returning_upload,
            )
        )
        weak_record, weak_person = links.record[weak], links.person[weak]
        at = np.searchsorted(pair_key, new_cluster[weak_record] * spine_people + weak_person)
        at = np.minimum(at, len(pair_key) - 1)
        joins = pair_key[at] == new_cluster[weak_record] * spine_people + weak_person
        weak_record, weak_person, at = weak_record[joins], weak_person[joins], at[joins]
        by = np.lexsort((weak_person, -links.best[weak][joins], weak_record))
        first = np.ones(len(by), dtype=bool)
        first[1:] = weak_record[by][1:] != weak_record[by][:-1]
        group[weak_record[by][first]] = node_group[at[by][first]]
    clusters = int(new_cluster.max()) + 1 if records else 0
    named = np.unique(np.stack([new_cluster[linked], group[linked]]), axis=1)
    groups = np.bincount(named[0], minlength=clusters)
    unanchored = np.bincount(new_cluster[group < 0], minlength=clusters)
    split = (groups >= 2) | ((groups >= 1) & (unanchored >= 1))
    # A record's part: its group in a split cluster (no group: after every person), the
    # whole cluster otherwise.
    part = np.where(split[new_cluster], np.where(group >= 0, group, spine_people), 0)
    _, dense = np.unique(new_cluster * (spine_people + 1) + part, return_inverse=True)
    chosen = named[:, split[named[0]]]  # sorted by (cluster, group)
    bounds = np.flatnonzero(np.diff(chosen[0])) + 1
    held = (
        tuple(tuple(part.tolist()) for part in np.split(chosen[1], bounds)) if chosen.size else ()
    )
    return HeldApart(cluster=dense.reshape(-1).astype(np.int64), people=held)


def reference_hold_apart(
    new_cluster: npt.NDArray[np.int64],
    links: RecordLinks,
    *,
    cut: float,
    known_apart: KnownApart | None = None,
    cross_party: CrossParty | None = None,
) -> HeldApart:
    """The slow, obvious twin of :func:`hold_apart`: per cluster, grow each group from a
    linking record by the people it links to and the cluster's records linking to them; every
    other record is unanchored. A group with two people of one duplicate-free upload is
    parted by each record's best person. An unanchored record whose cluster's other records
    are all of other uploads joins the lowest group holding a record linking to the person
    of its best pair at ``cross_party.cut`` among the people its cluster's groups link to and
    who hold a record of its party."""

    def across_only(r: int, upload: npt.NDArray[np.int64]) -> bool:
        mates = [o for o in range(len(new_cluster)) if new_cluster[o] == new_cluster[r] and o != r]
        return bool(mates) and all(upload[o] != upload[r] for o in mates)

    linked: dict[int, dict[int, float]] = {}
    scored: dict[int, dict[int, float]] = {}
    for r, p, best in zip(
        links.record.tolist(), links.person.tolist(), links.best.tolist(), strict=True
    ):
        scored.setdefault(r, {})[p] = best
        if best >= cut:
            linked.setdefault(r, {})[p] = best
    uploads_of: dict[int, set[int]] = {}
    if known_apart is not None:
        for p, u in zip(known_apart.person.tolist(), known_apart.upload.tolist(), strict=True):
            uploads_of.setdefault(p, set()).add(u)
    parts: list[tuple[int, int, list[int]]] = []  # (cluster, part key, records)
    held: list[tuple[int, ...]] = []
    for c in sorted(set(new_cluster.tolist())):
        members = [r for r in range(len(new_cluster)) if new_cluster[r] == c]
        groups: list[tuple[set[int], list[int]]] = []
        for r in (r for r in members if r in linked):
            people, rows = set(linked[r]), [r]
            for other in [g for g in groups if g[0] & people]:
                groups.remove(other)
                people |= other[0]
                rows += other[1]
            groups.append((people, rows))
        named: list[tuple[int, list[int]]] = []
        for people, rows in groups:
            apart = any(
                uploads_of.get(a, set()) & uploads_of.get(b, set())
                for a in people
                for b in people
                if a < b
            )
            if not apart:
                named.append((min(people), rows))
                continue
            by_best: dict[int, list[int]] = {}
            for r in rows:
                best = max(linked[r].items(), key=lambda item: (item[1], -item[0]))[0]
                by_best.setdefault(best, []).append(r)
            named += list(by_best.items())
        unanchored = [r for r in members if r not in linked]
        if cross_party is not None:
            upload = cross_party.upload
            returning = set(
                zip(
                    cross_party.returning_person.tolist(),
                    cross_party.returning_upload.tolist(),
                    strict=True,
                )
            )
            # Each group's people, as its records link to them (before any record joins).
            reach = [(name, {p for row in rows for p in linked[row]}) for name, rows in named]
            rows_of = dict(named)
            for r in [r for r in unanchored if across_only(r, upload)]:
                candidates = [
                    (best, -p) for p, best in scored.get(r, {}).items()
                    if best >= cross_party.cut and (p, int(upload[r])) in returning
                    and any(p in people for _, people in reach)
                ]  # fmt: skip
                if not candidates:
                    continue
                person = -max(candidates)[1]
                rows_of[min(name for name, people in reach if person in people)].append(r)
                unanchored.remove(r)
        if not named or (len(named) == 1 and not unanchored):
            parts.append((c, 0, members))
            continue
        held.append(tuple(sorted(name for name, _ in named)))
        for name, rows in named:
            parts.append((c, name, rows))
        if unanchored:
            parts.append((c, 2**62, unanchored))
    out = np.zeros(len(new_cluster), dtype=np.int64)
    for index, (_, _, rows) in enumerate(sorted(parts, key=lambda item: item[:2])):
        out[rows] = index
    return HeldApart(cluster=out, people=tuple(held))


def _assign(
    state: SpineState,
    uploads: Sequence[SpineUpload],
    new: _NewLinks,
    *,
    run_id: str,
    project_id: str,
    random_bytes: RandomBytes,
    deduplicated: frozenset[str] = frozenset(),
) -> SpineRunResult:
    """New clusters -> spine people, by each new record's best pair with the person, averaged
    over the cluster (:func:`link_means`; a record never scored against the person counts
    ``margin`` below the cut), after the spine's evidence has held apart the clusters that
    only the uploads' own linkage joined across spine people (:func:`hold_apart`)."""
    margin = new.margin
    cut = new.threshold
    roots = np.array(state.merged_into, dtype=np.int64)
    while len(roots) and not np.array_equal(roots[roots], roots):
        roots = roots[roots]  # pointer jumping: every person -> the person it now is
    current = roots[state.record_person] if len(state.record_person) else roots[:0]
    known_apart = KnownApart.of(state, current)
    # The attach cut: the link cut, or with the model the spine's attach probability above
    # it. A record reaches a spine person by its own pair at the attach cut (below it, held
    # apart as a record linking to no one), unless only cross-party links join it to its
    # cluster: it stays with its cluster's group where its pair with the group's person is
    # at least the link cut, the other party's record vouching for it (a deduplication's
    # join does not: in a release deduplicated alone it joined new people to returning
    # ones). A cluster takes the person on its mean evidence from the attach cut, every
    # record's (a vouched record's sub-attach pair counts against it), a record never
    # scored against the person still counting ``margin`` below the link cut.
    attach = cut if new.attach_threshold is None else max(cut, new.attach_threshold)
    apart = hold_apart(
        new.cluster,
        record_links(current, (new.new_record, new.spine_record, new.scores)),
        cut=attach,
        known_apart=known_apart,
        cross_party=CrossParty.of(
            state, current, [upload.party for upload in uploads], new.party, cut
        ),
    )
    new = replace(new, cluster=apart.cluster)
    held_apart = tuple(
        SpineEvent(kind=SpineEventKind.HELD_APART, run_id=run_id, kept=people[0], people=people[1:])
        for people in apart.people
    )
    person_records = np.bincount(current, minlength=len(roots)).astype(np.int64)
    clusters = int(new.cluster.max()) + 1 if len(new.cluster) else 0
    cluster_records = np.bincount(new.cluster, minlength=clusters).astype(np.int64)
    cluster_mask = [0] * clusters
    for c, upload_index in zip(new.cluster.tolist(), new.party.tolist(), strict=True):
        cluster_mask[c] |= 1 << upload_index
    pair_cluster = new.cluster[new.new_record]
    components = _Components()
    for c in range(clusters):
        components.add(("c", c), cluster_mask[c])
    # A person's duplicate-free uploads, as bits after the new uploads': two people holding
    # records of one such upload are different people, and the join refuses them as it
    # refuses two clusters of one upload.
    person_mask: dict[int, int] = {}
    for person, origin in zip(
        known_apart.person.tolist(), known_apart.upload.tolist(), strict=True
    ):
        person_mask[person] = person_mask.get(person, 0) | 1 << (len(uploads) + origin)
    # Candidate (cluster, person) links whose mean evidence is at least zero, best first.
    means = link_means(
        new.cluster, current, (new.new_record, new.spine_record, new.scores), cut=attach,
        margin=margin + attach - cut,
    )  # fmt: skip
    link_cluster, link_person, mean = means.cluster, means.person, means.mean
    rejected: list[tuple[int, int]] = []
    for index in np.lexsort((link_person, link_cluster, -mean)).tolist():
        if mean[index] < 0:
            continue
        c, person = int(link_cluster[index]), int(link_person[index])
        components.add(("p", person), person_mask.get(person, 0))
        if not components.join(("c", c), ("p", person)):
            rejected.append((c, person))
    members: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for node in list(components.parent):
        members.setdefault(components.find(node), []).append(node)
    people_of = {
        root: sorted(number for kind, number in nodes if kind == "p")
        for root, nodes in members.items()
    }
    # Splits: a person's link lost to another component of new records that holds none of
    # the spine's people, and some of the person's records are on average close to those new
    # records and not to the ones that kept the person: those records are another person.
    spine_people = current.copy()
    split_from: dict[tuple[str, int], tuple[int, npt.NDArray[np.int64]]] = {}
    for c, person in rejected:
        root = components.find(("c", c))
        if people_of[root] or root in split_from:
            continue
        kept_clusters = {n for kind, n in members[components.find(("p", person))] if kind == "c"}
        lost_clusters = {n for kind, n in members[root] if kind == "c"}
        moved = _split_records(
            new, current, pair_cluster, person, kept_clusters, lost_clusters,
            cluster_records, cut, margin,
        )  # fmt: skip
        if 0 < len(moved) < person_records[person]:
            split_from[root] = (person, moved)
    merges: list[SpineEvent] = []
    merged_into = list(state.merged_into)
    for _root, people in sorted(people_of.items()):
        if len(people) > 1:
            merges.append(
                SpineEvent(
                    kind=SpineEventKind.MERGE, run_id=run_id, kept=people[0],
                    people=tuple(people[1:]),
                )
            )  # fmt: skip
    merged_people = sum(len(event.people) for event in merges)
    if merged_people > state.settings.max_merge_share * max(state.person_count, 1):
        raise PreconditionError(
            f"this run would merge {merged_people} of the {state.person_count} people of spine "
            f"{state.settings.name!r}, more than its max_merge_share "
            f"{state.settings.max_merge_share}; no key was issued. Check the parties' "
            "linkage secret and extracts"
        )
    for event in merges:
        for person in event.people:
            merged_into[person] = event.kept
    person_keys = [dict(keys) for keys in state.person_keys]
    root_person: dict[tuple[str, int], int] = {}
    splits: list[SpineEvent] = []
    new_people = 0
    for root in sorted(members):
        if not any(kind == "c" for kind, _ in members[root]):
            continue
        if people_of[root]:
            root_person[root] = people_of[root][0]
            continue
        person = len(person_keys)
        person_keys.append({})
        merged_into.append(person)
        root_person[root] = person
        new_people += 1
        if root in split_from:
            origin, moved = split_from[root]
            spine_people[moved] = person
            splits.append(
                SpineEvent(kind=SpineEventKind.SPLIT, run_id=run_id, kept=origin, people=(person,))
            )
    cluster_person = np.array(
        [root_person[components.find(("c", c))] for c in range(clusters)], dtype=np.int64
    )
    mode = state.settings.link_key_mode
    keys_by_party: dict[str, PartyLinkKeys] = {}
    added_people: list[npt.NDArray[np.int64]] = []
    offset = 0
    for upload in uploads:
        record_people = cluster_person[new.cluster[offset : offset + len(upload.clks)]]
        offset += len(upload.clks)
        slot = SHARED_KEY if mode is LinkKeyMode.SHARED else upload.party
        missing = [
            person
            for person in np.unique(record_people).tolist()
            if slot not in person_keys[person]
        ]
        for person, key in zip(missing, fresh_keys(len(missing), random_bytes), strict=True):
            person_keys[person][slot] = key
        seed = int.from_bytes(random_bytes(32), "little")
        order = np.random.default_rng(seed).permutation(len(record_people))
        positions = [int(position) for position in order]
        link_keys = [person_keys[int(record_people[p])][slot] for p in positions]
        keys_by_party[upload.party] = PartyLinkKeys(
            positions=positions,
            link_keys=link_keys,
            keys_sha256=link_keys_digest(positions, link_keys),
        )
        added_people.append(record_people)
    width_words = uploads[0].clks.shape[1]
    old = state.encodings if len(state.record_person) else np.zeros((0, width_words), np.uint64)
    spine_settings = state.settings
    if spine_settings.kcv is None:
        spine_settings = replace(spine_settings, kcv=uploads[0].kcv)
    origins = tuple(
        RecordOrigin(
            project_id=project_id,
            party=upload.party,
            run_id=run_id,
            records=len(upload.clks),
            duplicate_free=upload.party not in deduplicated,
        )  # fmt: skip
        for upload in uploads
    )
    first_origin = len(state.origins)
    new_state = SpineState(
        settings=spine_settings,
        person_keys=tuple(person_keys),
        merged_into=tuple(merged_into),
        encodings=np.concatenate([old, *(upload.clks for upload in uploads)]).astype(np.uint64),
        record_person=np.concatenate([spine_people, *added_people]).astype(np.int64),
        events=state.events + tuple(merges) + tuple(splits) + held_apart,
        runs=(*state.runs, run_id),
        origins=state.origins + origins,
        record_origin=np.concatenate(
            [state.record_origin]
            + [
                np.full(len(upload.clks), first_origin + k, np.int64)
                for k, upload in enumerate(uploads)
            ]
        ),
        record_position=np.concatenate(
            [state.record_position]
            + [np.arange(len(upload.clks), dtype=np.int64) for upload in uploads]
        ),
    )
    matched = sum(1 for root in root_person if people_of[root])
    after = np.array(merged_into, dtype=np.int64)
    while not np.array_equal(after[after], after):
        after = after[after]
    record_root = after[new_state.record_person]
    records_of = np.bincount(record_root, minlength=len(after))
    linked_records = int((records_of[record_root[len(spine_people) :]] > 1).sum())
    return SpineRunResult(
        keys=keys_by_party,
        state=new_state,
        matched_people=matched,
        new_people=new_people,
        merges=tuple(merges),
        splits=tuple(splits),
        held_apart=held_apart,
        comparisons=new.comparisons,
        spine_comparisons=new.spine_comparisons,
        threshold=new.threshold,
        threshold_method=new.threshold_method,
        attach_threshold=attach,
        linked_records=linked_records,
        untrusted_models=new.untrusted_models,
        compare=new.compare,
    )


def _split_records(
    new: _NewLinks,
    current: npt.NDArray[np.int64],
    pair_cluster: npt.NDArray[np.int64],
    person: int,
    kept_clusters: set[int],
    lost_clusters: set[int],
    cluster_records: npt.NDArray[np.int64],
    cut: float,
    margin: float,
) -> npt.NDArray[np.int64]:
    """The spine records of ``person`` on average close to the ``lost`` clusters' new records
    (evidence at least zero) and not to the ``kept`` ones' (below zero)."""
    records = np.flatnonzero(current == person)
    of_person = np.isin(new.spine_record, records)
    spine_record = new.spine_record[of_person]
    scores = new.scores[of_person]
    clusters = pair_cluster[of_person]

    def evidence(chosen: set[int]) -> npt.NDArray[np.float64]:
        inside = np.isin(clusters, np.array(sorted(chosen), dtype=np.int64))
        size = int(cluster_records[sorted(chosen)].sum()) if chosen else 0
        total = np.zeros(len(records))
        count = np.zeros(len(records))
        where = np.searchsorted(records, spine_record[inside])
        np.add.at(total, where, scores[inside] - cut)
        np.add.at(count, where, 1)
        result: npt.NDArray[np.float64] = total - margin * (size - count)
        return result

    moved = (evidence(lost_clusters) >= 0) & (evidence(kept_clusters) < 0)
    return records[moved]


# -- key rotation and retention ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reencoding:
    """One party's re-encoding, under the new linkage secret, of its upload to an earlier run
    of a spine project: the same records at the same positions (``encode --same-positions``)."""

    project_id: str
    party: str
    schema_fingerprint: str
    kcv: str
    clks: npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rotation:
    """A rotated spine and what the rotation did."""

    state: SpineState
    old_kcv: str
    new_kcv: str
    records: int


def rotate_spine(state: SpineState, reencodings: Sequence[Reencoding]) -> Rotation:
    """Rebind the spine to a new linkage secret: every record it holds gets its party's new
    encoding of the same record (same upload, same position); people, keys, merges and
    splits are untouched, so every person keeps its link keys. All or nothing: any missing,
    surplus or mismatched re-encoding refuses the rotation and the spine is unchanged."""
    settings = state.settings
    if settings.kcv is None:
        raise PreconditionError(
            f"spine {settings.name!r} has had no run, so no secret to rotate from; its first "
            "run binds whatever secret the parties use"
        )
    if len(state.record_origin) and int(state.record_origin.min()) < 0:
        raise PreconditionError(
            f"spine {settings.name!r} holds records from before record origins were kept; they "
            "cannot be matched to re-encodings, so it cannot be rotated (relink it instead)"
        )
    kcvs = {item.kcv for item in reencodings}
    if len(kcvs) != 1:
        raise CompatibilityError(
            "a rotation's re-encodings must all be under one new linkage secret (one KCV)",
            party=reencodings[0].party if reencodings else "",
            aspect=CheckAspect.KCV,
        )
    (new_kcv,) = kcvs
    if new_kcv == settings.kcv:
        raise CompatibilityError(
            f"the re-encodings are under spine {settings.name!r}'s current secret; a rotation "
            "needs every party to re-encode under the new one",
            party=reencodings[0].party,
            aspect=CheckAspect.KCV,
        )
    # Origins still holding records, by upload (a run resumed after a crash can have added
    # one upload's records twice: both map to the one re-encoding).
    needed: dict[tuple[str, str], list[int]] = {}
    for index in np.unique(state.record_origin).tolist():
        origin = state.origins[index]
        needed.setdefault((origin.project_id, origin.party), []).append(index)
    given: dict[tuple[str, str], Reencoding] = {}
    for item in reencodings:
        where = (item.project_id, item.party)
        if where in given:
            raise InvalidRequestError(
                f"two re-encodings of party {item.party!r}'s upload to project {item.project_id!r}"
            )
        given[where] = item
    surplus = sorted(set(given) - set(needed))
    missing = sorted(set(needed) - set(given))
    if surplus or missing:
        raise PreconditionError(
            "a rotation needs exactly one re-encoding of each upload whose records spine "
            f"{settings.name!r} still holds; missing: "
            + (", ".join(f"{party}@{project}" for project, party in missing) or "none")
            + "; not held: "
            + (", ".join(f"{party}@{project}" for project, party in surplus) or "none")
        )
    encodings = state.encodings.copy()
    for where, index in ((where, index) for where, indices in needed.items() for index in indices):
        item, origin = given[where], state.origins[index]
        if item.schema_fingerprint != settings.schema_fingerprint:
            raise CompatibilityError(
                f"party {item.party!r} re-encoded under another schema than spine {settings.name!r}",
                party=item.party,
                aspect=CheckAspect.SCHEMA_FINGERPRINT,
            )
        if len(item.clks) != origin.records or item.clks.shape[1] != encodings.shape[1]:
            raise CompatibilityError(
                f"party {item.party!r}'s re-encoding of its upload to project "
                f"{item.project_id!r} holds {len(item.clks)} records of "
                f"{item.clks.shape[1] * 64} bits; the upload held {origin.records} of "
                f"{encodings.shape[1] * 64}: re-encode the same extract with --same-positions",
                party=item.party,
                aspect=CheckAspect.CLK_BITS,
            )
        rows = np.flatnonzero(state.record_origin == index)
        encodings[rows] = item.clks[state.record_position[rows]]
    rotated = replace(state, settings=replace(settings, kcv=new_kcv), encodings=encodings)
    return Rotation(
        state=rotated, old_kcv=settings.kcv, new_kcv=new_kcv, records=len(state.record_person)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pruning:
    """A pruned spine and what retention removed."""

    state: SpineState
    removed: int
    kept: int
    people_without_records: int


def prune_spine(state: SpineState, keep_runs: int) -> Pruning:
    """Retention: remove the encodings of records from all but the last ``keep_runs`` runs
    (with their origin and position), keeping every person, key, merge and split. A person
    left with no record can no longer be matched: a returning person then gets a new key.
    Records from before origins were kept cannot be dated and are kept."""
    if keep_runs < 1:
        raise InvalidRequestError("keep_runs must be at least 1")
    recent = set(list(dict.fromkeys(state.runs))[-keep_runs:])  # a resumed run counts once
    old_origins = np.array(
        [index for index, origin in enumerate(state.origins) if origin.run_id not in recent],
        dtype=np.int64,
    )
    drop = np.isin(state.record_origin, old_origins)
    keep = ~drop
    pruned = replace(
        state,
        encodings=state.encodings[keep],
        record_person=state.record_person[keep],
        record_origin=state.record_origin[keep],
        record_position=state.record_position[keep],
    )
    held = {pruned.current(int(person)) for person in np.unique(pruned.record_person).tolist()}
    return Pruning(
        state=pruned,
        removed=int(drop.sum()),
        kept=int(keep.sum()),
        people_without_records=pruned.person_count - len(held),
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
            "keep_runs": s.keep_runs,
            "attach_probability": s.attach_probability,
        },
        "person_keys": [dict(keys) for keys in state.person_keys],
        "merged_into": list(state.merged_into),
        "events": [
            {"kind": e.kind.value, "run_id": e.run_id, "kept": e.kept, "people": list(e.people)}
            for e in state.events
        ],
        "runs": list(state.runs),
        "origins": [
            {
                "project_id": o.project_id,
                "party": o.party,
                "run_id": o.run_id,
                "records": o.records,
                "duplicate_free": o.duplicate_free,
            }
            for o in state.origins
        ],
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
        encodings=state.encodings,
        record_person=state.record_person,
        record_origin=state.record_origin,
        record_position=state.record_position,
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
            keep_runs=s.get("keep_runs"),
            # A spine written before the attach probability was kept: the default.
            attach_probability=float(s.get("attach_probability", DEFAULT_ATTACH_PROBABILITY)),
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
        # A spine written before origins were kept has none: its records' origins are -1.
        # One written before duplicate_free was kept: each origin read as not (nothing known).
        origins=tuple(
            RecordOrigin(
                project_id=o["project_id"],
                party=o["party"],
                run_id=o["run_id"],
                records=int(o["records"]),
                duplicate_free=bool(o.get("duplicate_free", False)),
            )
            for o in meta.get("origins", [])
        ),
        record_origin=(
            arrays["record_origin"].astype(np.int64)
            if "record_origin" in arrays
            else np.zeros(0, np.int64)
        ),
        record_position=(
            arrays["record_position"].astype(np.int64)
            if "record_position" in arrays
            else np.zeros(0, np.int64)
        ),
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

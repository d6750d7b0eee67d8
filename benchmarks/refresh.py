"""Refresh into a spine vs relinking everything from scratch (issue 14).

Two modes. Both time (a) the run of a refresh into the spine against (b) relinking the
spine's records and the refresh from scratch, with the same engine at the same cut, one
after the other in one process, and end with ONE JSON line (``ratio``: scratch seconds over
spine seconds; ``keep_key_share``: the share of returning people keeping their key; from
scratch nobody keeps a key, every key is new).

``--mode names`` (the default): people with names. ``bloomlink synth`` draws one
population; release 1 is a MoJ and a DfE extract of it (``--people`` each, half the DfE's
people also MoJ's, difficulty ``--difficulty``), normalised through the shipped department
mappings and encoded by the real encoder under the shipped default schema, run into an empty
spine. Release 2 of MoJ re-extracts ``1 - --leave`` of MoJ's people with new errors (each
record corrupted afresh from the person's true values, new record ids, a new order) plus
``--join`` x people new people nobody has seen, as a one-party (deduplicated) project. Reports
the share of people in both MoJ releases whose release-2 key is their release-1 key, how
many new people were given an existing person's key, and how many distinct true people
share one key across everything issued (false merges; release 1's alone for comparison).
The done-when's own criterion apart: MoJ keys held by two or more true MoJ people over both
releases, by cause (``sharing_causes``: a merge, a returning or new person attached to
another's person, a new person given the key of one who left, ...), and separately release
1's keys joining a MoJ and a DfE record of two people (the one-off linkage's precision).
``--refresh-parties moj,dfe``: release 2 of MoJ and of DfE (DfE's people re-extracted less
``--leave``, as many new people as MoJ's, half of them MoJ's), a two-party project without
``--dedupe`` as release 1; adds DfE's keep share and the people in both release-2 extracts
whose two records got two keys. ``--repeat-rate R``: MoJ release 1 holds some people twice
(uploaded without ``--dedupe`` all the same); counts how many of them end as one spine
person. ``--no-relink`` skips the relink from scratch (counts only).
``--attach-probability P``: the spine's attach probability (docs/spine.md); 0.5, the link
cut, attaches as the rule before it did.
``--scoring auto`` (the default) scores as a project of the default schema does: the
Fellegi-Sunter model over its field groups, in both releases and in the relink; ``dice``
scores whole records by Dice. Each run's cut is automatic unless ``--threshold`` sets the
record-level Dice cut (with the model: its candidate cut). Every run draws a fresh linkage
secret, so repeated runs measure the spread over secrets, unless ``--secret LABEL`` fixes it
(its SHA-256), to compare two commits under the same secrets.

    nice .venv/bin/python benchmarks/refresh.py --people 50000

``--mode random``: the engine alone at scale. A spine of ``--spine`` people (one record
each, 1024-bit synthetic random CLKs, its keys issued as a first run would: built directly,
so the setup does not dominate), then a refresh of ``--refresh`` records: half returning
people re-extracted with new errors (about 4 % of bits flipped), half new people.

    nice .venv/bin/python benchmarks/refresh.py --mode random --spine 1000000 --refresh 100000

Peak memory: ``tracemalloc``'s traced peak (numpy allocations) of each measured call, and
the process's peak RSS (``ru_maxrss``) after each. RSS is the whole process's high-water
mark, the generated CLKs and the spine included, and never falls: the second figure is only
a bound for the second run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from machine import this_machine

from bloomlink.synth import DepartmentExtract, SynthConfig, generate
from bloomlink.synth.generation import extract_people
from linkage_unit.link_keys import PartyLinkKeys, fresh_keys, issue_link_keys
from linkage_unit.matching import MatchSettings, Scoring, link
from linkage_unit.spine import (
    DEFAULT_ATTACH_PROBABILITY,
    SHARED_KEY,
    SpineSettings,
    SpineState,
    SpineUpload,
    link_into_spine,
)
from party.mapping import shipped_mapping
from protocol.encoding import ClkEncoder
from protocol.errors import PreconditionError, RecordError
from protocol.messages import LinkKeyMode
from protocol.schema import LinkageSchema, default_schema
from protocol.secret import LinkageSecret

T = TypeVar("T")
SCHEMA = "ab" * 32
KCV = "00" * 16


def _clks(generator: np.random.Generator, count: int, words: int = 16) -> npt.NDArray[np.uint64]:
    out = np.empty((count, words), np.uint64)
    for start in range(0, count, 50_000):  # in chunks: a 1M x 1024 float array is 8 GiB
        rows = min(50_000, count - start)
        bits = generator.random((rows, words * 64)) < 0.45
        packed = np.packbits(bits, axis=1, bitorder="little").view(np.uint64)
        out[start : start + rows] = packed.reshape(rows, words)
    return out


def _noisy(generator: np.random.Generator, clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    return clks ^ _clks(generator, len(clks), clks.shape[1]) & _clks(
        generator, len(clks), clks.shape[1]
    ) & _clks(generator, len(clks), clks.shape[1]) & _clks(generator, len(clks), clks.shape[1])


def _measured(work: Callable[[], T]) -> tuple[T, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def _normalised(department: DepartmentExtract, schema: LinkageSchema) -> list[list[str | None]]:
    """Each row through the department's shipped mapping, as ``bloomlink encode`` does (a
    value the mapping rejects is blanked)."""
    bound = shipped_mapping(department.name).bind(schema, department.layout.columns)
    out = []
    for number, row in enumerate(department.rows(), start=1):
        blanked: list[RecordError] = []
        out.append(bound.normalise(row, row_number=number, blanked=blanked))
    return out


def _keys_by_row(keys: PartyLinkKeys) -> list[str]:
    by_row = dict(zip(keys.positions, keys.link_keys, strict=True))
    return [by_row[row] for row in range(len(by_row))]


def _people_sharing_a_key(issued: list[tuple[list[str], npt.NDArray[np.int64]]]) -> int:
    """Distinct true people whose key is also another true person's (false merges)."""
    owners: dict[str, set[int]] = defaultdict(set)
    for keys, people in issued:
        for key, person in zip(keys, people.tolist(), strict=True):
            owners[key].add(person)
    return sum(len(group) for group in owners.values() if len(group) > 1)


# Why a key of one party came to be held by a second true person of that party (the first
# time it did), in the order tested: see ``sharing_causes``.
SHARING_CAUSES = (
    "earlier_link",
    "merge",
    "returning_attached",
    "new_attached",
    "new_given_leavers_key",
    "run_cluster",
)


def _roots(state: SpineState) -> npt.NDArray[np.int64]:
    roots = np.array(state.merged_into, dtype=np.int64)
    while len(roots) and not np.array_equal(roots[roots], roots):
        roots = roots[roots]
    return roots


def sharing_causes(
    runs: list[tuple[SpineState, SpineState, list[tuple[str, npt.NDArray[np.int64], list[str]]]]],
    party: str,
    slot: str,
) -> dict[str, int]:
    """Keys of ``party`` held by two or more different true people of ``party``, by the cause
    of the first such sharing. ``runs``: per run in order, the spine before and after it and
    its uploads in upload order (party, true person per record, key per record); ``slot``:
    the key slot (``*`` in shared mode, the party in per_party mode). A record of true person
    y given key K already held by another person of the party is, with q the spine person
    holding K before the run:

    * ``earlier_link``: y already had a record in q (an earlier run's link put y there: in
      release 1, the one-off linkage's precision);
    * ``merge``: y's spine person before the run was merged into q by it;
    * ``returning_attached``: y was another spine person, not merged into q;
    * ``new_attached`` / ``new_given_leavers_key``: y was new to the spine and K's earlier
      holders are in this run too / none of them is (they left);
    * ``run_cluster``: K is new in this run, given to records of two people (the run's own
      clusters joined them)."""
    owners: dict[str, set[int]] = defaultdict(set)
    causes: dict[str, str] = {}
    spine_truth = np.zeros(0, np.int64)
    for before, after, uploads in runs:
        roots_before, roots_after = _roots(before), _roots(after)
        key_person = {keys[slot]: p for p, keys in enumerate(before.person_keys) if slot in keys}
        record_root = roots_before[before.record_person] if len(before.record_person) else None
        in_run = set(np.concatenate([people for _, people, _ in uploads]).tolist())
        for name, people, keys in uploads:
            if name != party:
                continue
            for key, person in zip(keys, people.tolist(), strict=True):
                held = owners[key]
                if held and person not in held and key not in causes:
                    q = key_person.get(key)
                    own = (
                        set(record_root[spine_truth == person].tolist())
                        if record_root is not None
                        else set()
                    )
                    if q is None:
                        causes[key] = "run_cluster"
                    elif int(roots_before[q]) in own:
                        causes[key] = "earlier_link"
                    elif any(roots_after[r] == roots_after[roots_before[q]] for r in own):
                        causes[key] = "merge"
                    elif own:
                        causes[key] = "returning_attached"
                    elif held & in_run:
                        causes[key] = "new_attached"
                    else:
                        causes[key] = "new_given_leavers_key"
                held.add(person)
        spine_truth = np.concatenate([spine_truth, *(people for _, people, _ in uploads)])
    counted = Counter(causes.values())
    return {cause: counted[cause] for cause in SHARING_CAUSES}


def keys_joining_people(state: SpineState, truth: npt.NDArray[np.int64]) -> int:
    """Spine people (keys) whose records are of two or more true people (``truth``: per
    spine record). After release 1 (no party deduplicated, so at most one record of each
    party per person) these are MoJ and DfE records of different people: the one-off
    linkage's precision, not the spine's."""
    roots = _roots(state)[state.record_person]
    pairs = np.unique(np.stack([roots, truth]), axis=1)
    return int((np.bincount(pairs[0]) > 1).sum())


def names(args: argparse.Namespace) -> None:
    if not (0 <= args.leave < 1 and 0 <= args.join <= 0.5):
        raise SystemExit("--leave must be in [0, 1) and --join in [0, 0.5]")
    refresh_parties = tuple(args.refresh_parties.split(","))
    if refresh_parties not in (("moj",), ("moj", "dfe")):
        raise SystemExit("--refresh-parties is moj or moj,dfe")
    started = time.perf_counter()
    # HMPPS's own people (half of its extract) are drawn only to be release 2's new people.
    synth = generate(
        SynthConfig(
            departments=("moj", "dfe", "hmpps"),
            records=args.people,
            overlap=0.5,
            difficulty=args.difficulty,
            repeat_rate=args.repeat_rate,
            repeat_departments=("moj",),
            seed=args.seed,
        )
    )
    moj_one, dfe_one, hmpps = synth.departments
    rng = np.random.default_rng(args.seed + 1)
    # With repeats, MoJ release 1 holds some people twice; release 2 holds each once.
    moj_people = np.unique(moj_one.people) if args.repeat_rate else moj_one.people
    staying = rng.choice(moj_people, size=round(len(moj_people) * (1 - args.leave)), replace=False)
    unseen = hmpps.people[~np.isin(hmpps.people, np.concatenate([moj_one.people, dfe_one.people]))]
    joining = unseen[: round(len(moj_one) * args.join)]
    moj_two = extract_people(
        synth.population,
        rng.permutation(np.concatenate([staying, joining])),
        department="moj",
        difficulty=args.difficulty,
        rng=rng,
    )
    releases = [("moj-1", moj_one), ("dfe-1", dfe_one), ("moj-2", moj_two)]
    release = dict(releases)
    if "dfe" in refresh_parties:
        # Release 2 of DfE: its people re-extracted less --leave, and as many new people as
        # MoJ's, half of them MoJ's new people (as release 1's extracts overlap by half).
        half = len(joining) // 2
        dfe_two = extract_people(
            synth.population,
            rng.permutation(
                np.concatenate(
                    [
                        rng.choice(
                            dfe_one.people,
                            size=round(len(dfe_one) * (1 - args.leave)),
                            replace=False,
                        ),
                        joining[half:],
                        unseen[len(joining) : 2 * len(joining) - half],
                    ]
                )
            ),
            department="dfe",
            difficulty=args.difficulty,
            rng=rng,
        )
        releases.append(("dfe-2", dfe_two))
        release["dfe-2"] = dfe_two
    synth_s = time.perf_counter() - started
    started = time.perf_counter()
    schema = default_schema()
    # --secret: a label whose SHA-256 is the secret, so two commits compare under one secret.
    secret = hashlib.sha256(args.secret.encode()).digest() if args.secret else os.urandom(32)
    encoder = ClkEncoder(schema, LinkageSecret(secret), project_id="spine:bench")
    clks = {
        name: encoder.encode_many(_normalised(department, schema)) for name, department in releases
    }
    encode_s = time.perf_counter() - started
    kcv = encoder.kcv.hex()
    fingerprint = schema.fingerprint.hex()

    def upload(party: str, name: str) -> SpineUpload:
        return SpineUpload(party=party, schema_fingerprint=fingerprint, kcv=kcv, clks=clks[name])

    empty = SpineState(
        settings=SpineSettings(
            name="bench",
            parties=("moj", "dfe"),
            schema_fingerprint=fingerprint,
            link_key_mode=LinkKeyMode.SHARED,
            attach_probability=(
                DEFAULT_ATTACH_PROBABILITY
                if args.attach_probability is None
                else args.attach_probability
            ),
        )
    )
    # auto: the model over the default schema's field groups, as a grouped project's runs
    # (and a one-off run of them) score; dice: whole-record Dice, the engine's single-CLK path.
    layout = schema.layout
    settings = MatchSettings(
        threshold=args.threshold, blocking_seed=args.seed, scoring=Scoring(args.scoring)
    )
    first, first_s, _ = _measured(
        lambda: link_into_spine(
            empty,
            [upload("moj", "moj-1"), upload("dfe", "dfe-1")],
            settings,
            run_id="release-1",
            project_id="release-1",
            layout=layout,
        )
    )
    # Release 2 of MoJ alone: a one-party project deduplicates it (as `--dedupe moj`); of
    # MoJ and DfE: a two-party project without --dedupe, as release 1.
    refresh_settings = (
        settings if len(refresh_parties) > 1 else replace(settings, deduplicated=frozenset({"moj"}))
    )
    try:
        second, spine_s, spine_peak = _measured(
            lambda: link_into_spine(
                first.state,
                [upload(party, f"{party}-2") for party in refresh_parties],
                refresh_settings,
                run_id="release-2",
                project_id="release-2",
                layout=layout,
            )
        )
    except PreconditionError as refusal:  # the merge cap: the run would issue no key
        tracemalloc.stop()
        print(f"release 2 refused: {refusal.message}")
        print(json.dumps({"bench": "refresh", "mode": "names", "scoring": args.scoring,
                          "refused": refusal.message,
                          "ratio": None, "keep_key_share": None,
                          **this_machine().fields()}))  # fmt: skip
        return
    spine_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def scratch() -> int:
        result = link(clks, settings, layout=layout)
        return len(issue_link_keys(result.clusters, LinkKeyMode.SHARED)["moj-2"].link_keys)

    # --no-relink: the counts alone (the relink is timed only; it issues nobody a kept key).
    _, scratch_s, scratch_peak = _measured(scratch) if not args.no_relink else (0, 0.0, 0)
    scratch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    moj_keys_one = _keys_by_row(first.keys["moj"])
    dfe_keys_one = _keys_by_row(first.keys["dfe"])
    moj_keys_two = _keys_by_row(second.keys["moj"])
    key_one = dict(zip(moj_one.people.tolist(), moj_keys_one, strict=True))
    key_two = dict(zip(moj_two.people.tolist(), moj_keys_two, strict=True))
    returning = sorted(set(key_one) & set(key_two))
    kept = sum(key_one[person] == key_two[person] for person in returning)
    keep_share = kept / len(returning)
    # A merge keeps the oldest person's key and maps the others' to it in the crosswalk,
    # which the research environment applies: a key that moved there is kept in effect.
    current = dict(second.state.crosswalk().rows)
    kept_via = sum(current.get(key_one[p], key_one[p]) == key_two[p] for p in returning)
    # With Dice, the bound the cut sets: returning people whose two MoJ records score at
    # least the cut against each other. Below it only other records could carry the key.
    row_one = {person: row for row, person in enumerate(moj_one.people.tolist())}
    row_two = {person: row for row, person in enumerate(moj_two.people.tolist())}
    left = clks["moj-1"][[row_one[p] for p in returning]]
    right = clks["moj-2"][[row_two[p] for p in returning]]
    ones = np.bitwise_count(left).sum(axis=1) + np.bitwise_count(right).sum(axis=1)
    dice = 2 * np.bitwise_count(left & right).sum(axis=1) / np.maximum(ones, 1)
    model = second.threshold_method == "fellegi-sunter"
    above_cut = None if model else float(np.mean(dice >= second.threshold))
    earlier = set(moj_keys_one) | set(dfe_keys_one)
    new_people = sorted(set(key_two) - set(key_one) - set(dfe_one.people.tolist()))
    new_with_old_key = sum(key_two[person] in earlier for person in new_people)
    shared_one = _people_sharing_a_key(
        [(moj_keys_one, moj_one.people), (dfe_keys_one, dfe_one.people)]
    )
    shared_all = _people_sharing_a_key(
        [
            (moj_keys_one, moj_one.people),
            (dfe_keys_one, dfe_one.people),
            (moj_keys_two, moj_two.people),
        ]
    )
    # The done-when's "no two different people share one": MoJ keys held by two or more
    # true MoJ people over both releases, by cause (sharing_causes); apart from it, release
    # 1's keys joining a MoJ and a DfE record of two people (the one-off linkage's
    # precision, a different cause: in shared mode they share one key from release 1 on).
    second_uploads = [(party, release[f"{party}-2"].people, _keys_by_row(second.keys[party]))
                      for party in refresh_parties]  # fmt: skip
    runs = [
        (empty, first.state,
         [("moj", moj_one.people, moj_keys_one), ("dfe", dfe_one.people, dfe_keys_one)]),
        (first.state, second.state, second_uploads),
    ]  # fmt: skip
    by_cause = {party: sharing_causes(runs, party, SHARED_KEY) for party in refresh_parties}
    release_1_joined = keys_joining_people(
        first.state, np.concatenate([moj_one.people, dfe_one.people])
    )
    # Repeats (--repeat-rate): people MoJ release 1 holds twice or more, uploaded as
    # duplicate-free (no --dedupe); how many of them end as one spine person after each
    # release (release 2 can show it by a merge; the first cannot put them together).
    repeated = np.flatnonzero(np.bincount(moj_one.people) > 1)
    repeats = {"repeated_people": len(repeated)}
    for name, state in (("release_1", first.state), ("release_2", second.state)):
        roots = _roots(state)[state.record_person[: len(moj_one)]]
        per_person = np.unique(np.stack([moj_one.people, roots]), axis=1)[0]
        repeats[f"repeated_people_one_person_after_{name}"] = int(
            (
                np.bincount(per_person, minlength=len(np.bincount(moj_one.people)))[repeated] == 1
            ).sum()
        )
    dfe: dict[str, object] = {}
    if "dfe" in refresh_parties:
        # DfE's keep share as MoJ's; and the people in both parties' release 2 whose two
        # release-2 records got two keys (one person, two keys: in shared mode a person's
        # records all carry one), with how many of them kept their release-1 key on one.
        dfe_key_one = dict(zip(dfe_one.people.tolist(), dfe_keys_one, strict=True))
        dfe_key_two = dict(zip(release["dfe-2"].people.tolist(), second_uploads[1][2], strict=True))
        dfe_returning = sorted(set(dfe_key_one) & set(dfe_key_two))
        dfe_kept = sum(dfe_key_one[p] == dfe_key_two[p] for p in dfe_returning)
        both = sorted(set(key_two) & set(dfe_key_two))
        split = [p for p in both if key_two[p] != dfe_key_two[p]]
        one_kept = sum(
            (p in key_one and key_one[p] in (key_two[p], dfe_key_two[p]))
            or (p in dfe_key_one and dfe_key_one[p] in (key_two[p], dfe_key_two[p]))
            for p in split
        )
        dfe = {
            "dfe_returning_people": len(dfe_returning),
            "dfe_keep_key_share": round(dfe_kept / len(dfe_returning), 5),
            "release_2_people_in_both": len(both),
            "release_2_people_with_two_keys": len(split),
            "release_2_people_with_two_keys_one_kept": one_kept,
        }
    machine = this_machine().fields()
    print(f"CPU: {machine['cpu']}, {machine['cores']} cores")
    print(f"load average at the end: {machine['load_avg_1m']:.2f}")
    print(
        f"synth {args.people:,} per extract at {args.difficulty} ({synth_s:.1f} s); encoded "
        f"{sum(map(len, clks.values())):,} records under the default schema ({encode_s:.1f} s, "
        f"{clks['moj-1'].shape[1] * 64} bits); release 1 into the empty spine {first_s:.1f} s"
    )
    print(
        f"{'run of release 2':<24}{'seconds':>9}{'traced MiB':>12}{'RSS MiB':>9}{'keys kept':>11}"
    )
    print(
        f"{'into spine':<24}{spine_s:>9.2f}{spine_peak / 2**20:>12.1f}{spine_rss:>9.0f}"
        f"{keep_share:>11.4f}"
    )
    print(
        f"{'relink from scratch':<24}{scratch_s:>9.2f}{scratch_peak / 2**20:>12.1f}"
        f"{scratch_rss:>9.0f}{0.0:>11.4f}"
    )
    print(
        f"returning people keeping their MoJ key: {kept:,} of {len(returning):,} ({kept_via:,} "
        f"with the crosswalk applied"
        + (
            ""
            if above_cut is None
            else f"; {above_cut:.4f} of them score at least the cut "
            "against their own release-1 record"
        )
        + "); new people "
        f"given an existing key: {new_with_old_key} of {len(new_people):,}; true people sharing "
        f"a key: {shared_all} (release 1 alone: {shared_one}); merges {len(second.merges)}, "
        f"splits {len(second.splits)}, clusters held apart {len(second.held_apart)}"
    )
    for party, causes in by_cause.items():
        print(
            f"{party} keys held by two or more {party} people: {sum(causes.values())} "
            f"({', '.join(f'{cause} {count}' for cause, count in causes.items() if count) or '-'})"
        )
    print(f"release-1 keys joining a MoJ and a DfE record of two people: {release_1_joined}")
    if args.repeat_rate:
        print(
            f"MoJ release 1's repeated people, and those one spine person after each release: {repeats}"
        )
    if dfe:
        print(
            f"DfE: returning people keeping their key {dfe['dfe_keep_key_share']:.4f} of "
            f"{dfe['dfe_returning_people']:,}; people in both parties' release 2 whose two "
            f"records got two keys: {dfe['release_2_people_with_two_keys']} of "
            f"{dfe['release_2_people_in_both']:,} ({dfe['release_2_people_with_two_keys_one_kept']} "
            "of them with their release-1 key on one)"
        )
    print(
        json.dumps(
            {
                "bench": "refresh",
                "mode": "names",
                "people_per_extract": args.people,
                "difficulty": args.difficulty,
                "scoring": args.scoring,
                "threshold": second.threshold,
                "threshold_method": second.threshold_method,
                "attach_threshold": second.attach_threshold,
                "release_1_threshold": first.threshold,
                "clk_bits": clks["moj-1"].shape[1] * 64,
                "spine_records": len(first.state.record_person),
                "spine_people": first.state.person_count,
                "refresh_records": len(moj_two),
                "returning_people": len(returning),
                "new_people": len(new_people),
                "synth_s": round(synth_s, 3),
                "encode_s": round(encode_s, 3),
                "release_1_s": round(first_s, 3),
                "spine_s": round(spine_s, 3),
                "spine_peak_mib": round(spine_peak / 2**20, 1),
                "spine_rss_mib": round(spine_rss),
                "spine_comparisons": second.comparisons,
                "matched_people": second.matched_people,
                "merges": len(second.merges),
                "splits": len(second.splits),
                "held_apart": len(second.held_apart),
                "untrusted_models": [*first.untrusted_models, *second.untrusted_models],
                "release_2_linked_records": second.linked_records,
                "scratch_s": round(scratch_s, 3),
                "scratch_peak_mib": round(scratch_peak / 2**20, 1),
                "scratch_rss_mib": round(scratch_rss),
                "keep_key_share": round(keep_share, 5),
                "keep_key_share_with_crosswalk": round(kept_via / len(returning), 5),
                "returning_above_cut_share": None if above_cut is None else round(above_cut, 5),
                "new_people_given_existing_key": new_with_old_key,
                "people_sharing_a_key": shared_all,
                "people_sharing_a_key_release_1": shared_one,
                "refresh_parties": list(refresh_parties),
                "repeat_rate": args.repeat_rate,
                **{f"{party}_keys_shared": sum(c.values()) for party, c in by_cause.items()},
                **{f"{party}_keys_shared_by_cause": c for party, c in by_cause.items()},
                "release_1_keys_joining_people": release_1_joined,
                **dfe,
                **(repeats if args.repeat_rate else {}),
                "peer": "relink-from-scratch",
                "ratio": round(scratch_s / spine_s, 3),
                **machine,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("names", "random"), default="names")
    parser.add_argument(
        "--scoring",
        choices=("auto", "dice"),
        default="auto",
        help="names: auto scores by the Fellegi-Sunter model over the schema's field groups "
        "(as a grouped project's runs do); dice by whole-record Dice",
    )
    parser.add_argument("--people", type=int, default=50_000, help="names: records per extract")
    parser.add_argument(
        "--difficulty", default="medium", help="names: synth corruption (low, medium, hard)"
    )
    parser.add_argument(
        "--leave", type=float, default=0.1, help="names: share of MoJ's people not in release 2"
    )
    parser.add_argument(
        "--join",
        type=float,
        default=0.1,
        help="names: new people in release 2, as a share of --people (at most 0.5)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="names: the operator's record-level Dice cut of both releases (with the model: "
        "the candidate cut); unset (the default): chosen by each run",
    )
    parser.add_argument("--spine", type=int, default=100_000, help="random: people in the spine")
    parser.add_argument(
        "--refresh", type=int, default=10_000, help="random: records in the refresh"
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--refresh-parties",
        default="moj",
        help="names: release 2 of moj alone (deduplicated, the default) or of moj,dfe (a "
        "two-party project without --dedupe, as release 1)",
    )
    parser.add_argument(
        "--repeat-rate",
        type=float,
        default=0.0,
        help="names: the share of MoJ release 1's records repeating a person (synth's "
        "repeat_rate): a party that holds repeats but uploads without --dedupe",
    )
    parser.add_argument(
        "--attach-probability",
        type=float,
        default=None,
        help="names: the spine's attach probability (spine create --attach-probability); "
        "default: the spine's default. 0.5, the link cut, attaches as before it existed",
    )
    parser.add_argument(
        "--no-relink",
        action="store_true",
        help="names: skip the relink from scratch (counts only; its seconds read 0)",
    )
    parser.add_argument(
        "--secret",
        default=None,
        help="names: a label whose SHA-256 is the linkage secret (default: a fresh random one)",
    )
    args = parser.parse_args()
    if args.mode == "names":
        names(args)
    else:
        random_clks(args)


def random_clks(args: argparse.Namespace) -> None:
    generator = np.random.default_rng(args.seed)
    people = _clks(generator, args.spine + args.refresh // 2)
    settings = MatchSettings(threshold=0.8, blocking_seed=args.seed)
    spine_people = people[: args.spine]
    keys_built = fresh_keys(args.spine, os.urandom)
    spine = SpineState(
        settings=SpineSettings(
            name="bench",
            parties=("moj", "dfe"),
            schema_fingerprint=SCHEMA,
            kcv=KCV,
            link_key_mode=LinkKeyMode.SHARED,
        ),
        person_keys=tuple({"*": key} for key in keys_built),
        merged_into=tuple(range(args.spine)),
        encodings=spine_people,
        record_person=np.arange(args.spine, dtype=np.int64),
        runs=("build",),
    )
    first_keys = dict(enumerate(keys_built))
    returning = args.refresh - args.refresh // 2
    refresh = np.concatenate(
        [_noisy(generator, people[:returning]), people[args.spine : args.spine + args.refresh // 2]]
    )
    upload = SpineUpload(party="dfe", schema_fingerprint=SCHEMA, kcv=KCV, clks=refresh)
    into, spine_s, spine_peak = _measured(
        lambda: link_into_spine(spine, [upload], settings, run_id="refresh")
    )
    spine_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    keys = dict(zip(into.keys["dfe"].positions, into.keys["dfe"].link_keys, strict=True))
    kept = sum(keys[row] == first_keys[row] for row in range(returning)) / returning
    owners = len({keys[row] for row in range(args.refresh)})

    def scratch() -> int:
        result = link({"moj": people[: args.spine], "dfe": refresh}, settings)
        return len(issue_link_keys(result.clusters, LinkKeyMode.SHARED)["dfe"].link_keys)

    _, scratch_s, scratch_peak = _measured(scratch)
    scratch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = this_machine().fields()
    print(f"CPU: {machine['cpu']}, {machine['cores']} cores")
    print(f"load average at the end: {machine['load_avg_1m']:.2f}")
    print(f"{'run':<24}{'seconds':>9}{'traced MiB':>12}{'RSS MiB':>9}{'keys kept':>11}")
    print(
        f"{'into spine':<24}{spine_s:>9.2f}{spine_peak / 2**20:>12.1f}{spine_rss:>9.0f}"
        f"{kept:>11.4f}"
    )
    print(
        f"{'relink from scratch':<24}{scratch_s:>9.2f}{scratch_peak / 2**20:>12.1f}"
        f"{scratch_rss:>9.0f}{0.0:>11.4f}"
    )
    print(
        json.dumps(
            {
                "bench": "refresh",
                "mode": "random",
                "spine_people": args.spine,
                "refresh_records": args.refresh,
                "spine_s": round(spine_s, 3),
                "spine_peak_mib": round(spine_peak / 2**20, 1),
                "spine_rss_mib": round(spine_rss),
                "spine_comparisons": into.comparisons,
                "matched_people": into.matched_people,
                "new_people": into.new_people,
                "scratch_s": round(scratch_s, 3),
                "scratch_peak_mib": round(scratch_peak / 2**20, 1),
                "scratch_rss_mib": round(scratch_rss),
                "kept_share": round(kept, 5),
                "keep_key_share": round(kept, 5),
                "distinct_refresh_keys": owners,
                "peer": "relink-from-scratch",
                "ratio": round(scratch_s / spine_s, 3),
                **machine,
            }
        )
    )


if __name__ == "__main__":
    main()

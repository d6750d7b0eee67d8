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
import platform
import resource
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from bloomlink.synth import DepartmentExtract, SynthConfig, generate
from bloomlink.synth.generation import extract_people
from linkage_unit.link_keys import PartyLinkKeys, fresh_keys, issue_link_keys
from linkage_unit.matching import MatchSettings, Scoring, link
from linkage_unit.spine import SpineSettings, SpineState, SpineUpload, link_into_spine
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


def _cpu() -> str:
    """Model name, family and model, and whether AVX-512 VPOPCNTDQ is there (the kernels')."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    popcount = "avx512_vpopcntdq" in fields.get("flags", "").split()
    return (
        f"{fields.get('model name', 'unknown')} family {fields.get('cpu family', '?')} model "
        f"{fields.get('model', '?')}{' AVX-512 VPOPCNTDQ' if popcount else ''}, "
        f"{os.cpu_count()} cores"
    )


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


def names(args: argparse.Namespace) -> None:
    if not (0 <= args.leave < 1 and 0 <= args.join <= 0.5):
        raise SystemExit("--leave must be in [0, 1) and --join in [0, 0.5]")
    started = time.perf_counter()
    # HMPPS's own people (half of its extract) are drawn only to be release 2's new people.
    synth = generate(
        SynthConfig(
            departments=("moj", "dfe", "hmpps"),
            records=args.people,
            overlap=0.5,
            difficulty=args.difficulty,
            seed=args.seed,
        )
    )
    moj_one, dfe_one, hmpps = synth.departments
    rng = np.random.default_rng(args.seed + 1)
    staying = rng.choice(moj_one.people, size=round(len(moj_one) * (1 - args.leave)), replace=False)
    unseen = hmpps.people[~np.isin(hmpps.people, np.concatenate([moj_one.people, dfe_one.people]))]
    joining = unseen[: round(len(moj_one) * args.join)]
    moj_two = extract_people(
        synth.population,
        rng.permutation(np.concatenate([staying, joining])),
        department="moj",
        difficulty=args.difficulty,
        rng=rng,
    )
    synth_s = time.perf_counter() - started
    started = time.perf_counter()
    schema = default_schema()
    # --secret: a label whose SHA-256 is the secret, so two commits compare under one secret.
    secret = hashlib.sha256(args.secret.encode()).digest() if args.secret else os.urandom(32)
    encoder = ClkEncoder(schema, LinkageSecret(secret), project_id="spine:bench")
    clks = {
        name: encoder.encode_many(_normalised(department, schema))
        for name, department in (("moj-1", moj_one), ("dfe-1", dfe_one), ("moj-2", moj_two))
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
    # Release 2 of MoJ alone: a one-party project deduplicates it (as `--dedupe moj`).
    refresh_settings = replace(settings, deduplicated=frozenset({"moj"}))
    try:
        second, spine_s, spine_peak = _measured(
            lambda: link_into_spine(
                first.state,
                [upload("moj", "moj-2")],
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
                          "load_average": round(os.getloadavg()[0], 2)}))  # fmt: skip
        return
    spine_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def scratch() -> int:
        result = link(
            {"moj-1": clks["moj-1"], "dfe-1": clks["dfe-1"], "moj-2": clks["moj-2"]},
            settings,
            layout=layout,
        )
        return len(issue_link_keys(result.clusters, LinkKeyMode.SHARED)["moj-2"].link_keys)

    _, scratch_s, scratch_peak = _measured(scratch)
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
    cpu = _cpu()
    load = os.getloadavg()[0]
    print(f"CPU: {cpu}")
    print(f"load average at the end: {load:.2f}")
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
                "peer": "relink-from-scratch",
                "ratio": round(scratch_s / spine_s, 3),
                "cpu": cpu,
                "load_average": round(load, 2),
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
    cpu = _cpu()
    print(f"CPU: {cpu}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
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
                "cpu": cpu,
                "load_average": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()

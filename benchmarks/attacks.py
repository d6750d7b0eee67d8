"""Attacks on our own encodings: what a curious linkage unit learns without the key.

    .venv/bin/python benchmarks/attacks.py [--schema FILE ...] [--records 3000]
        [--difficulty medium] [--seed 5] [--known-pairs 50] [--quality-records 10000]
        [--no-quality]

Data: ``bloomlink synth`` moj + dfe extracts (half the people shared) at --difficulty, each
normalised through its shipped department mapping. The moj extract is encoded under each
schema with the real encoder and a project key (the file the linkage unit holds). The
attacker also holds the dfe extract as plaintext (graph matching's reference: the shared half
are the overlapping people), and a separate synth population of --population people (another
seed; it stands in for a public table of name and date frequencies).

Attacks (bloomlink/attacks, docs/attacks.md): frequency, keyless pattern mining, the
bit-correlation signature attack (oracle labelling, and an insider's labelling from the known
pairs), and graph matching (keyless, and seeded with --known-pairs known pairs), each on every
field group and on the whole record; where a group's linear diffusion can be undone
(bloomlink/attacks/linear.py), the attribute attacks also run on the undone group and on the
whole record with it undone. The recovery is scored against the key holder's truth (rank,
basis vectors that are columns of the diffusion matrix, records recovered exactly, and the
ceiling the true columns reach: JSON "linear"); "worst_attribute_min_pr_without_linear" is
the headline over the encoded views alone. Attribute values scored: sex, birth day, month and year,
postcode area, the 5 most common forenames and surnames (values held by at least 15 records).

Linkage cost: F1 on the quality benchmark's hard set (moj + dfe, --quality-records each, seed
2; benchmarks/quality.py's functions) with the engine's defaults for the encoding: Dice at the
automatic threshold for a single CLK, the Fellegi-Sunter model at p >= 0.5 for several field
groups; the cost is the single-CLK schema's F1 (the unhardened default until 2026-12-05,
protocol/data/single_clk_schema.toml) minus the candidate's.

With no --schema it attacks the single-CLK schema and today's shipped default side by side.

Prints a table (rows: view, attack, attribute; a column per schema; a cell is the best value's
precision/recall and how many values reached min(P, R) >= 0.6), then ONE JSON line whose
top-level figures are those of the LAST schema given (the candidate), with every schema's
under "schemas". There is no peer system, so "peer" and "ratio" are null.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "benchmarks"))

from machine import this_machine  # noqa: E402
from quality import ours_auto, synth_parties  # noqa: E402

from bloomlink.attacks import (  # noqa: E402
    WHOLE_RECORD,
    AssessmentSettings,
    AttackName,
    AttackReport,
    Reference,
    Truth,
    assess,
    schema_encoder,
)
from bloomlink.attacks.assessment import UNDONE  # noqa: E402
from bloomlink.attacks.attributes import Attribute  # noqa: E402
from bloomlink.attacks.linear import (  # noqa: E402
    columns_found,
    inputs_agreement,
    solve,
)
from bloomlink.attacks.views import Row  # noqa: E402
from protocol.encoding import ClkEncoder  # noqa: E402
from protocol.schema import LinkageSchema, default_schema, load_schema, single_clk_schema  # noqa: E402
from protocol.secret import LinkageSecret  # noqa: E402

PROJECT_KEY = bytes(range(32))  # the project's key: the attacker never sees it
QUALITY_SEED = 2  # benchmarks/quality.py's default seed for the synth sets
QUALITY_PROJECT = "quality"  # and its project id (its key is PROJECT_KEY)
ATTRIBUTE_ATTACKS = (
    AttackName.FREQUENCY,
    AttackName.PATTERN_MINING,
    AttackName.SIGNATURE_ORACLE,
    AttackName.SIGNATURE_INSIDER,
    AttackName.GRAPH_KEYLESS,
    AttackName.GRAPH_SEEDED,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaRun:
    label: str
    schema: LinkageSchema
    report: AttackReport
    f1_auto_hard: float | None
    seconds: float
    linear: tuple[dict[str, Any], ...] = ()


def _unpacked(clks: Any, bits: int) -> Any:
    import numpy as np

    raw = np.ascontiguousarray(clks, dtype="<u8").view(np.uint8)
    return np.unpackbits(raw, axis=1, bitorder="little", count=bits)


def _independent_rows(matrix: Any) -> list[int]:
    """Indices of a maximal linearly independent set of 0/1 rows, first come first kept."""
    echelon: dict[int, int] = {}
    kept = []
    for index, row in enumerate(matrix):
        value = int("".join(str(bit) for bit in row.tolist()[::-1]) or "0", 2)
        while value and (value.bit_length() - 1) in echelon:
            value ^= echelon[value.bit_length() - 1]
        if value:
            echelon[value.bit_length() - 1] = value
            kept.append(index)
    return kept


def _linear_truth(
    schema: LinkageSchema,
    project_id: str,
    rows: Sequence[Row],
    report: AttackReport,
    report_clks: Any,
) -> tuple[dict[str, Any], ...]:
    """Score each group's linear recovery against the truth, which only the key holder has:
    the records' unhardened Bloom filters, and the diffusion matrix's columns (the hardening
    of each single input bit)."""
    import numpy as np

    if not report.linear:
        return ()
    encoder = ClkEncoder(schema, LinkageSecret(PROJECT_KEY), project_id=project_id)
    words = encoder.input_layout.total_words
    plain = np.frombuffer(
        b"".join(encoder.record_mask(values).to_bytes(8 * words, "little") for values in rows),
        dtype="<u8",
    ).reshape(-1, words)
    unit = np.packbits(np.eye(64 * words, dtype=np.uint8), axis=1, bitorder="little")
    columns = encoder.harden(unit.view("<u8").astype(np.uint64))
    out = []
    for index, recovery in enumerate(report.linear):
        start, stop = encoder.input_layout.word_range(index)
        out_start, out_stop = encoder.layout.word_range(index)
        truth = _unpacked(plain[:, start:stop], 64 * (stop - start))
        matrix = _unpacked(
            columns[64 * start : 64 * stop, out_start:out_stop], recovery.output_bits
        )
        item: dict[str, Any] = {
            "group": recovery.group,
            "rank": recovery.rank,
            "input_bits_used": int(truth.any(axis=0).sum()),
            "basis_vectors": len(recovery.basis),
            "basis_weight_max": max(recovery.weights, default=0),
            "columns_found": columns_found(recovery.basis, matrix),
            "iterations": recovery.iterations,
            "recovered": recovery.recovered,
        }
        if recovery.inputs is not None:
            item["records_exact"] = round(
                inputs_agreement(recovery.inputs, truth, basis=recovery.basis, columns=matrix), 4
            )
        # the ceiling: the same read-out from the true columns (an independent set of them)
        independent = _independent_rows(matrix)
        encodings = _unpacked(report_clks[:, out_start:out_stop], recovery.output_bits)
        best, _ = solve(matrix[independent], encodings)
        item["records_exact_true_columns"] = round(
            inputs_agreement(best, truth, basis=matrix[independent], columns=matrix), 4
        )
        out.append(item)
    return tuple(out)


def _label(path: Path | None, schema: LinkageSchema) -> str:
    if path is None:
        return "default"
    return path.stem if schema.hardening == "none" else f"{path.stem} ({schema.hardening})"


def _f1_hard(schema: LinkageSchema, records: int) -> float:
    """F1 on the quality benchmark's hard set, encoded under its key and project (so the
    default's figure is benchmarks/quality.py's), with link()'s defaults for the encoding:
    Dice at the automatic threshold, or the model for several field groups."""
    encoder = schema_encoder(schema, project_id=QUALITY_PROJECT)
    parties = synth_parties(
        schema, departments=("moj", "dfe"), records=records, difficulty="hard", seed=QUALITY_SEED
    )
    encoded = {party.name: encoder(party.values, PROJECT_KEY) for party in parties}
    layouts = {item.layout for item in encoded.values()}
    assert len(layouts) == 1
    (layout,) = layouts
    clks = {name: item.clks for name, item in encoded.items()}
    grouped = layout if len(layout.groups) > 1 else None
    return ours_auto(parties, clks, deduplicate=False, layout=grouped).f1


def run_schema(
    path: Path | None, args: argparse.Namespace, quality_cache: dict[str, float | None]
) -> SchemaRun:
    started = time.perf_counter()
    schema = load_schema(path) if path else default_schema()
    encoder = schema_encoder(schema, project_id="attacks-benchmark")
    target, overlap = synth_parties(
        schema,
        departments=("moj", "dfe"),
        records=args.records,
        difficulty=args.difficulty,
        seed=args.seed,
    )
    (population,) = synth_parties(
        schema, departments=("dfe",), records=args.population, difficulty="none", seed=args.seed + 1
    )
    encoded = encoder(target.values, PROJECT_KEY)
    report = assess(
        encoded.clks,
        encoded.layout,
        truth=Truth(rows=target.values, people=target.truth.tolist()),
        reference=Reference(
            schema=schema,
            population=population.values,
            overlap=overlap.values,
            overlap_people=overlap.truth.tolist(),
            encode=encoder,
            group_fields=encoded.group_fields,
        ),
        settings=AssessmentSettings(
            seeds=args.known_pairs, seed=args.seed, min_support=args.min_support
        ),
    )
    f1: float | None = None
    if not args.no_quality:
        key = schema.canonical_json().decode()
        if key not in quality_cache:
            quality_cache[key] = _f1_hard(schema, args.quality_records)
        f1 = quality_cache[key]
    seconds = time.perf_counter() - started
    return SchemaRun(
        label=_label(path, schema),
        schema=schema,
        report=report,
        f1_auto_hard=f1,
        seconds=seconds,
        linear=_linear_truth(schema, "attacks-benchmark", target.values, report, encoded.clks),
    )


def _attribute_cell(
    report: AttackReport, attack: AttackName, view: str, attribute: Attribute
) -> str:
    best = report.best_by_attribute(attack, view).get(attribute)
    counts = report.identified(attack, view).get(attribute)
    if best is None or counts is None:
        return "-"
    return f"{best.value:>5} {best.precision:.2f}/{best.recall:.2f} {counts[0]:>2}/{counts[1]:<2}"


def _graph_cell(report: AttackReport, attack: AttackName, view: str) -> str:
    result = report.graph_result(attack, view)
    if result is None:
        return "-"
    return f"{result.reidentified_share:6.1%} P={result.precision:.2f} ({result.claimed})"


def print_table(runs: Sequence[SchemaRun]) -> None:
    width = 24
    views: list[str] = []
    for run in runs:
        views.extend(view for view in run.report.views if view not in views)
    views.sort(key=lambda name: (name == WHOLE_RECORD, name))
    header = f"{'view':<14} {'attack':<26} {'attribute':<14} " + " ".join(
        f"{run.label[:width]:>{width}}" for run in runs
    )
    print("\nAttribute disclosure: best value's precision/recall, values with min(P,R) >= 0.6")
    print(header)
    for view in views:
        for attack in ATTRIBUTE_ATTACKS:
            for attribute in Attribute:
                cells = [_attribute_cell(run.report, attack, view, attribute) for run in runs]
                if all(cell == "-" for cell in cells):
                    continue
                print(
                    f"{view:<14} {attack:<26} {attribute:<14} "
                    + " ".join(f"{cell:>{width}}" for cell in cells)
                )
    print("\nGraph matching: share of overlapping people re-identified, precision (claims)")
    print(
        f"{'view':<14} {'attack':<26} {'':<14} "
        + " ".join(f"{run.label[:width]:>{width}}" for run in runs)
    )
    for view in views:
        for attack in (AttackName.GRAPH_KEYLESS, AttackName.GRAPH_SEEDED):
            cells = [_graph_cell(run.report, attack, view) for run in runs]
            if all(cell == "-" for cell in cells):
                continue
            print(
                f"{view:<14} {attack:<26} {'':<14} "
                + " ".join(f"{cell:>{width}}" for cell in cells)
            )
    print("\nHeadline")
    for run in runs:
        worst = run.report.worst_attribute
        named = f"{worst[0]} [{worst[1]}] {worst[2].attribute}={worst[2].value}" if worst else "-"
        f1 = f"{run.f1_auto_hard:.4f}" if run.f1_auto_hard is not None else "null"
        print(
            f"{run.label:<24} worst min(P,R) {run.report.worst_attribute_min_pr:.2f} ({named}); "
            f"graph re-identified {run.report.graph_reidentified_share:.1%}; F1 hard auto {f1}; "
            f"{run.seconds:.0f}s"
        )


def _hardening(schema: LinkageSchema) -> str:
    """The schema's hardening: v1's one method, or each field group's chain (encoding v2)."""
    groups = getattr(schema, "groups", ())
    if groups:
        return "; ".join(f"{group.name}: {group.descriptor or 'none'}" for group in groups)
    return schema.hardening


def _figures(run: SchemaRun, baseline: float | None) -> dict[str, Any]:
    report = run.report
    worst = report.worst_attribute
    keyless = [
        r.reidentified_share for r in report.graph_results if r.attack == AttackName.GRAPH_KEYLESS
    ]
    seeded = [r for r in report.graph_results if r.attack == AttackName.GRAPH_SEEDED]
    best_seeded = max(seeded, key=lambda r: r.reidentified_share, default=None)
    cost = (
        round(baseline - run.f1_auto_hard, 4)
        if baseline is not None and run.f1_auto_hard is not None
        else None
    )
    before = [
        result.best
        for result in report.attribute_results
        if result.best is not None and not result.view.endswith(UNDONE)
    ]
    worst_before = max(before, key=lambda score: score.min_pr, default=None)
    return {
        "schema": run.label,
        "hardening": _hardening(run.schema),
        "worst_attribute_min_pr": round(report.worst_attribute_min_pr, 4),
        "worst_attribute": (
            f"{worst[0]} [{worst[1]}] {worst[2].attribute}={worst[2].value}" if worst else None
        ),
        "worst_attribute_min_pr_without_linear": (
            round(worst_before.min_pr, 4) if worst_before is not None else 0.0
        ),
        "linear": list(run.linear),
        "graph_reidentified_share": round(report.graph_reidentified_share, 4),
        "graph_keyless_share": round(max(keyless, default=0.0), 4),
        "graph_seeded_share": round(best_seeded.reidentified_share, 4) if best_seeded else None,
        "graph_seeded_precision": round(best_seeded.precision, 4) if best_seeded else None,
        "f1_auto_hard": round(run.f1_auto_hard, 4) if run.f1_auto_hard is not None else None,
        "f1_cost_hard": cost,
        "seconds": round(run.seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--schema", type=Path, action="append", default=[],
        help="a schema to attack (repeatable; default: the single-CLK schema, then the shipped default)",
    )  # fmt: skip
    parser.add_argument("--records", type=int, default=3000, help="encoded records (moj)")
    parser.add_argument("--population", type=int, default=10_000, help="reference population")
    parser.add_argument("--difficulty", default="medium", choices=("none", "low", "medium", "hard"))
    parser.add_argument("--seed", type=int, default=5, help="synth seed (not the tuning seed 1)")
    parser.add_argument("--known-pairs", type=int, default=50, help="the insider's known pairs")
    parser.add_argument("--min-support", type=int, default=15, help="records a scored value needs")
    parser.add_argument("--quality-records", type=int, default=10_000, help="records per party")
    parser.add_argument("--no-quality", action="store_true", help="skip the F1 cost")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    single = Path(__file__).resolve().parents[1] / "protocol" / "data" / "single_clk_schema.toml"
    paths: list[Path | None] = list(args.schema) or [single, None]
    quality_cache: dict[str, float | None] = {}
    baseline: float | None = None
    if not args.no_quality:
        before = single_clk_schema()
        baseline = _f1_hard(before, args.quality_records)
        quality_cache[before.canonical_json().decode()] = baseline
    runs = []
    for path in paths:
        run = run_schema(path, args, quality_cache)
        runs.append(run)
        print(f"== {run.label}: {run.seconds:.0f}s", flush=True)
        for line in run.report.lines():
            print(line)
        for item in run.linear:
            print(f"    linear truth: {item}")
    print_table(runs)
    figures = [_figures(run, baseline) for run in runs]
    summary: dict[str, Any] = {
        "bench": "attacks",
        "records": args.records,
        **this_machine().fields(),
    }
    summary.update({key: value for key, value in figures[-1].items() if key != "seconds"})
    summary["f1_auto_hard_single_clk"] = round(baseline, 4) if baseline is not None else None
    summary["schemas"] = figures
    summary["peer"] = None
    summary["ratio"] = None
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

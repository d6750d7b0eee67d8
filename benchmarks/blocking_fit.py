"""Blocking shape fitted to the data: recall against exhaustive comparison and comparisons made,
the fitted shape (``BlockingSettings(fit_to_data=True)``: bands and bits per band from the
CLKs' bit density and the threshold, ``linkage_unit.blocking.choose_lsh_shape``) beside the
fixed shape that was the default before (128 bands of 14 bits; "default" below).

Data: ``synth`` moj + dfe, N records each (default 20,000), half overlapping, difficulty
medium, encoded by the real encoder under the default schema (one record-level CLK, what
blocking reads). At each threshold: every pair exhaustively (the compiled kernel), then both
blocked runs with the same seed.

    .venv/bin/python benchmarks/blocking_fit.py [--records 20000] [--thresholds 0.7 0.8 0.9]

Prints a table, then ONE JSON line. No peer: "peer" is null and "ratio" is the fitted shape's
comparisons over the default shape's at the lowest threshold (below 1: fewer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import this_machine  # noqa: E402
from quality import encode, synth_parties  # noqa: E402

from linkage_unit.blocking import (  # noqa: E402
    BlockingIndex,
    BlockingSettings,
    fit_blocking_settings,
    pair_completeness,
)
from linkage_unit.similarity import candidate_pairs  # noqa: E402
from protocol.schema import default_schema  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    parties = synth_parties(
        default_schema(),
        departments=("moj", "dfe"),
        records=args.records,
        difficulty="medium",
        seed=args.seed,
    )
    clks, _ = encode(parties, default_schema())
    left, right = clks["moj"], clks["dfe"]
    density = float(np.unpackbits(left.view(np.uint8)).mean())
    print(
        f"{len(left):,} x {len(right):,} CLKs of {64 * left.shape[1]} bits, density {density:.3f}"
    )
    print(
        f"{'threshold':>9} {'shape':>8} {'bands':>6} {'bits':>5} {'comparisons':>13} "
        f"{'recall':>8} {'seconds':>8} {'exh pairs':>10} {'exh s':>7}"
    )
    rows = []
    for threshold in sorted(args.thresholds):
        start = time.perf_counter()
        exhaustive = candidate_pairs(left, right, threshold)
        exhaustive_seconds = time.perf_counter() - start
        fitted = fit_blocking_settings(left, right, threshold, BlockingSettings(fit_to_data=True))
        for name, settings in (
            ("default", BlockingSettings(fit_to_data=False)),
            ("fitted", fitted),
        ):
            start = time.perf_counter()
            index = BlockingIndex(left, right, settings=settings, seed=args.seed)
            blocked = index.candidate_pairs(threshold)
            seconds = time.perf_counter() - start
            recall = pair_completeness(blocked, exhaustive)
            row = {
                "threshold": threshold,
                "shape": name,
                "bands": settings.bands,
                "bits_per_band": settings.bits_per_band,
                "comparisons": index.plan.block_comparisons,
                "recall": recall,
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"{threshold:9.2f} {name:>8} {settings.bands:6d} {settings.bits_per_band:5d} "
                f"{index.plan.block_comparisons:13,d} {recall:8.5f} {seconds:8.2f} "
                f"{len(exhaustive):10,d} {exhaustive_seconds:7.2f}"
            )
    lowest = min(args.thresholds)
    by = {(row["threshold"], row["shape"]): row for row in rows}
    fitted_low, default_low = by[(lowest, "fitted")], by[(lowest, "default")]
    print(
        json.dumps(
            {
                "bench": "blocking_fit",
                "records": args.records,
                "density": round(density, 4),
                "fitted_min_recall": round(
                    min(r["recall"] for r in rows if r["shape"] == "fitted"), 5
                ),
                "default_min_recall": round(
                    min(r["recall"] for r in rows if r["shape"] == "default"), 5
                ),
                "fitted_comparisons": fitted_low["comparisons"],
                "default_comparisons": default_low["comparisons"],
                **this_machine().fields(),
                "peer": None,
                "ratio": round(fitted_low["comparisons"] / max(1, default_low["comparisons"]), 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Blocking survey for a capacity plan: how many block comparisons an LSH shape makes at a
target size (default 60M records a party), and how many of them fall in blocks over the
``max_block_comparisons`` cap (skipped), estimated from a sample of two real CLK files.

    /work/devenv/bin/python benchmarks/end_to_end.py --records 1000000 --dir /tmp/e2e-1m
    /work/devenv/bin/python benchmarks/blocking_survey.py /tmp/e2e-1m/moj/moj.clk \
        /tmp/e2e-1m/dfe/dfe.clk [--sample 200000] [--target 60000000]

Each party is sampled uniformly; a block of c_left x c_right sampled records stands for one of
(c_left x s) x (c_right x s) records at the target, s = target / sample, so skewed keys stay
skewed. The engine's own plan (BlockingIndex, nothing compared) counts the sample's blocks,
with the cap scaled down by s^2. The miss probability at Dice 0.8 treats bits as independent
with the files' density. Prints a table, then ONE JSON line; no peer runs this ("peer" null,
"ratio" = comparisons of the recommended shape / of the default shape).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import this_machine  # noqa: E402

from linkage_unit.blocking import BlockingIndex, BlockingSettings  # noqa: E402
from protocol.clk_file import read_clks  # noqa: E402

SHAPES = [(128, 14), (128, 20), (256, 20), (256, 22), (384, 24)]
RECOMMENDED = (256, 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("left", type=Path)
    parser.add_argument("right", type=Path)
    parser.add_argument("--sample", type=int, default=200_000)
    parser.add_argument("--target", type=int, default=60_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generator = np.random.default_rng(args.seed)
    _, left_all = read_clks(args.left)
    _, right_all = read_clks(args.right)
    take = min(args.sample, len(left_all), len(right_all))
    left = np.ascontiguousarray(left_all[np.sort(generator.choice(len(left_all), take, False))])
    right = np.ascontiguousarray(right_all[np.sort(generator.choice(len(right_all), take, False))])
    density = float(np.unpackbits(left[:20_000].view(np.uint8)).mean())
    # Bits of a pair at Dice 0.8 with this density: shared 0.8 x density, each has 0.2 x
    # density alone, so they agree on 1 - 0.4 x density of positions.
    agreement = 1 - 0.4 * density
    scale = args.target / take
    cap = BlockingSettings().max_block_comparisons
    rows = []
    for bands, bits in SHAPES:
        settings = BlockingSettings(
            fit_to_data=False,
            bands=bands,
            bits_per_band=bits,
            max_block_comparisons=max(1, int(cap / scale**2)),
        )
        plan = BlockingIndex(left, right, settings=settings, seed=args.seed, workers=2).plan
        kept = plan.block_comparisons * scale**2
        skipped = plan.oversized_comparisons * scale**2
        rows.append(
            {
                "bands": bands,
                "bits_per_band": bits,
                "comparisons": kept + skipped,
                "compared": kept,
                "over_cap_fraction": skipped / max(kept + skipped, 1),
                "miss_at_dice_0_8": (1 - agreement**bits) ** bands,
            }
        )
    print(
        f"\nblocking survey: {take:,} sampled a side from {args.left.name}, {args.right.name} "
        f"(density {density:.2f}), scaled to {args.target:,} x {args.target:,}"
    )
    print(f"  {'shape':<10} {'comparisons':>12} {'over cap':>9} {'compared':>12} {'miss @0.8':>10}")
    for row in rows:
        print(
            f"  {row['bands']:>4} x {row['bits_per_band']:<3} {row['comparisons']:12.2e} "
            f"{row['over_cap_fraction']:9.1%} {row['compared']:12.2e} "
            f"{row['miss_at_dice_0_8']:10.1e}"
        )
    default = next(row for row in rows if (row["bands"], row["bits_per_band"]) == (128, 14))
    chosen = next(row for row in rows if (row["bands"], row["bits_per_band"]) == RECOMMENDED)
    print(
        json.dumps(
            {
                "bench": "blocking_survey",
                **this_machine().fields(),
                "target_records_per_party": args.target,
                "sample_per_party": take,
                "density": round(density, 3),
                "shapes": [
                    {
                        key: (round(value, 5) if isinstance(value, float) and value < 1 else value)
                        for key, value in row.items()
                    }
                    for row in rows
                ],
                "recommended": list(RECOMMENDED),
                "peer": None,
                "ratio": round(chosen["comparisons"] / default["comparisons"], 4),
                "ratio_meaning": "comparisons of the recommended shape / of the default shape",
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Matching engine benchmark: Dice pairs/s (ours vs anonlink, side by side) and LSH blocking
pair completeness / reduction ratio on planted noisy matches.

    /work/devenv/bin/python benchmarks/match.py [--sizes 10000 20000] [--reps 3]

Prints a table, then ONE JSON line of key figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import run_in_peers  # noqa: E402

from linkage_unit.blocking import BlockingIndex, pair_completeness  # noqa: E402
from linkage_unit.similarity import candidate_pairs  # noqa: E402

THRESHOLD = 0.8
ANONLINK_SNIPPET = r"""
import json, sys, time
import numpy as np
from bitarray import bitarray
from anonlink.similarities import dice_coefficient_accelerated
n, m, words, reps = (int(x) for x in sys.argv[1:5]) if len(sys.argv) > 4 else (0, 0, 0, 0)
data = sys.stdin.buffer.read()
header = np.frombuffer(data[:32], np.int64)
n, m, words, reps = (int(x) for x in header)
raw = np.frombuffer(data[32:], np.uint8)
def to_bitarrays(block):
    out = []
    for row in block:
        b = bitarray(endian='little'); b.frombytes(row.tobytes()); out.append(b)
    return out
left = to_bitarrays(raw[: n * words * 8].reshape(n, words * 8))
right = to_bitarrays(raw[n * words * 8 :].reshape(m, words * 8))
times = []
for _ in range(reps):
    start = time.perf_counter()
    result = dice_coefficient_accelerated((left, right), 0.8)
    times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "found": len(result[0])}))
"""


def random_clks(generator: np.random.Generator, records: int, density: float) -> np.ndarray:
    bits = generator.random((records, 1024)) < density
    return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(records, 16)


def planted(generator: np.random.Generator, size: int, density: float) -> tuple[np.ndarray, ...]:
    left = random_clks(generator, size, density)
    right = random_clks(generator, size, density)
    half = size // 2
    # Noise so matches spread over Dice ~0.75-1.0: flip a per-record fraction of bits.
    flips = generator.uniform(0.0, 0.12, half)
    mask = generator.random((half, 1024)) < flips[:, None] * (density * 1.0)
    noise = np.packbits(mask, axis=1, bitorder="little").view(np.uint64).reshape(half, 16)
    right[:half] = left[:half] ^ noise
    return left, right


def time_ours(left: np.ndarray, right: np.ndarray, workers: int, reps: int) -> tuple[float, int]:
    candidate_pairs(left[:64], right[:64], THRESHOLD, workers=workers)  # warm (JIT cache)
    times, found = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        found = len(candidate_pairs(left, right, THRESHOLD, workers=workers))
        times.append(time.perf_counter() - start)
    return statistics.median(times), found


def time_anonlink(left: np.ndarray, right: np.ndarray, reps: int) -> tuple[float, int]:
    header = np.array([len(left), len(right), left.shape[1], reps], np.int64).tobytes()
    payload = header + left.tobytes() + right.tobytes()
    result = run_in_peers(ANONLINK_SNIPPET, stdin_bytes=payload)
    return statistics.median(result["times"]), int(result["found"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--blocking-size", type=int, default=20_000)
    args = parser.parse_args()
    generator = np.random.default_rng(2024)
    rows = []
    print(
        f"{'size':>14} {'ours 1T M/s':>12} {'ours 2T M/s':>12} {'anonlink 1T':>12} {'ratio 1T':>9}"
    )
    for size in args.sizes:
        left, right = planted(generator, size, 0.45)
        pairs = size * size
        one, found_one = time_ours(left, right, 1, args.reps)
        two, found_two = time_ours(left, right, 2, args.reps)
        peer, found_peer = time_anonlink(left, right, args.reps)
        row = {
            "size": size, "ours_1t": pairs / one, "ours_2t": pairs / two,
            "peer_1t": pairs / peer, "found": [found_one, found_two, found_peer],
        }  # fmt: skip
        rows.append(row)
        print(
            f"{size:>6}x{size:<7} {row['ours_1t'] / 1e6:12.0f} {row['ours_2t'] / 1e6:12.0f} "
            f"{row['peer_1t'] / 1e6:12.0f} {row['ours_1t'] / row['peer_1t']:9.2f}"
            f"   found ours/ours/anonlink {found_one}/{found_two}/{found_peer}"
        )
    print()
    print(
        f"{'density':>8} {'exhaustive pairs':>17} {'PC':>8} {'RR':>8} {'block s':>8} {'exh s':>7}"
    )
    blocking_rows = []
    for density in (0.3, 0.45, 0.5):
        left, right = planted(generator, args.blocking_size, density)
        start = time.perf_counter()
        exhaustive = candidate_pairs(left, right, THRESHOLD)
        exhaustive_seconds = time.perf_counter() - start
        start = time.perf_counter()
        index = BlockingIndex(left, right, seed=1)
        blocked = index.candidate_pairs(THRESHOLD)
        blocked_seconds = time.perf_counter() - start
        completeness = pair_completeness(blocked, exhaustive)
        blocking_rows.append(
            {"density": density, "pc": completeness, "rr": index.plan.reduction_ratio}
        )
        print(
            f"{density:8.2f} {len(exhaustive):17d} {completeness:8.4f} "
            f"{index.plan.reduction_ratio:8.4f} {blocked_seconds:8.2f} {exhaustive_seconds:7.2f}"
        )
    last = rows[-1]
    print(json.dumps({
        "bench": "match",
        "size": last["size"],
        "bloomlink_pairs_s_1t": round(last["ours_1t"]),
        "bloomlink_pairs_s_2t": round(last["ours_2t"]),
        "peer": "anonlink",
        "peer_pairs_s_1t": round(last["peer_1t"]),
        "ratio": round(last["ours_1t"] / last["peer_1t"], 2),
        "blocking_pc_min": round(min(r["pc"] for r in blocking_rows), 4),
        "blocking_rr_min": round(min(r["rr"] for r in blocking_rows), 4),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scaling benchmark: the same synthetic linkage matched in-process, on a Dask LocalCluster of
1 worker and of 2 workers (one thread each), with time and peak memory per worker, plus the
per-core figures docs/scale.md builds its capacity plan from.

    /work/devenv/bin/python benchmarks/scale.py [--records 200000]

Peak memory is each process's resident high-water mark (Linux VmHWM), reset after warm-up, so
it is what the linkage itself needed (ru_maxrss would report the parent's peak in every forked
worker). The "band overhead probe" times the per-band work that does not depend on block size
(keys, grouping, plan). The "block probes" time the blocked compare on one thread with blocks of
the nominal size an LSH shape makes at 60M records a party (records / 2^bits a side: ~3,700 for
the default 128 x 14, ~57 for 256 x 20), net of that overhead: the per-core rates the capacity
plan in docs/scale.md uses. At the benchmark's own size blocks are tiny and overheads dominate.

The data: two parties of random 1024-bit CLKs (density 0.4); half of the second party are
noisy copies of the first party's records (Dice ~0.8-1.0). Blocking is the engine's default
LSH. Prints a table, then ONE JSON line. No peer system runs this comparison, so "peer" is
null and "ratio" is in-process time / 2-worker time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import this_machine  # noqa: E402

from linkage_unit.blocking import BlockingIndex, BlockingSettings  # noqa: E402
from linkage_unit.distributed import ClusterSettings, DaskExecutor  # noqa: E402
from linkage_unit.matching import LinkResult, MatchSettings, link  # noqa: E402

THRESHOLD = 0.8


def parties(records: int, seed: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)

    def clks(count: int) -> np.ndarray:
        out = np.empty((count, 16), np.uint64)
        for start in range(0, count, 50_000):
            stop = min(count, start + 50_000)
            bits = generator.random((stop - start, 1024)) < 0.4
            out[start:stop] = np.packbits(bits, axis=1, bitorder="little").view(np.uint64)
        return out

    left, right = clks(records), clks(records)
    half = records // 2
    for start in range(0, half, 50_000):
        stop = min(half, start + 50_000)
        rate = generator.uniform(0.0, 0.05, (stop - start, 1))
        flips = generator.random((stop - start, 1024)) < rate
        noise = np.packbits(flips, axis=1, bitorder="little").view(np.uint64)
        right[start:stop] = left[start:stop] ^ noise
    return {"moj": left, "dfe": right[generator.permutation(records)]}


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    """This process's resident high-water mark since the last reset, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DEFAULT_BLOCKING = BlockingSettings(fit_to_data=False)  # 128 x 14
RECORDS_60M = 60_000_000


def block_probe(
    clks: dict[str, np.ndarray], side_at_60m: float, band_seconds: float
) -> tuple[float, int, float]:
    """One thread, blocks of the nominal size (records / 2^bits a side) an LSH shape gives at
    60M a party, enough bands for ~2e9 comparisons. Returns (block comparisons per second net
    of the band overhead measured by :func:`band_overhead_probe`, block comparisons, records a
    side per block). Where the band overhead is more than half the time, the rate includes it
    (a floor), since the difference of two noisy timings would mean little."""
    records = len(clks["moj"])
    bits = max(1, round(math.log2(records / side_at_60m)))
    per_band = records * records * 0.52**bits  # density 0.4: 52 % of bits agree
    bands = int(min(64, max(2, round(2e9 / per_band))))
    settings = BlockingSettings(
        fit_to_data=False, bands=bands, bits_per_band=bits, max_block_comparisons=10**12
    )
    started = time.perf_counter()  # the plan (built once per task) and the compare
    index = BlockingIndex(clks["moj"], clks["dfe"], settings=settings, seed=5, workers=1)
    index.candidate_pairs(THRESHOLD, max_pairs=10**8)
    seconds = time.perf_counter() - started
    net = seconds - band_seconds * bands * 2 * records
    comparisons = index.plan.block_comparisons
    # Net of overhead only when the compare is most of the time; else the gross rate (a floor).
    rate = comparisons / net if net > seconds / 2 else comparisons / seconds
    return rate, comparisons, records / 2**bits


def run_cluster(
    clks: dict[str, np.ndarray], settings: MatchSettings, workers: int
) -> tuple[float, LinkResult, list[float], list[str]]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # None still binds :8787
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        executor = DaskExecutor(
            ClusterSettings(scheduler_address=cluster.scheduler_address), client=client
        )
        # Warm the workers (imports, numba's compiled cache) outside the timing.
        link({name: array[:2000] for name, array in clks.items()}, settings, executor=executor)
        client.run(_reset_peak)
        stages: list[str] = []
        started = time.perf_counter()
        result = link(
            clks,
            settings,
            executor=executor,
            progress=lambda stage, done, total: stages.append(f"{stage} {done}/{total}"),
        )
        seconds = time.perf_counter() - started
        peaks = client.run(_peak_mib)
        mib = [peaks[key] for key in sorted(peaks)]
    return seconds, result, mib, stages


def band_overhead_probe(clks: dict[str, np.ndarray]) -> float:
    """One thread, eight bands of 20 bits (at this size almost every block a single pair; the
    dense-key grouping every shape up to 20 bits uses): the cost of computing, grouping and
    planning band keys, in seconds per record per band."""
    settings = BlockingSettings(fit_to_data=False, bands=8, bits_per_band=20)
    started = time.perf_counter()  # the plan (built once per task) and the compare
    index = BlockingIndex(clks["moj"], clks["dfe"], settings=settings, seed=5, workers=1)
    index.candidate_pairs(THRESHOLD, max_pairs=10**8)
    seconds = time.perf_counter() - started
    return seconds / (settings.bands * (len(clks["moj"]) + len(clks["dfe"])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    clks = parties(args.records, args.seed)
    # The fixed 128 x 14 its figures in docs/scale.md were measured with, not the fitted shape.
    settings = MatchSettings(
        threshold=THRESHOLD,
        blocking="lsh",
        blocking_seed=11,
        blocking_settings=DEFAULT_BLOCKING,
    )
    clk_mib = sum(array.nbytes for array in clks.values()) / 2**20

    link({name: array[:2000] for name, array in clks.items()}, settings)  # warm
    load_before = os.getloadavg()[0]
    _reset_peak()
    started = time.perf_counter()
    local = link(clks, settings)
    local_seconds = time.perf_counter() - started
    local_mib = _peak_mib()
    one_seconds, one, one_mib, _ = run_cluster(clks, settings, 1)
    two_seconds, two, two_mib, stages = run_cluster(clks, settings, 2)
    for result in (one, two):
        for party in clks:
            if not np.array_equal(result.clusters[party], local.clusters[party]):
                raise SystemExit("the Dask link structure differs from the in-process one")
    band_seconds = band_overhead_probe(clks)
    probes = {
        # Nominal block side at 60M a party: the default 128 x 14 shape, and the 256 x 20 shape
        # docs/scale.md recommends there.
        "default_shape": block_probe(clks, RECORDS_60M / 2**14, band_seconds),
        "shape_256x20": block_probe(clks, RECORDS_60M / 2**20, band_seconds),
    }
    load_after = os.getloadavg()[0]

    planned = local.statistics.compare.blocked_comparisons_planned
    per_core = planned / one_seconds
    print(f"\nscale: {args.records:,} x {args.records:,} CLKs, LSH blocking, threshold {THRESHOLD}")
    print(f"  inputs {clk_mib:.0f} MiB of CLKs; {planned:,.0f} block comparisons planned")
    print(f"  {'executor':<34} {'time s':>8} {'peak MiB per process':>22}")
    print(f"  {'in-process (2 threads)':<34} {local_seconds:8.1f} {local_mib:22.0f}")
    print(
        f"  {'Dask, 1 worker x 1 thread':<34} {one_seconds:8.1f} {', '.join(f'{m:.0f}' for m in one_mib):>22}"
    )
    print(
        f"  {'Dask, 2 workers x 1 thread':<34} {two_seconds:8.1f} {', '.join(f'{m:.0f}' for m in two_mib):>22}"
    )
    print(f"  identical link structure on all three: yes ({local.linked_record_count:,} linked)")
    print(f"  per core (1 worker): {per_core / 1e6:.0f} M block comparisons/s end to end")
    for name, (rate, compared, side) in probes.items():
        print(
            f"  block probe {name} (1 thread, ~{side:,.0f} records a side as at 60M): "
            f"{rate / 1e6:.0f} M block comparisons/s ({compared:,} compared)"
        )
    print(
        f"  band overhead probe (1 thread): {band_seconds * 1e9:.0f} ns per record per band "
        "(keys, grouping, plan)"
    )
    print(f"  candidate pairs: {local.candidate_pair_count:,}; last progress: {stages[-1]}")
    print(f"  machine: {os.cpu_count()} cores, load average {load_before:.1f} -> {load_after:.1f}")
    print(
        json.dumps(
            {
                "bench": "scale",
                **this_machine().fields(),
                "records_per_party": args.records,
                "in_process_s": round(local_seconds, 2),
                "dask_1_worker_s": round(one_seconds, 2),
                "dask_2_workers_s": round(two_seconds, 2),
                "in_process_peak_mib": round(local_mib),
                "dask_1_worker_peak_mib": [round(m) for m in one_mib],
                "dask_2_workers_peak_mib": [round(m) for m in two_mib],
                "block_comparisons": int(planned),
                "block_comparisons_per_core_s": round(per_core),
                "block_comparisons_per_core_s_default_shape": round(probes["default_shape"][0]),
                "block_comparisons_per_core_s_256x20": round(probes["shape_256x20"][0]),
                "band_ns_per_record": round(band_seconds * 1e9),
                "candidate_pairs": local.candidate_pair_count,
                "load_average": [round(load_before, 1), round(load_after, 1)],
                "peer": None,
                "ratio": round(local_seconds / two_seconds, 3),
                "ratio_meaning": "in-process time / 2-worker Dask time (no peer runs this)",
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

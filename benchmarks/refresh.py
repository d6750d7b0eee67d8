"""Refresh into a spine vs relinking everything from scratch (issue 14).

A spine of N people (one record each, its keys issued as a first run would: built directly,
so the setup does not dominate), then a refresh of M records: half returning people
re-extracted with new errors (about 4 % of bits flipped), half new people.
Times and peak traced memory of (a) the run into the spine and (b) relinking the spine's
records and the refresh from scratch, and the share of returning people keeping their key
(from scratch, nobody keeps a key: every key is new). Synthetic random CLKs, not encoded
records: this measures the engine, not the encoder. Prints a table, then ONE JSON line.

    nice .venv/bin/python benchmarks/refresh.py --spine 100000 --refresh 10000
    nice .venv/bin/python benchmarks/refresh.py --spine 1000000 --refresh 100000

Peak memory: ``tracemalloc``'s traced peak (numpy allocations) of each measured call, and
the process's peak RSS (``ru_maxrss``) after each. RSS is the whole process's high-water
mark, the generated CLKs and the spine included, and never falls: the second figure is only
a bound for the second run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from linkage_unit.link_keys import fresh_keys, issue_link_keys
from linkage_unit.matching import MatchSettings, link
from linkage_unit.spine import SpineSettings, SpineState, SpineUpload, link_into_spine
from protocol.messages import LinkKeyMode

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spine", type=int, default=100_000, help="people in the spine")
    parser.add_argument("--refresh", type=int, default=10_000, help="records in the refresh")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
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

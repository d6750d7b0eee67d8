"""Refresh into a spine vs relinking everything from scratch (issue 14).

A spine of N people (one record each, built by a first run), then a refresh of M records:
half returning people re-extracted with new errors (2 % of bits flipped), half new people.
Times and peak traced memory of (a) the run into the spine and (b) relinking the spine's
records and the refresh from scratch, and the share of returning people keeping their key
(from scratch, nobody keeps a key: every key is new). Synthetic random CLKs, not encoded
records: this measures the engine, not the encoder. Prints a table, then ONE JSON line.

    nice .venv/bin/python benchmarks/refresh.py --spine 100000 --refresh 10000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from linkage_unit.link_keys import issue_link_keys
from linkage_unit.matching import MatchSettings, link
from linkage_unit.spine import SpineSettings, SpineState, SpineUpload, link_into_spine
from protocol.messages import LinkKeyMode

T = TypeVar("T")
SCHEMA = "ab" * 32
KCV = "00" * 16


def _clks(generator: np.random.Generator, count: int, words: int = 16) -> npt.NDArray[np.uint64]:
    bits = generator.random((count, words * 64)) < 0.45
    return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(count, words)


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
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spine", type=int, default=100_000, help="people in the spine")
    parser.add_argument("--refresh", type=int, default=10_000, help="records in the refresh")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    generator = np.random.default_rng(args.seed)
    people = _clks(generator, args.spine + args.refresh // 2)
    settings = MatchSettings(threshold=0.8, blocking_seed=args.seed)
    first = link_into_spine(
        SpineState(
            settings=SpineSettings(
                name="bench",
                parties=("moj", "dfe"),
                schema_fingerprint=SCHEMA,
                link_key_mode=LinkKeyMode.SHARED,
            )
        ),
        [SpineUpload(party="moj", schema_fingerprint=SCHEMA, kcv=KCV, clks=people[: args.spine])],
        MatchSettings(threshold=0.8, blocking_seed=args.seed, deduplicated=frozenset({"moj"})),
        run_id="build",
    )
    first_keys = dict(zip(first.keys["moj"].positions, first.keys["moj"].link_keys, strict=True))
    returning = args.refresh - args.refresh // 2
    refresh = np.concatenate(
        [_noisy(generator, people[:returning]), people[args.spine : args.spine + args.refresh // 2]]
    )
    upload = SpineUpload(party="dfe", schema_fingerprint=SCHEMA, kcv=KCV, clks=refresh)
    into, spine_s, spine_peak = _measured(
        lambda: link_into_spine(first.state, [upload], settings, run_id="refresh")
    )
    keys = dict(zip(into.keys["dfe"].positions, into.keys["dfe"].link_keys, strict=True))
    kept = sum(keys[row] == first_keys[row] for row in range(returning)) / returning
    owners = len({keys[row] for row in range(args.refresh)})

    def scratch() -> int:
        result = link({"moj": people[: args.spine], "dfe": refresh}, settings)
        return len(issue_link_keys(result.clusters, LinkKeyMode.SHARED)["dfe"].link_keys)

    _, scratch_s, scratch_peak = _measured(scratch)
    cpu = _cpu()
    print(f"CPU: {cpu}")
    print(f"{'run':<28}{'seconds':>10}{'peak MiB':>10}{'keys kept':>11}")
    print(f"{'into spine':<28}{spine_s:>10.2f}{spine_peak / 2**20:>10.1f}{kept:>11.4f}")
    print(f"{'relink from scratch':<28}{scratch_s:>10.2f}{scratch_peak / 2**20:>10.1f}{0.0:>11.4f}")
    print(
        json.dumps(
            {
                "bench": "refresh",
                "spine_people": args.spine,
                "refresh_records": args.refresh,
                "spine_s": round(spine_s, 3),
                "spine_peak_mib": round(spine_peak / 2**20, 1),
                "scratch_s": round(scratch_s, 3),
                "scratch_peak_mib": round(scratch_peak / 2**20, 1),
                "kept_share": round(kept, 5),
                "distinct_refresh_keys": owners,
                "peer": "relink-from-scratch",
                "ratio": round(scratch_s / spine_s, 3),
                "cpu": cpu,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Benchmark: how fast ``bloomlink synth`` generates and writes department extracts.

    python benchmarks/synth.py [--records 1000000] [--difficulty hard]

Prints a table and ends with one JSON line. There is no peer generator in this environment
to run side by side (FEBRL/GeCo are Python 2 era tools), so ``peer`` is null and ``ratio``
is against the brief's target of one minute for 1,000,000 records per department.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from machine import this_machine

from bloomlink.synth import SynthConfig, generate, write

TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--difficulty", default="hard")
    parser.add_argument("--departments", default="moj,dfe")
    args = parser.parse_args()
    config = SynthConfig(
        departments=tuple(args.departments.split(",")),
        records=args.records,
        difficulty=args.difficulty,
        repeat_rate=0.02,
        seed=1,
    )
    started = time.perf_counter()
    result = generate(config)
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        write(result, directory)
        written = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    generate_s, write_s = generated - started, written - generated
    total = generate_s + write_s
    records = args.records * len(config.departments)
    print(f"{'step':<10} {'seconds':>8} {'records/s':>12}")
    print(f"{'generate':<10} {generate_s:>8.1f} {records / generate_s:>12,.0f}")
    print(f"{'write csv':<10} {write_s:>8.1f} {records / write_s:>12,.0f}")
    print(f"{'total':<10} {total:>8.1f} {records / total:>12,.0f}   peak RSS {peak_mb:,.0f} MB")
    figures = {
        "bench": "synth",
        **this_machine().fields(),
        "records_per_department": args.records,
        "departments": len(config.departments),
        "difficulty": args.difficulty,
        "generate_s": round(generate_s, 2),
        "write_s": round(write_s, 2),
        "peak_rss_mb": round(peak_mb),
        "peer": None,
        "target_s": TARGET_SECONDS,
        "ratio": round(total / TARGET_SECONDS, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

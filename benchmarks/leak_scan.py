"""Leak-scanner throughput: the prefix-indexed search against bytes.find per pattern.

Writes a random encoded file (records x 128 bytes) and scans it for N synthetic sensitive
strings. The naive twin is timed on a sample of patterns and scaled to all of them (running
it on every pattern would take hours at realistic sizes, which is the point).

    python benchmarks/leak_scan.py [--records 250000] [--strings 20000] [--naive-sample 100]
"""

from __future__ import annotations

import argparse
import json
import mmap
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np

from party.leak_scan import find_occurrences_naive, scan_encoded_file, sensitive_patterns
from protocol.clk_file import ClkFileWriter


def synthetic_strings(count: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(4, 12, size=count)
    return ["".join(rng.choice(letters, size=int(length))).title() for length in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=250_000)
    parser.add_argument("--strings", type=int, default=20_000)
    parser.add_argument("--naive-sample", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(secrets.randbits(64))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.clk"
        with ClkFileWriter(
            path, project_id="bench", schema_fingerprint=bytes(32), kcv=bytes(16), clk_bits=1024
        ) as writer:
            for start in range(0, args.records, 50_000):
                count = min(50_000, args.records - start)
                writer.write(rng.integers(0, 256, size=(count, 128), dtype=np.uint8))
        strings = synthetic_strings(args.strings, rng)
        size = path.stat().st_size

        started = time.perf_counter()
        patterns, _ = sensitive_patterns(strings)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = scan_encoded_file(path, strings)
        fast_seconds = time.perf_counter() - started

        sample = patterns[: args.naive_sample]
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
        ):
            started = time.perf_counter()
            find_occurrences_naive(buffer, sample)  # type: ignore[arg-type]
            naive_sample_seconds = time.perf_counter() - started
        naive_seconds = naive_sample_seconds * len(patterns) / max(len(sample), 1)

    mb = size / 1e6
    print(f"{'file':<28}{mb:>10.1f} MB ({args.records} CLKs of 1024 bits)")
    print(f"{'sensitive strings':<28}{args.strings:>10}")
    print(f"{'byte patterns':<28}{len(patterns):>10} (built in {build_seconds:.2f} s)")
    print(f"{'indexed scan (whole run)':<28}{fast_seconds:>10.2f} s  {mb / fast_seconds:8.1f} MB/s")
    print(
        f"{'bytes.find x patterns':<28}{naive_seconds:>10.1f} s  "
        f"(timed on {len(sample)} patterns, scaled)"
    )
    print(f"{'findings on random data':<28}{len(report.findings):>10}")
    print(
        json.dumps(
            {
                "bench": "leak_scan",
                "file_mb": round(mb, 1),
                "strings": args.strings,
                "patterns": len(patterns),
                "bloomlink_s": round(fast_seconds, 3),
                "bloomlink_mb_s": round(mb / fast_seconds, 1),
                "peer": "bytes.find per pattern",
                "peer_s": round(naive_seconds, 1),
                "ratio": round(naive_seconds / fast_seconds, 1),
                "false_findings": len(report.findings),
            }
        )
    )


if __name__ == "__main__":
    main()
